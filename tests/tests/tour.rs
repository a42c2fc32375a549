//! The README's 60-second tour runs as written: its `sh` blocks are read from the README,
//! the agent is started with the tour's own settings (only the addresses, the state
//! directory and the pool size are the sandbox's), and the commands that follow the leak
//! print a diff whose top entry is the demo's leaking function.

use std::process::Command;
use std::time::Duration;

use heapwarden_tests::markdown;
use heapwarden_tests::tools::repo_root;
use heapwarden_tests::*;

const LEAK_FN: &str = "leak_on_purpose_for_heap_profile";

/// The `sh` blocks of the README's tour section, continuation lines joined, comments cut.
fn tour_commands() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    markdown::code_blocks(markdown::section(&readme, "A 60-second tour"))
        .into_iter()
        .filter(|block| block.lang == "sh")
        .map(|block| block.lines)
        .collect()
}

#[test]
fn the_readme_tour_catches_the_leak_and_names_the_function() {
    let _guard = TimeoutGuard::new("readme_tour", Duration::from_secs(150));
    let blocks = tour_commands();
    assert_eq!(
        blocks.len(),
        2,
        "the tour has a start block and a look block"
    );
    let start = blocks[0].join(" ");
    let (assignments, command) = start
        .split_once("target/release/heapwarden ")
        .expect("the tour starts target/release/heapwarden");
    assert_eq!(command.trim(), "run", "{start}");

    let sandbox = Sandbox::new();
    let sandbox_env = [
        (
            "HEAPWARDEN_STATE_DIR",
            sandbox.path().join("state").display().to_string(),
        ),
        (
            "HEAPWARDEN_POOL_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
        (
            "HEAPWARDEN_ADMIN_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        ),
        ("HEAPWARDEN_POOL_WORKERS", "2".to_string()),
    ];
    let mut agent = Command::new(heapwarden());
    agent.arg("run").current_dir(sandbox.path());
    for assignment in assignments.split_whitespace() {
        let (name, value) = assignment.split_once('=').expect("VAR=value");
        agent.env(name, value);
    }
    agent.envs(sandbox_env.iter().map(|(k, v)| (k, v)));
    let agent = Proc::spawn(agent);

    let detection = agent.logs.wait_for(
        Duration::from_secs(90),
        "the tour's leak detection",
        msg("A memory leak was detected."),
    );
    let leak_id = detection["profile_id"].as_u64().expect("leak profile id");

    let mut diff = String::new();
    for line in &blocks[1] {
        let line = line.replace("<leak-id>", &leak_id.to_string());
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("target/release/heapwarden"), "{line}");
        let out = Command::new(heapwarden())
            .args(words)
            .envs(sandbox_env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run the CLI");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{line}: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        if line.contains(" diff ") {
            diff = stdout;
        }
    }
    // The table's first row, under its `GROWTH_MiB …` header.
    let first_site = diff
        .lines()
        .skip_while(|l| !l.contains("GROWTH_MiB"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        first_site.contains(LEAK_FN),
        "the diff's top entry:\n{diff}"
    );
}
