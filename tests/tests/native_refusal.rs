//! `probe = "native"` refuses a program that links the Rust probe itself, found by what
//! its ELF carries, not by its name (issue #16, defect 9): the demo, run by its path,
//! gets one probe (its own) instead of two on one channel.

mod native_support;

use heapwarden_tests::{Sandbox, TimeoutGuard, heapwarden_demo};
use native_support::{SECS, start_native};

#[test]
fn a_program_carrying_the_rust_probe_does_not_get_the_native_one() {
    let _guard = TimeoutGuard::new("native_refusal", SECS(90));
    let sandbox = Sandbox::new();
    let demo = heapwarden_demo();
    let state = sandbox.path().join("demo-state");
    let command = serde_json::to_string(&[
        demo.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ])
    .unwrap();
    let native = start_native(sandbox, 1, &command, "");
    let logs = &native.agent.logs;
    let refused = logs.wait_for(SECS(30), "the refusal", |r| {
        r["msg"] == "The probe cannot be attached; workers run as plain programs with procfs figures only."
            && r["probe"] == "native"
    });
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("links heapwarden-probes itself"),
        "{refused}"
    );
    // Its own probe still reports: one runtime, the Rust one.
    logs.wait_for(SECS(60), "the demo's own probe", |r| {
        r["msg"] == "A worker's probe claimed its control channel."
    });
    assert!(
        logs.matching(|r| r["msg"] == "The heapwarden native probe is attached.")
            .is_empty(),
        "the native probe attached too"
    );
}
