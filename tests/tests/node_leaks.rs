//! End-to-end leak detection for Node workers: a plain http app leaking in a named
//! function trips the trend rule, the baseline/leak pair is stored, and both
//! `heapwarden diff` and `go tool pprof -top -base` name that JavaScript function first;
//! a Buffer leak (bytes outside the V8 heap) trips too.

mod node_support;

use std::process::Command;

use heapwarden_tests::*;
use node_support::*;
use serde_json::Value;

const RULES: &str = r#"
[sampling]
interval = "250ms"
[watchdog]
warmup = "3s"
max-memory = "1GiB"
growth = "off"
trend-window = "6s"
trend-min-rate = "512KiB/s"
action = "profile-only"
[log]
level = "info"
"#;

fn leaking(kind: &str, bytes_per_tick: u64) -> NodeSetup {
    start(
        r#"["node", "app.js"]"#,
        1,
        &format!("[pool.env]\nLEAK = \"{kind}\"\nLEAK_BYTES = \"{bytes_per_tick}\"\n{RULES}"),
    )
}

#[test]
fn a_leak_in_a_named_function_is_named_by_the_diff_and_by_pprof() {
    let _guard = TimeoutGuard::new("node named leak", SECS(180));
    let setup = leaking("named", 200_000);
    let detection = setup.agent.logs.wait_for(
        SECS(90),
        "the detection record",
        msg("A memory leak was detected."),
    );
    assert_eq!(detection["rule"], "trend", "{detection}");
    let sites = &detection["top_growing_sites"];
    assert_eq!(sites[0]["function"], "leakInNamedFunction", "{detection}");
    let leak_id = detection["profile_id"].as_u64().expect("a leak profile");
    let base_id = detection["baseline_profile_id"]
        .as_u64()
        .expect("a baseline");
    let profiles = setup.profiles();
    let kinds: Vec<(&Value, &Value)> = profiles.iter().map(|p| (&p["id"], &p["trigger"])).collect();
    assert!(
        profiles
            .iter()
            .any(|p| p["id"] == leak_id && p["trigger"] == "leak"),
        "{kinds:?}"
    );
    assert!(
        profiles
            .iter()
            .any(|p| p["id"] == base_id && p["trigger"] == "baseline"),
        "{kinds:?}"
    );

    let diff = setup.cli(&["diff", &leak_id.to_string()]).expect("diff");
    assert_eq!(diff["top"][0]["function"], "leakInNamedFunction", "{diff}");
    assert!(
        diff["top"][0]["delta_bytes"].as_i64().unwrap() > 1 << 20,
        "{diff}"
    );

    let dir = setup.sandbox.path();
    let (leak, base) = (dir.join("leak.pb.gz"), dir.join("base.pb.gz"));
    setup
        .cli(&["pull", &leak_id.to_string(), "-o", leak.to_str().unwrap()])
        .unwrap();
    setup
        .cli(&["pull", &base_id.to_string(), "-o", base.to_str().unwrap()])
        .unwrap();
    let out = Command::new("go")
        .args(["tool", "pprof", "-top", "-base"])
        .arg(&base)
        .arg(&leak)
        .output()
        .expect("go tool pprof (scripts/test installs golang-go)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The rows after the "flat flat% ..." header, largest growth first.
    let first = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        first.ends_with("leakInNamedFunction"),
        "first row {first:?} of:\n{text}"
    );
    let list = Command::new("go")
        .args(["tool", "pprof", "-traces"])
        .arg(&leak)
        .output()
        .unwrap();
    let traces = String::from_utf8_lossy(&list.stdout);
    assert!(traces.contains("leakInNamedFunction"), "{traces}");
}

#[test]
fn a_buffer_leak_outside_the_v8_heap_trips_too() {
    let _guard = TimeoutGuard::new("node buffer leak", SECS(180));
    let setup = leaking("buffer", 256 * 1024);
    let trip = setup
        .agent
        .logs
        .wait_for(SECS(90), "the trip", msg("A leak rule tripped."));
    assert_eq!(trip["figure"], "heap_used_plus_external", "{trip}");
    let row = &setup.workers()[0];
    let heap = row["heap_allocated_bytes"].as_u64().unwrap();
    let watched = trip["bytes"].as_u64().unwrap();
    assert!(
        watched > heap + (4 << 20),
        "the Buffers are in external: {watched} vs heap {heap}"
    );
}
