//! The harness stops what it started as an operator would, and finds what a test left:
//! a dropped process gets SIGTERM first (its shutdown path runs), one that ignores it is
//! SIGKILLed after the grace together with every descendant carrying its mark, and a
//! marked process whose test is over is reported by `leftovers::orphaned`.
#![forbid(unsafe_code)]

use std::process::Command;
use std::time::Duration;

use heapwarden_tests::leftovers::{self, MARK_ENV};
use heapwarden_tests::{Proc, Sandbox, TimeoutGuard, alive, poll, wait_gone};

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The pid a shell script wrote to `file`, once it has.
fn pid_in(sandbox: &Sandbox, file: &str) -> i32 {
    let path = sandbox.path().join(file);
    poll(SECS(10), file, || {
        std::fs::read_to_string(&path).ok()?.trim().parse().ok()
    })
}

#[test]
fn a_dropped_process_gets_sigterm_and_runs_its_shutdown() {
    let _guard = TimeoutGuard::new("harness_sigterm", SECS(60));
    let sandbox = Sandbox::new();
    let mut command = Command::new("sh");
    command.current_dir(sandbox.path()).args([
        "-c",
        "trap 'echo term > stopped; kill $child; exit 0' TERM; \
         sleep 300 & child=$!; echo $child > child; wait",
    ]);
    let proc = Proc::spawn(command);
    let child = pid_in(&sandbox, "child");
    // The shell writes the pid right after its fork; a TERM that reaches the child before
    // it runs `sleep` lands in the shell's copy of the trap and is lost with the exec.
    poll(SECS(10), "the grandchild runs sleep", || {
        let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).ok()?;
        (comm.trim() == "sleep").then_some(())
    });
    let mark = leftovers::marked()
        .into_iter()
        .find(|m| m.pid == child)
        .expect("the grandchild inherited the mark");
    assert!(mark.mark.starts_with(&leftovers::owner_mark()), "{mark:?}");
    drop(proc);
    assert_eq!(
        std::fs::read_to_string(sandbox.path().join("stopped")).expect("the trap ran"),
        "term\n"
    );
    assert!(wait_gone(child, SECS(5)), "its child went with it");
}

#[test]
fn a_process_that_ignores_sigterm_is_killed_with_all_it_started() {
    let _guard = TimeoutGuard::new("harness_sigkill", SECS(60));
    let sandbox = Sandbox::new();
    let mut command = Command::new("sh");
    // The grandchild leads its own session, as an agent's worker leads its own group:
    // killing the shell does not reach it, only its mark does.
    command.current_dir(sandbox.path()).args([
        "-c",
        "trap '' TERM; setsid sleep 300 & echo $! > child; while :; do sleep 1; done",
    ]);
    let mut proc = Proc::spawn(command);
    let shell = proc.pid();
    let child = pid_in(&sandbox, "child");
    let status = proc.stop(Duration::from_millis(500));
    assert!(status.is_some(), "the shell was reaped");
    assert!(!alive(shell));
    assert!(
        wait_gone(child, SECS(5)),
        "the descendant was swept by its mark"
    );
}

#[test]
fn a_marked_process_whose_test_is_over_is_an_orphan() {
    let _guard = TimeoutGuard::new("harness_orphan", SECS(60));
    // pid 1 never started at tick 0 of a test: this owner is gone.
    let mut child = Command::new("sleep")
        .arg("300")
        .env(MARK_ENV, "1:0/7")
        .spawn()
        .expect("sleep");
    let pid = child.id() as i32;
    let found = poll(SECS(5), "the orphan listed", || {
        leftovers::orphaned().into_iter().find(|m| m.pid == pid)
    });
    assert_eq!(found.owner(), "1:0");
    assert!(found.cmdline.starts_with("sleep 300"), "{found:?}");
    // A live test's own processes are not orphans.
    assert!(
        !leftovers::orphaned()
            .iter()
            .any(|m| m.owner() == leftovers::owner_mark())
    );
    leftovers::kill_marked("1:0/7");
    let _ = child.wait();
    assert!(!alive(pid));
}
