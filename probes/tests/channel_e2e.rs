//! End-to-end test of the probe over a real socketpair, with the test playing the agent.

heapwarden_probes::install!();

use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use heapwarden_probes::channel::encode;
use heapwarden_probes::{
    AgentMsg, FrameDecoder, HeapStats, Probe, ProbeError, ReadHeapStats, WorkerMsg,
};

const DEADLINE: Duration = Duration::from_secs(10);

/// The agent's end of the channel, with blocking reads bounded by a timeout.
struct FakeAgent {
    socket: UnixStream,
    decoder: FrameDecoder,
}

impl FakeAgent {
    fn send(&mut self, msg: &AgentMsg) {
        self.send_raw(&encode(msg).expect("encode"));
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).expect("write to probe");
    }

    /// Next message from the worker, or None when the probe closed the channel.
    fn recv_or_eof(&mut self, timeout: Duration) -> Option<WorkerMsg> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(msg) = self.decoder.next_frame::<WorkerMsg>().expect("valid frame") {
                return Some(msg);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no message from the probe within {timeout:?}"
            );
            self.socket
                .set_read_timeout(Some(left))
                .expect("set timeout");
            match self.socket.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.decoder.push(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read from probe failed: {e}"),
            }
        }
    }

    /// Everything the worker says within `window`, with when it arrived.
    fn collect_for(&mut self, window: Duration) -> Vec<(Instant, WorkerMsg)> {
        let deadline = Instant::now() + window;
        let mut chunk = [0u8; 4096];
        let mut got = Vec::new();
        loop {
            while let Some(msg) = self.decoder.next_frame::<WorkerMsg>().expect("valid frame") {
                got.push((Instant::now(), msg));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return got;
            }
            self.socket
                .set_read_timeout(Some(left))
                .expect("set timeout");
            match self.socket.read(&mut chunk) {
                Ok(0) => return got,
                Ok(n) => self.decoder.push(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read from probe failed: {e}"),
            }
        }
    }

    fn recv(&mut self) -> WorkerMsg {
        self.recv_or_eof(DEADLINE)
            .expect("probe closed the channel")
    }
}

/// A probe over one end of a socketpair, the fake agent on the other, Hello consumed.
fn connect() -> (Probe, FakeAgent) {
    let (worker_end, agent_end) = UnixStream::pair().expect("socketpair");
    let probe = Probe::from_fd(OwnedFd::from(worker_end)).expect("probe starts");
    let mut agent = FakeAgent {
        socket: agent_end,
        decoder: FrameDecoder::new(),
    };
    match agent.recv() {
        WorkerMsg::Hello {
            pid,
            probe_version,
            runtime,
            push,
        } => {
            assert!(push, "this probe pushes its stats when told");
            assert_eq!(runtime, heapwarden_probes::Runtime::Rust);
            assert_eq!(pid, std::process::id());
            assert_eq!(probe_version, env!("CARGO_PKG_VERSION"));
        }
        other => panic!("expected Hello first, got {other:?}"),
    }
    (probe, agent)
}

#[inline(never)]
fn hold_for_e2e_test(mib: usize) -> Vec<Vec<u8>> {
    (0..mib).map(|_| vec![3u8; 1024 * 1024]).collect()
}

#[test]
fn sample_dump_ping_and_ready_are_answered() {
    heapwarden_probes::activate_profiling().expect("profiling compiled in");
    let held = std::hint::black_box(hold_for_e2e_test(4));
    let (probe, mut agent) = connect();
    probe.set_metrics_source(|| "demo_requests_total 3\n".to_string());

    probe.ready();
    assert_eq!(agent.recv(), WorkerMsg::Ready);

    agent.send(&AgentMsg::Sample {
        seq: 1,
        metrics: true,
    });
    match agent.recv() {
        WorkerMsg::Stats {
            seq,
            heap,
            metrics,
            dropped,
            runtime_lag_seconds,
            ..
        } => {
            assert_eq!(seq, 1);
            let heap = heap.expect("heap stats present");
            assert!(
                heap.allocated >= 4 * 1024 * 1024,
                "allocated {}",
                heap.allocated
            );
            assert!(heap.resident > Some(0) && heap.mapped > Some(0));
            assert_eq!(metrics.as_deref(), Some("demo_requests_total 3\n"));
            assert_eq!(dropped, 0);
            assert_eq!(runtime_lag_seconds, None, "no lag monitor registered");
        }
        other => panic!("expected Stats, got {other:?}"),
    }
    agent.send(&AgentMsg::Sample {
        seq: 2,
        metrics: false,
    });
    assert!(matches!(
        agent.recv(),
        WorkerMsg::Stats {
            seq: 2,
            metrics: None,
            ..
        }
    ));

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("w0.heap").to_string_lossy().into_owned();
    agent.send(&AgentMsg::Dump {
        seq: 3,
        path: path.clone(),
        kind: heapwarden_probes::DumpKind::Profile,
        max_bytes: None,
    });
    match agent.recv() {
        WorkerMsg::ProfileWritten {
            seq,
            path: written,
            error,
            ..
        } => {
            assert_eq!((seq, written.as_str(), error), (3, path.as_str(), None));
            let text = std::fs::read_to_string(&path).expect("profile file exists");
            assert!(text.starts_with("heap_v2/"));
        }
        other => panic!("expected ProfileWritten, got {other:?}"),
    }
    let missing_dir = dir
        .path()
        .join("no/such/dir/w0.heap")
        .to_string_lossy()
        .into_owned();
    agent.send(&AgentMsg::Dump {
        seq: 4,
        path: missing_dir,
        kind: heapwarden_probes::DumpKind::Profile,
        max_bytes: None,
    });
    assert!(matches!(
        agent.recv(),
        WorkerMsg::ProfileWritten {
            seq: 4,
            error: Some(_),
            ..
        }
    ));

    agent.send(&AgentMsg::Ping { seq: 5 });
    assert_eq!(agent.recv(), WorkerMsg::Pong { seq: 5 });
    drop(held);
}

