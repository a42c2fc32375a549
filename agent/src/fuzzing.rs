//! Test-only: runs a fuzz target (a property over generated inputs) for the number of
//! cases in `PROPTEST_CASES` (proptest's default otherwise) and prints how many ran, so
//! `bench/fuzz.sh` can report counts. A panic in the target is a failure, with the
//! shrunk input that caused it.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

pub fn fuzz<S: Strategy>(
    target: &str,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let ran = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |value| {
        ran.fetch_add(1, Ordering::Relaxed);
        check(value)
    });
    let ran = ran.load(Ordering::Relaxed);
    match result {
        Ok(()) => eprintln!("fuzz {target}: {ran} cases, 0 failures"),
        Err(e) => panic!("fuzz {target}: failed after {ran} cases: {e}"),
    }
}
