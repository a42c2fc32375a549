//! The native preload pushes its stats on the agent's interval, black-box: a program run
//! with `LD_PRELOAD=libheapwarden_preload.so` says `push` in its hello, pushes `stats` with
//! seq 0 (jemalloc figures, no metrics) on the interval a `report` sets, and stops on
//! `every_ms` 0. One test function: the control socket is inherited by number (not
//! close-on-exec), so no other test of this binary may spawn children meanwhile.
#![forbid(unsafe_code)]

mod native_support;

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use heapwarden_probes::channel::encode;
use heapwarden_probes::{AgentMsg, FrameDecoder, Runtime, WorkerMsg};
use heapwarden_tests::{TimeoutGuard, heapwarden};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

/// Everything the worker says within `window`.
fn collect_for(
    agent: &mut UnixStream,
    decoder: &mut FrameDecoder,
    window: Duration,
) -> Vec<WorkerMsg> {
    let deadline = Instant::now() + window;
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    loop {
        while let Some(msg) = decoder.next_frame::<WorkerMsg>().expect("valid frames") {
            got.push(msg);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        agent.set_read_timeout(Some(left)).expect("timeout");
        match agent.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn pushes(got: &[WorkerMsg]) -> usize {
    got.iter()
        .filter(|msg| match msg {
            WorkerMsg::Stats {
                seq: 0,
                heap,
                metrics,
                ..
            } => {
                assert!(heap.is_some_and(|h| h.allocated > 0), "{msg:?}");
                assert!(metrics.is_none(), "{msg:?}");
                true
            }
            _ => false,
        })
        .count()
}

#[test]
fn a_native_worker_pushes_its_stats_on_the_reported_interval() {
    let _guard = TimeoutGuard::new("preload_push", Duration::from_secs(120));
    native_support::assert_preload_built();
    let preload = heapwarden().with_file_name("libheapwarden_preload.so");
    let (agent_end, worker_end): (OwnedFd, OwnedFd) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::empty(),
    )
    .expect("socketpair");
    // `exec` keeps the shell's pid, which HEAPWARDEN_WORKER_PID names: `sleep` claims.
    let mut worker = Command::new("sh")
        .args(["-c", "exec env HEAPWARDEN_WORKER_PID=$$ sleep 30"])
        .env("LD_PRELOAD", &preload)
        .env("HEAPWARDEN_CONTROL_FD", worker_end.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .spawn()
        .expect("start the worker");
    drop(worker_end);
    let mut agent = UnixStream::from(agent_end);
    let mut decoder = FrameDecoder::new();
    let send = |agent: &mut UnixStream, msg: AgentMsg| {
        agent
            .write_all(&encode(&msg).expect("encode"))
            .expect("send");
    };

    let hello = collect_for(&mut agent, &mut decoder, Duration::from_secs(3));
    assert!(
        matches!(
            hello.first(),
            Some(WorkerMsg::Hello {
                runtime: Runtime::Native,
                push: true,
                ..
            })
        ),
        "{hello:?}"
    );
    assert_eq!(pushes(&hello), 0, "nothing is pushed before a report");

    send(
        &mut agent,
        AgentMsg::Report {
            every_ms: 100,
            first_ms: 50,
            at_us: None,
        },
    );
    let got = collect_for(&mut agent, &mut decoder, Duration::from_secs(1));
    let pushed = pushes(&got);
    assert!(
        (4..=12).contains(&pushed),
        "{pushed} pushes in one second at every_ms 100: {got:?}"
    );

    send(
        &mut agent,
        AgentMsg::Report {
            every_ms: 0,
            first_ms: 0,
            at_us: None,
        },
    );
    collect_for(&mut agent, &mut decoder, Duration::from_millis(100));
    assert_eq!(
        pushes(&collect_for(
            &mut agent,
            &mut decoder,
            Duration::from_millis(400)
        )),
        0,
        "every_ms 0 stops the pushes"
    );
    send(&mut agent, AgentMsg::Ping { seq: 3 });
    let pong = collect_for(&mut agent, &mut decoder, Duration::from_millis(500));
    assert!(pong.contains(&WorkerMsg::Pong { seq: 3 }), "{pong:?}");

    worker.kill().expect("kill the worker");
    worker.wait().expect("reap the worker");
}
