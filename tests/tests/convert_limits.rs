//! The conversion helper runs under an address-space and CPU limit, and a deep hostile
//! V8 profile converts within them (issue #16, defect 6). The helper's input is a FIFO,
//! so the test reads its limits while it waits for the profile, then feeds it a chain
//! 20,000 frames deep.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use heapwarden_tests::{Sandbox, TimeoutGuard, heapwarden, poll};

fn deep_chain(depth: u64) -> String {
    let mut nodes = vec![r#"[1,0,"(root)","",-1,-1,0]"#.to_string()];
    for id in 2..=depth + 1 {
        nodes.push(format!(
            r#"[{id},{},"f{id}","file:///a.js",{id},0,64]"#,
            id - 1
        ));
    }
    format!(
        r#"{{"format":"heapwarden-v8-sampling","version":1,"pid":7,"sampling_interval":32768,"nodes":[{}],"samples":[]}}"#,
        nodes.join(",")
    )
}

#[test]
fn the_helper_is_limited_and_converts_a_deep_hostile_profile_within_its_limits() {
    let _guard = TimeoutGuard::new("convert_limits", Duration::from_secs(120));
    let sandbox = Sandbox::new();
    let fifo = sandbox.path().join("profile.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = sandbox.path().join("out.pb.gz");
    let helper = Command::new(heapwarden())
        .args(["__convert-profile", "--format", "v8-sampling", "--raw"])
        .arg(&fifo)
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the helper");
    let limits_path = format!("/proc/{}/limits", helper.id());
    let limits = poll(Duration::from_secs(30), "the helper's limits", || {
        let text = std::fs::read_to_string(&limits_path).ok()?;
        text.lines()
            .any(|l| l.starts_with("Max address space") && l.contains("2147483648"))
            .then_some(text)
    });
    let cpu = limits
        .lines()
        .find(|l| l.starts_with("Max cpu time"))
        .unwrap()
        .to_string();
    assert!(cpu.contains("50"), "{cpu}");
    let profile = deep_chain(20_000);
    let started = Instant::now();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .and_then(|mut f| f.write_all(profile.as_bytes()))
        .expect("feed the helper");
    let output = helper.wait_with_output().unwrap();
    let took = started.elapsed();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    println!(
        "{} KB hostile profile (20000 frames deep): {took:?}, helper peak RSS {} KiB",
        profile.len() / 1024,
        summary["peak_rss_kib"]
    );
    assert!(summary["peak_rss_kib"].as_u64().unwrap() < 512 * 1024);
}
