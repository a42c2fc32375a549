//! The native preload's claim and ownership rules, black-box: a dynamically linked program
//! run with `LD_PRELOAD=libheapwarden_preload.so` claims the control channel (says
//! `hello` with runtime `native`) only when `HEAPWARDEN_WORKER_PID` names its own pid;
//! a descendant that inherited the environment never does; a control descriptor that is
//! not a socket, or none at all, leaves the program running as a plain program. One test
//! function: the control socket is inherited by number (not close-on-exec), so no other
//! test of this binary may spawn children meanwhile.
#![forbid(unsafe_code)]

mod native_support;

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use heapwarden_probes::{FrameDecoder, Runtime, WorkerMsg};
use heapwarden_tests::{TimeoutGuard, heapwarden};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

fn preload() -> std::path::PathBuf {
    native_support::assert_preload_built();
    heapwarden().with_file_name("libheapwarden_preload.so")
}

/// Runs `sh -c script` under the preload with the worker end of a fresh socketpair as its
/// control descriptor; returns the hellos read on the agent's end and the output.
fn run(script: &str, control_fd: Option<&str>) -> (Vec<WorkerMsg>, Output) {
    let (agent_end, worker_end): (OwnedFd, OwnedFd) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::empty(),
    )
    .expect("socketpair");
    let mut command = Command::new("sh");
    command.args(["-c", script]).env("LD_PRELOAD", preload());
    command.env_remove("HEAPWARDEN_WORKER_PID");
    match control_fd {
        Some(fd) => command.env("HEAPWARDEN_CONTROL_FD", fd),
        None => command.env("HEAPWARDEN_CONTROL_FD", worker_end.as_raw_fd().to_string()),
    };
    let output = command.output().expect("run the program");
    drop(worker_end);
    let mut agent = UnixStream::from(agent_end);
    agent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut decoder = FrameDecoder::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    // The program has exited: every process holding the worker end is gone, so the
    // stream ends (EOF) once what they wrote is read.
    while Instant::now() < deadline {
        match agent.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("read: {e}"),
        }
    }
    let mut hellos = Vec::new();
    while let Some(msg) = decoder.next_frame::<WorkerMsg>().expect("valid frames") {
        if matches!(msg, WorkerMsg::Hello { .. }) {
            hellos.push(msg);
        }
    }
    (hellos, output)
}

fn hello_pid(msg: &WorkerMsg) -> (u32, Runtime) {
    match msg {
        WorkerMsg::Hello { pid, runtime, .. } => (*pid, *runtime),
        other => panic!("not a hello: {other:?}"),
    }
}

#[test]
fn only_the_named_worker_claims_and_anything_else_runs_plain() {
    let _guard = TimeoutGuard::new("preload_claim", Duration::from_secs(120));
    // The worker: `exec` keeps the shell's pid, which HEAPWARDEN_WORKER_PID names.
    let (hellos, out) = run(
        "exec env HEAPWARDEN_WORKER_PID=$$ sh -c 'echo $$; sleep 0.3; true'",
        None,
    );
    assert!(out.status.success(), "{out:?}");
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the worker printed its pid");
    assert_eq!(
        hellos.iter().map(hello_pid).collect::<Vec<_>>(),
        vec![(pid, Runtime::Native)],
        "exactly one hello, from the worker itself; its forked `sleep` never claims"
    );

    // Another pid is named: this process is a descendant and stays quiet.
    let (hellos, out) = run("exec env HEAPWARDEN_WORKER_PID=1 sleep 0.2", None);
    assert!(out.status.success(), "{out:?}");
    assert!(hellos.is_empty(), "a descendant claimed: {hellos:?}");

    // No worker pid at all (not run by an agent that sets it): nothing claims either.
    let (hellos, out) = run("sleep 0.2", None);
    assert!(out.status.success(), "{out:?}");
    assert!(hellos.is_empty(), "{hellos:?}");

    // The descriptor is not a socket: the program runs, as a plain program, and says why.
    let (hellos, out) = run(
        "exec env HEAPWARDEN_WORKER_PID=$$ sh -c 'echo ran' 0</dev/null",
        Some("0"),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ran");
    assert!(hellos.is_empty(), "{hellos:?}");
}