#[tokio::test]
async fn invalidations_run_the_callback_and_wait_for_the_agent() {
    let (probe, mut agent) = connect();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    probe
        .on_invalidate(move |key, version| record.lock().unwrap().push((key.to_string(), version)));

    agent.send(&AgentMsg::Invalidate {
        seq: 9,
        key: "user:1".into(),
        version: 4,
    });
    assert_eq!(agent.recv(), WorkerMsg::Invalidated { seq: 9 });
    // The ack is only sent after the callback returned.
    assert_eq!(*seen.lock().unwrap(), vec![("user:1".to_string(), 4)]);

    let everywhere = probe.invalidate_everywhere("user:2", 7);
    let seq = match agent.recv() {
        WorkerMsg::Invalidate { seq, key, version } => {
            assert_eq!((key.as_str(), version), ("user:2", 7));
            seq
        }
        other => panic!("expected Invalidate, got {other:?}"),
    };
    agent.send(&AgentMsg::InvalidateDone { seq: seq + 1000 }); // someone else's: ignored
    agent.send(&AgentMsg::InvalidateDone { seq });
    everywhere.await.expect("acknowledged by the agent");

    // The agent going away fails a pending invalidation and tells the app to drain.
    let pending = probe.invalidate_everywhere("user:3", 1);
    drop(agent);
    let result = tokio::time::timeout(DEADLINE, pending)
        .await
        .expect("resolves");
    assert!(
        matches!(result, Err(ProbeError::ChannelClosed)),
        "{result:?}"
    );
    tokio::time::timeout(DEADLINE, probe.drained())
        .await
        .expect("drained on close");
    assert!(matches!(
        probe.invalidate_everywhere("user:4", 1).await,
        Err(ProbeError::ChannelClosed)
    ));
}

#[tokio::test]
async fn drain_resolves_the_drained_future() {
    let (probe, mut agent) = connect();
    assert!(!probe.is_drained());
    let drained = probe.drained();
    agent.send(&AgentMsg::Drain { deadline_ms: 1500 });
    tokio::time::timeout(DEADLINE, drained)
        .await
        .expect("drained after Drain");
    assert!(probe.is_drained());
    assert_eq!(probe.drain_deadline(), Some(Duration::from_millis(1500)));
    // The channel stays up while the worker drains: it can still be sampled.
    agent.send(&AgentMsg::Ping { seq: 1 });
    assert_eq!(agent.recv(), WorkerMsg::Pong { seq: 1 });
}

#[tokio::test]
async fn garbage_is_ignored_and_a_bad_length_closes_without_allocating() {
    let (probe, mut agent) = connect();
    let mut garbage = 6u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[1, b'{', b'x', 0xff, b'}', b'"']);
    agent.send_raw(&garbage);
    let mut wrong_version = encode(&AgentMsg::Ping { seq: 1 }).unwrap();
    wrong_version[4] = 200;
    agent.send_raw(&wrong_version);
    agent.send_raw(&[0, 0, 0, 0]);
    agent.send(&AgentMsg::Ping { seq: 2 });
    assert_eq!(
        agent.recv(),
        WorkerMsg::Pong { seq: 2 },
        "probe survived the garbage"
    );

    let before = HeapStats::read().expect("heap stats").allocated;
    // One write: the probe closes as soon as it reads the length, and a second write
    // would race that close (EPIPE).
    let mut impossible = u32::MAX.to_be_bytes().to_vec();
    impossible.extend_from_slice(&[0u8; 1024]);
    agent.send_raw(&impossible);
    assert_eq!(
        agent.recv_or_eof(DEADLINE),
        None,
        "probe closes on an undelimitable frame"
    );
    let after = HeapStats::read().expect("heap stats").allocated;
    assert!(
        after < before + 256 * 1024 * 1024,
        "a 4 GiB length made the probe allocate: {before} -> {after}"
    );
    tokio::time::timeout(DEADLINE, probe.drained())
        .await
        .expect("drained after close");
}

