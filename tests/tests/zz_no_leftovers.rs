//! The suite's last check: no process a test started outlives its test. Every process the
//! harness spawns, and everything those start, carries the test's mark
//! (`heapwarden_tests::leftovers`); one whose test has finished is a leftover. Named to
//! run last under `cargo test` (test binaries run in name order); `scripts/test` runs it
//! again once the whole cargo-nextest run is over. A leftover still exiting gets a grace
//! period; what remains after it is listed, then killed so it does not linger.
#![forbid(unsafe_code)]

use std::time::Duration;

use heapwarden_tests::leftovers;
use heapwarden_tests::try_poll;

#[test]
fn no_process_started_by_a_test_outlives_it() {
    let settled = try_poll(Duration::from_secs(20), || {
        leftovers::orphaned().is_empty().then_some(())
    });
    if settled.is_some() {
        return;
    }
    let survivors = leftovers::orphaned();
    for s in &survivors {
        leftovers::kill_marked(&s.mark);
    }
    let listed: Vec<String> = survivors
        .iter()
        .map(|s| format!("pid {} (test {}): {}", s.pid, s.mark, s.cmdline))
        .collect();
    panic!(
        "{} processes outlived the test that started them:\n{}",
        listed.len(),
        listed.join("\n")
    );
}
