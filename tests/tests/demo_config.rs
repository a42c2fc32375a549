//! The agent and the demo as two binaries: `heapwarden check-config` and `run` report
//! bad `[demo]` keys by name through `heapwarden-demo check-config`; without
//! `heapwarden-demo` next to the agent both say so in one line; and workers get the
//! agent's config file, `HEAPWARDEN_DEMO_*` overrides and context (state directory).
#![forbid(unsafe_code)]

mod demo_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use demo_support::*;
use heapwarden_tests::{Proc, Sandbox, TimeoutGuard, free_port, heapwarden, heapwarden_demo, msg};

fn run_heapwarden(
    exe: &Path,
    args: &[&str],
    config: &Path,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let out = Command::new(exe)
        .args(args)
        .arg("-c")
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .expect("run heapwarden");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_demo_keys_are_reported_by_name_with_the_agents_own_errors() {
    let _timeout = TimeoutGuard::new("bad_demo_keys", Duration::from_secs(60));
    let sandbox = Sandbox::new();
    let path = sandbox.write(
        "bad.toml",
        "[pool]\nworkers = \"many\"\n[demo]\nl1-ttl = \"soon\"\nnonsense = 1\njobs-concurrency = 2\n",
    );
    for verb in ["check-config", "run"] {
        let (code, stdout, stderr) = run_heapwarden(
            &heapwarden(),
            &[verb],
            &path,
            &[("HEAPWARDEN_DEMO_SEED_ROWS", "many")],
        );
        assert_eq!(code, 64, "{verb}: {stderr}");
        assert!(stdout.is_empty(), "{verb} started nothing: {stdout}");
        for key in [
            "pool.workers",
            "demo.l1-ttl",
            "demo.nonsense",
            "demo.seed-rows",
        ] {
            assert!(
                stderr.contains(key),
                "{verb}: {key} not named in:\n{stderr}"
            );
        }
        assert!(
            stderr.contains("(set by HEAPWARDEN_DEMO_SEED_ROWS)"),
            "{stderr}"
        );
        assert!(
            stderr.lines().all(|l| l.starts_with("config error: ")),
            "one line per error:\n{stderr}"
        );
    }
    // With the agent's keys right, the demo's are still checked, pool.env included.
    let path = sandbox.write(
        "demo-only.toml",
        "[pool.env]\nHEAPWARDEN_DEMO_MAX_BODY = \"10B\"\n[demo]\nl2-ttl = \"0s\"\n",
    );
    let (code, _, stderr) = run_heapwarden(&heapwarden(), &["check-config"], &path, &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("demo.l2-ttl") && stderr.contains("demo.max-body"),
        "{stderr}"
    );
    let good = sandbox.write("good.toml", "[demo]\nl1-ttl = \"5s\"\n");
    let (code, stdout, stderr) = run_heapwarden(&heapwarden(), &["check-config"], &good, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("config ok"), "{stdout}");
    // The demo answers the same on its own.
    let out = Command::new(heapwarden_demo())
        .args(["check-config", "-c"])
        .arg(sandbox.path().join("bad.toml"))
        .output()
        .expect("run heapwarden-demo");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("demo.nonsense") && !stderr.contains("pool.workers"),
        "{stderr}"
    );
}

#[test]
fn without_heapwarden_demo_run_and_check_config_say_how_to_build_it() {
    let _timeout = TimeoutGuard::new("demo_missing", Duration::from_secs(60));
    let sandbox = Sandbox::new();
    // The agent alone in a directory: a hard link keeps it the same file (current_exe
    // resolves symbolic links), a copy where the sandbox is on another file system.
    let alone = sandbox.path().join("bin");
    std::fs::create_dir(&alone).expect("mkdir");
    let agent = alone.join("heapwarden");
    if std::fs::hard_link(heapwarden(), &agent).is_err() {
        std::fs::copy(heapwarden(), &agent).expect("copy heapwarden");
    }
    let config = sandbox.write(
        "c.toml",
        &format!(
            "state-dir = {:?}\n[admin]\nlisten = \"127.0.0.1:{}\"\n[pool]\nlisten = \"127.0.0.1:{}\"\n",
            sandbox.path().join("state").display().to_string(),
            free_port(),
            free_port()
        ),
    );
    for verb in ["check-config", "run"] {
        let (code, stdout, stderr) = run_heapwarden(&agent, &[verb], &config, &[]);
        assert_eq!(code, 64, "{verb}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(&alone.join("heapwarden-demo").display().to_string())
                && stderr.contains("cargo build --release -p heapwarden-demo"),
            "{verb}: {stderr}"
        );
    }
    assert!(
        !sandbox.path().join("state").exists(),
        "run started nothing (no state directory)"
    );
    // A pool with its own command does not need the demo.
    let custom = sandbox.write("custom.toml", "[pool]\ncommand = [\"sleep\", \"100\"]\n");
    let (code, _, stderr) = run_heapwarden(&agent, &["check-config"], &custom, &[]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn workers_read_the_agents_file_overrides_and_state_directory() {
    let _timeout = TimeoutGuard::new("worker_context", Duration::from_secs(90));
    let sandbox = Sandbox::new();
    let service = free_port();
    let state = sandbox.path().join("agent-state");
    let config = sandbox.write(
        "heapwarden.toml",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:{}\"\n[pool]\nworkers = 2\nlisten = \"127.0.0.1:{service}\"\n\
             [demo]\nseed-rows = 9\n",
            free_port()
        ),
    );
    // The flag sets the state directory; the demo finds its SQLite file there.
    let mut command = Command::new(heapwarden());
    command
        .arg("run")
        .arg("-c")
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .env("HEAPWARDEN_DEMO_SEED_ROWS", "3")
        .current_dir(sandbox.path());
    let agent = Proc::spawn(command);
    agent.logs.wait_for(
        START_TIMEOUT * 2,
        "every worker ready",
        msg("Every worker is ready."),
    );
    let base = format!("http://127.0.0.1:{service}");
    // The agent's environment wins over the file: 3 rows, not 9.
    assert_eq!(get(&format!("{base}/items/3")).status, 200);
    assert_eq!(get(&format!("{base}/items/4")).status, 404);
    assert!(
        state.join("demo.sqlite").exists(),
        "no SQLite file in the agent's state-dir"
    );
    // Both slots answered with their own slot number (the context's slot).
    let mut slots = std::collections::BTreeSet::new();
    poll(Duration::from_secs(20), "both slots to answer", || {
        let reply = get(&format!("{base}/healthz"));
        slots.insert(reply.header("x-worker").unwrap_or("?").to_string());
        (slots.len() == 2).then_some(())
    });
    assert_eq!(slots.into_iter().collect::<Vec<_>>(), ["0", "1"]);
    let served = agent.logs.wait_for(
        START_TIMEOUT,
        "a worker's serving record",
        msg("The demo worker is serving."),
    );
    assert_eq!(served["fields"]["inherited_socket"], true, "{served}");
}