#[test]
fn a_stuck_agent_never_blocks_the_app_and_drops_are_counted() {
    let (probe, mut agent) = connect();
    let started = Instant::now();
    for _ in 0..200_000 {
        probe.ready();
    }
    assert!(started.elapsed() < DEADLINE, "sending blocked the app");
    let dropped = probe.dropped();
    assert!(
        dropped > 0,
        "nothing was dropped although the agent never read"
    );

    // Read everything that did get through, until the probe has nothing more to say.
    agent
        .socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut chunk = vec![0u8; 64 * 1024];
    while matches!(agent.socket.read(&mut chunk), Ok(n) if n > 0) {}
    agent.decoder = FrameDecoder::new();
    agent.send(&AgentMsg::Sample {
        seq: 77,
        metrics: false,
    });
    match agent.recv() {
        WorkerMsg::Stats {
            seq: 77,
            dropped: reported,
            ..
        } => assert_eq!(reported, dropped),
        other => panic!("expected Stats, got {other:?}"),
    }
}

/// Pushed stats (seq 0) within `got`.
fn pushes(got: &[(Instant, WorkerMsg)]) -> Vec<Instant> {
    got.iter()
        .filter_map(|(at, msg)| match msg {
            WorkerMsg::Stats {
                seq: 0,
                heap,
                metrics,
                ..
            } => {
                assert!(heap.is_some() && metrics.is_none(), "{msg:?}");
                Some(*at)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_report_s_clock_time_sets_the_first_push_not_first_ms() {
    let (_probe, mut agent) = connect();
    let sent = Instant::now();
    let at = sent + Duration::from_millis(300);
    agent.send(&AgentMsg::Report {
        every_ms: 400,
        first_ms: 50,
        at_us: Some(heapwarden_protocol::clock::monotonic_us_at(at)),
    });
    let pushed = pushes(&agent.collect_for(Duration::from_millis(900)));
    let first = pushed.first().expect("pushes within 900 ms");
    // A loaded machine delays a push, never brings it forward: first_ms would be ~50 ms.
    let after = first.duration_since(sent);
    assert!(
        after >= Duration::from_millis(295),
        "the first push came {after:?} after the report, before the clock time it named (300 ms)"
    );
    assert!(
        (1..=3).contains(&pushed.len()),
        "{} pushes from 300 to 900 ms at every_ms 400",
        pushed.len()
    );
}

#[test]
fn stats_are_pushed_on_the_reported_interval_until_told_to_stop() {
    let (_probe, mut agent) = connect();
    assert!(
        pushes(&agent.collect_for(Duration::from_millis(300))).is_empty(),
        "nothing is pushed before a report"
    );
    agent.send(&AgentMsg::Report {
        every_ms: 100,
        first_ms: 50,
        at_us: None,
    });
    agent.send(&AgentMsg::Sample {
        seq: 9,
        metrics: false,
    });
    let got = agent.collect_for(Duration::from_millis(1000));
    assert!(
        got.iter()
            .any(|(_, m)| matches!(m, WorkerMsg::Stats { seq: 9, .. })),
        "a request is still answered while pushing"
    );
    let pushed = pushes(&got);
    // About 10 in the window; a loaded machine delays some, a spinning timer sends many.
    assert!(
        (4..=12).contains(&pushed.len()),
        "{} pushes in one second at every_ms 100",
        pushed.len()
    );

    // A hostile interval is raised to the floor: at most one push per 10 ms.
    agent.send(&AgentMsg::Report {
        every_ms: 1,
        first_ms: u64::MAX,
        at_us: None,
    });
    let fast = pushes(&agent.collect_for(Duration::from_millis(500)));
    assert!(fast.len() <= 55, "{} pushes in 500 ms", fast.len());
    assert!(
        fast.len() >= 10,
        "the raised interval still pushes: {}",
        fast.len()
    );

    agent.send(&AgentMsg::Report {
        every_ms: 0,
        first_ms: 0,
        at_us: None,
    });
    // One push may already be on its way when the stop is read.
    agent.collect_for(Duration::from_millis(100));
    assert_eq!(
        pushes(&agent.collect_for(Duration::from_millis(400))),
        Vec::<Instant>::new(),
        "every_ms 0 stops the pushes"
    );
    agent.send(&AgentMsg::Ping { seq: 11 });
    assert_eq!(
        agent.recv(),
        WorkerMsg::Pong { seq: 11 },
        "the channel still works"
    );
}
