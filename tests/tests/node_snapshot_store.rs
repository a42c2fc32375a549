//! A heap snapshot that cannot fit in `profiles.max-bytes` is refused before it is
//! taken and never wipes the store (issue #16, defect 3): the profiles kept before it
//! are all still there, files included.

mod node_support;

use heapwarden_tests::{TimeoutGuard, poll_until};
use node_support::{SECS, start};

#[test]
fn a_snapshot_larger_than_max_bytes_is_refused_and_the_profiles_stay() {
    let _guard = TimeoutGuard::new("node snapshot store", SECS(120));
    let setup = start(
        r#"["node", "app.js"]"#,
        1,
        "env = { HOLD_MIB = \"8\" }\n[profiles]\nmax-bytes = \"1MiB\"",
    );
    poll_until(SECS(20), "a heap sample", || {
        setup.workers()[0]["heap_allocated_bytes"].is_u64()
    });
    let profile = setup.cli(&["dump", "0"]).expect("a heap profile");
    let before: Vec<u64> = setup
        .profiles()
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect();
    assert!(before.contains(&profile["id"].as_u64().unwrap()));
    let err = setup.cli(&["dump", "0", "--snapshot"]).unwrap_err();
    assert!(
        err.contains("HTTP 507") && err.contains("expected"),
        "{err}"
    );
    let after: Vec<u64> = setup
        .profiles()
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect();
    assert_eq!(before, after, "the store lost profiles to a snapshot");
    for profile in setup.profiles() {
        let file = setup
            .sandbox
            .path()
            .join("state/profiles")
            .join(profile["file"].as_str().unwrap());
        assert!(file.is_file(), "{} is gone", file.display());
    }
}

/// With `leak-snapshot`, workers warming up together each get their warm-up snapshot:
/// one snapshot is taken at a time, and the watchdog's wait their turn rather than
/// being refused as a manual one is.
#[test]
fn with_leak_snapshot_every_worker_gets_its_warm_up_snapshot() {
    let _guard = TimeoutGuard::new("warm-up snapshots", SECS(120));
    let setup = start(
        r#"["node", "app.js"]"#,
        3,
        "[watchdog]\nwarmup = \"1s\"\nleak-snapshot = true",
    );
    setup
        .agent
        .logs
        .wait_for_n(3, SECS(90), "three warm-up snapshots", |r| {
            r["msg"] == "A heap snapshot was written." && r["trigger"] == "baseline"
        });
    let mut slots: Vec<u64> = setup
        .profiles()
        .iter()
        .filter(|p| p["kind"] == "snapshot" && p["trigger"] == "baseline")
        .filter_map(|p| p["slot"].as_u64())
        .collect();
    slots.sort_unstable();
    assert_eq!(slots, [0, 1, 2], "one warm-up snapshot per slot");
}
