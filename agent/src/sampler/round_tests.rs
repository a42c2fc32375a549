//! Whole sampling rounds over a fake `/proc`, with real control links to fake probes
//! (one that answers, one that never does, one that pushes on the interval it is told).
//! The fetch of workers' metrics text (`admin::exposition`) is tested over the same fakes
//! ([`link`], [`slot`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use heapwarden_protocol::HeapStats;
use heapwarden_protocol::channel::{AgentMsg, FrameDecoder, WorkerMsg, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::ProbeAnswer;
use super::collect::Roots;
use super::fake_proc::{FakeProc, PAGE};
use super::round::SamplerState;
use crate::config::SamplingConfig;
use crate::supervisor::link::spawn_link;
use crate::supervisor::{ControlLink, PoolView, SlotState, SlotView, WorkerView};

const HEAP: HeapStats = HeapStats {
    allocated: 1000,
    active: 2000,
    resident: Some(3000),
    mapped: Some(4000),
    retained: Some(5000),
    metadata: Some(6),
};

/// A probe that answers every `Sample` with `HEAP` and, when asked for it, a metrics line.
async fn answering_probe(mut stream: UnixStream) {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 4096];
    while let Ok(n @ 1..) = stream.read(&mut buf).await {
        decoder.push(&buf[..n]);
        while let Ok(Some(msg)) = decoder.next_frame::<AgentMsg>() {
            let AgentMsg::Sample { seq, metrics } = msg else {
                continue;
            };
            let reply = WorkerMsg::Stats {
                seq,
                heap: Some(HEAP),
                runtime_lag_seconds: Some(0.002),
                dropped: 3,
                metrics: metrics.then(|| "demo_jobs_total{outcome=\"completed\"} 4\n".to_string()),
                external_bytes: None,
                array_buffers_bytes: None,
                sampling_restarts: Some(2),
            };
            let frame = encode(&reply).expect("encode");
            if stream.write_all(&frame).await.is_err() {
                return;
            }
        }
    }
}

/// A probe that reads and never answers.
async fn silent_probe(mut stream: UnixStream) {
    let mut buf = vec![0u8; 4096];
    while let Ok(1..) = stream.read(&mut buf).await {}
}

/// What the pushing probe reports, so a test tells pushed figures from answered ones.
const PUSHED_HEAP: HeapStats = HeapStats {
    allocated: 7777,
    ..HEAP
};

/// A probe that says it pushes, pushes `PUSHED_HEAP` on the schedule each report sets (as
/// the real probes do: every push time counted from the report's arrival), and answers
/// a `Sample` too, counting them in `asked`.
async fn pushing_probe(stream: UnixStream, asked: Arc<AtomicUsize>) {
    let (mut reader, writer) = stream.into_split();
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let send = |writer: Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>, msg| async move {
        let frame = encode(&msg).expect("encode");
        writer.lock().await.write_all(&frame).await.is_ok()
    };
    let hello = WorkerMsg::Hello {
        pid: 1,
        probe_version: "test".into(),
        runtime: heapwarden_protocol::Runtime::Rust,
        push: true,
    };
    send(writer.clone(), hello).await;
    let stats = |seq, heap| WorkerMsg::Stats {
        seq,
        heap: Some(heap),
        runtime_lag_seconds: None,
        dropped: 0,
        metrics: None,
        external_bytes: None,
        array_buffers_bytes: None,
        sampling_restarts: None,
    };
    let mut pusher: Option<tokio::task::JoinHandle<()>> = None;
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 4096];
    while let Ok(n @ 1..) = reader.read(&mut buf).await {
        decoder.push(&buf[..n]);
        while let Ok(Some(msg)) = decoder.next_frame::<AgentMsg>() {
            match msg {
                AgentMsg::Sample { seq, .. } => {
                    asked.fetch_add(1, Ordering::SeqCst);
                    send(writer.clone(), stats(seq, HEAP)).await;
                }
                AgentMsg::Report { every_ms: 0, .. } => {
                    pusher.take().inspect(tokio::task::JoinHandle::abort);
                }
                AgentMsg::Report {
                    every_ms, first_ms, ..
                } => {
                    let (every, first) = (
                        Duration::from_millis(every_ms),
                        Duration::from_millis(first_ms),
                    );
                    let writer = writer.clone();
                    let start = tokio::time::Instant::now() + first;
                    pusher
                        .replace(tokio::spawn(async move {
                            let mut ticks = tokio::time::interval_at(start, every);
                            loop {
                                ticks.tick().await;
                                if !send(writer.clone(), stats(0, PUSHED_HEAP)).await {
                                    return;
                                }
                            }
                        }))
                        .inspect(tokio::task::JoinHandle::abort);
                }
                _ => {}
            }
        }
    }
}

/// The fake `/proc` as the sampler's roots, the agent being pid 1, without a cgroup.
fn roots_of(fake: &FakeProc) -> Roots {
    Roots {
        proc: fake.procfs(),
        cgroup_dir: None,
        agent_pid: 1,
        kernel_children: false,
    }
}

/// A control link to a probe that answers (`answering_probe`) or one that never does.
pub(crate) fn link(worker_id: u64, answers: bool) -> ControlLink {
    let (agent_end, worker_end) = UnixStream::pair().expect("socketpair");
    if answers {
        tokio::spawn(answering_probe(worker_end));
    } else {
        tokio::spawn(silent_probe(worker_end));
    }
    link_to(agent_end, worker_id)
}

fn link_to(agent_end: UnixStream, worker_id: u64) -> ControlLink {
    let (events, mut events_rx) = mpsc::channel::<crate::supervisor::LinkEvent>(16);
    tokio::spawn(async move { while events_rx.recv().await.is_some() {} });
    spawn_link(
        agent_end,
        worker_id,
        events,
        None,
        slog::Logger::root(slog::Discard, slog::o!()),
    )
}

/// A ready slot whose worker (id `100 + n`) links the probe when it has a `link`.
pub(crate) fn slot(n: usize, pid: u32, link: Option<ControlLink>) -> SlotView {
    SlotView {
        slot: n,
        state: SlotState::Ready,
        worker: Some(WorkerView {
            worker_id: 100 + n as u64,
            pid,
            started_at: Instant::now(),
            ready_at: None,
            started_wall: SystemTime::now(),
            ready: true,
            probe: link.is_some(),
            runtime: None,
            link,
            children: None,
        }),
        restarts: 0,
        budget_exhausted: false,
    }
}

#[tokio::test]
async fn rounds_sample_every_worker_and_say_which_probe_was_silent() {
    let fake = FakeProc::new();
    fake.process(1, 0, 10, [1, 1, 0, 0], [1, 1, 0]);
    fake.process(10, 1, 100, [10, 0, 0, 0], [300, 200, 0]);
    fake.process(20, 1, 200, [20, 0, 0, 0], [500, 400, 8]);
    fake.process(30, 1, 300, [30, 0, 0, 0], [700, 600, 0]);
    let roots = roots_of(&fake);
    let cfg = SamplingConfig {
        interval: Duration::from_millis(100),
        pss_every: 2,
        missed_pings: 2,
        ..SamplingConfig::default()
    };
    let view = PoolView {
        slots: vec![
            slot(0, 10, Some(link(100, true))),
            slot(1, 20, Some(link(101, false))),
            slot(2, 30, None),
        ],
        stopping: false,
    };
    let mut state = SamplerState::new(cfg, roots, slog::Logger::root(slog::Discard, slog::o!()));
    // The rounds record on this thread (a current-thread test runtime).
    let recorder = crate::metric_names::build_recorder().expect("recorder");
    let _local = metrics::set_default_local_recorder(&recorder);
    let run = async {
        let first = state.round(&view, Instant::now()).await;
        let second = state.round(&view, Instant::now()).await;
        let third = state.round(&view, Instant::now()).await;
        (first, second, third)
    };
    let (first, second, third) = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("rounds finish");

    assert_eq!(first.len(), 3);
    let s0 = &first[0];
    assert_eq!(
        (s0.slot, s0.rss, s0.pss, s0.heap),
        (0, 100 * PAGE, Some(300 * 1024), Some(HEAP))
    );
    assert_eq!(s0.runtime_lag_seconds, Some(0.002));
    assert_eq!(
        first[1].heap, None,
        "the silent worker still gets procfs figures"
    );
    assert_eq!(first[2].uss, Some(600 * 1024));
    assert_eq!(second[0].pss, None, "smaps only every pss-every rounds");
    assert_eq!(third[0].pss, Some(300 * 1024));

    // Facts only: whether each probe answered (the watchdog decides what a silence means).
    for round in [&first, &second, &third] {
        let answers: Vec<ProbeAnswer> = round.iter().map(|s| s.probe).collect();
        assert_eq!(
            answers,
            [
                ProbeAnswer::Answered,
                ProbeAnswer::Missed,
                ProbeAnswer::NotLinked
            ]
        );
    }

    let page = recorder.handle().render();
    for expected in [
        "heapwarden_worker_up{worker=\"2\"} 1",
        "heapwarden_worker_state{worker=\"0\",state=\"ready\"} 1",
        "heapwarden_worker_state{worker=\"0\",state=\"backoff\"} 0",
        "heapwarden_worker_rss_bytes{worker=\"1\"} 819200",
        "heapwarden_worker_cpu_seconds_total{worker=\"2\"} 0.3",
        "heapwarden_worker_pss_bytes{worker=\"0\"} 307200",
        "heapwarden_worker_heap_allocated_bytes{worker=\"0\"} 1000",
        "heapwarden_worker_heap_retained_bytes{worker=\"0\"} 5000",
        "heapwarden_worker_probe_dropped_messages_total{worker=\"0\"} 3",
        "heapwarden_worker_probe_sampling_restarts_total{worker=\"0\"} 2",
        "heapwarden_system_memory_bytes{state=\"used\"} 409600",
        "heapwarden_system_load{period=\"15m\"} 2",
        "heapwarden_agent_rss_bytes 40960",
        "heapwarden_agent_cpu_seconds_total 0.02",
        "heapwarden_sample_duration_seconds_count 3",
    ] {
        assert!(page.contains(expected), "missing {expected} in\n{page}");
    }
}

#[test]
fn slots_without_a_ready_worker_are_down() {
    let mut starting = slot(0, 10, None);
    if let Some(w) = starting.worker.as_mut() {
        w.ready = false;
    }
    starting.state = SlotState::Starting;
    let mut empty = slot(1, 20, None);
    empty.worker = None;
    empty.state = SlotState::Backoff;
    let view = PoolView {
        slots: vec![starting, empty],
        stopping: false,
    };
    let recorder = crate::metric_names::build_recorder().expect("recorder");
    metrics::with_local_recorder(&recorder, || {
        super::record::record_slots(&view, &mut Default::default())
    });
    let page = recorder.handle().render();
    assert!(
        page.contains("heapwarden_worker_up{worker=\"0\"} 0"),
        "{page}"
    );
    assert!(
        page.contains("heapwarden_worker_up{worker=\"1\"} 0"),
        "{page}"
    );
    assert!(
        page.contains("heapwarden_worker_state{worker=\"1\",state=\"backoff\"} 1"),
        "{page}"
    );
}

#[test]
fn a_spent_leak_budget_is_its_own_state_not_ready() {
    let mut spent = slot(0, 10, None);
    spent.budget_exhausted = true;
    let view = PoolView {
        slots: vec![spent, slot(1, 20, None)],
        stopping: false,
    };
    let recorder = crate::metric_names::build_recorder().expect("recorder");
    metrics::with_local_recorder(&recorder, || {
        super::record::record_slots(&view, &mut Default::default())
    });
    let page = recorder.handle().render();
    for expected in [
        "heapwarden_worker_state{worker=\"0\",state=\"budget_exhausted\"} 1",
        "heapwarden_worker_state{worker=\"0\",state=\"ready\"} 0",
        "heapwarden_worker_state{worker=\"1\",state=\"ready\"} 1",
        "heapwarden_worker_state{worker=\"1\",state=\"budget_exhausted\"} 0",
        // It still serves.
        "heapwarden_worker_up{worker=\"0\"} 1",
    ] {
        assert!(page.contains(expected), "{expected} in {page}");
    }
}

#[tokio::test]
async fn a_probe_that_pushes_is_told_once_and_then_not_asked() {
    let fake = FakeProc::new();
    fake.process(1, 0, 10, [1, 1, 0, 0], [1, 1, 0]);
    fake.process(10, 1, 100, [10, 0, 0, 0], [300, 200, 0]);
    let roots = roots_of(&fake);
    // Long enough that a loaded machine still lands each push before its round.
    let interval = Duration::from_millis(400);
    let cfg = SamplingConfig {
        interval,
        pss_every: 1,
        missed_pings: 2,
        ..SamplingConfig::default()
    };
    let (agent_end, worker_end) = UnixStream::pair().expect("socketpair");
    let asked = Arc::new(AtomicUsize::new(0));
    tokio::spawn(pushing_probe(worker_end, asked.clone()));
    let pusher = link_to(agent_end, 100);
    let view = PoolView {
        slots: vec![slot(0, 10, Some(pusher.clone()))],
        stopping: false,
    };
    let mut state = SamplerState::new(cfg, roots, slog::Logger::root(slog::Discard, slog::o!()));
    let recorder = crate::metric_names::build_recorder().expect("recorder");
    let _local = metrics::set_default_local_recorder(&recorder);
    let run = async {
        // Until the hello is read, the link cannot know the probe pushes.
        while !pusher.keep_reporting(Duration::ZERO, Instant::now()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut ticks = tokio::time::interval(interval);
        let mut heaps = Vec::new();
        for _ in 0..6 {
            let tick_at = ticks.tick().await.into_std();
            let round = state.round(&view, tick_at).await;
            assert_eq!(round[0].probe, ProbeAnswer::Answered);
            heaps.push(round[0].heap.map(|h| h.allocated));
        }
        heaps
    };
    let heaps = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("rounds finish");
    assert_eq!(heaps[0], Some(HEAP.allocated), "asked before it was told");
    let pushed = heaps
        .iter()
        .filter(|h| **h == Some(PUSHED_HEAP.allocated))
        .count();
    // A loaded machine may delay a push past its round (that round asks instead).
    assert!(pushed >= 3, "rounds after the first take pushes: {heaps:?}");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        6 - pushed,
        "a round that took a push sent no request"
    );
    assert!(
        !pusher.keep_reporting(interval, Instant::now()),
        "told once per claim and interval"
    );
}

#[tokio::test]
async fn a_fast_round_samples_only_the_lane_and_leaves_the_round_s_bookkeeping() {
    let fake = FakeProc::new();
    fake.process(1, 0, 10, [1, 1, 0, 0], [1, 1, 0]);
    fake.process(10, 1, 100, [10, 0, 0, 0], [300, 200, 0]);
    fake.process(20, 1, 200, [20, 0, 0, 0], [500, 400, 8]);
    let roots = roots_of(&fake);
    let cfg = SamplingConfig {
        interval: Duration::from_millis(400),
        pss_every: 1,
        ..SamplingConfig::default()
    };
    let view = PoolView {
        slots: vec![slot(0, 10, None), slot(1, 20, Some(link(101, true)))],
        stopping: false,
    };
    let mut state = SamplerState::new(cfg, roots, slog::Logger::root(slog::Discard, slog::o!()));
    let recorder = crate::metric_names::build_recorder().expect("recorder");
    let _local = metrics::set_default_local_recorder(&recorder);
    let run = async {
        let full = state.round(&view, Instant::now()).await;
        let fast = state.fast_round(&view, &[101], Instant::now()).await;
        let none = state.fast_round(&view, &[], Instant::now()).await;
        let gone = state.fast_round(&view, &[7], Instant::now()).await;
        (full, fast, none, gone)
    };
    let (full, fast, none, gone) = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("rounds finish");
    assert!(full.iter().all(|s| !s.fast));
    assert_eq!(full[1].pss, Some(500 * 1024), "full rounds read smaps");
    assert_eq!(fast.len(), 1, "only the lane's worker: {fast:?}");
    let s = &fast[0];
    assert!(s.fast);
    assert_eq!((s.slot, s.worker.worker_id), (1, 101));
    assert_eq!(s.rss, 200 * PAGE);
    assert_eq!(s.heap, Some(HEAP), "its probe was asked");
    assert_eq!(s.probe, ProbeAnswer::Answered);
    assert_eq!(s.pss, None, "no smaps in a fast round");
    assert!(none.is_empty() && gone.is_empty());
    let page = recorder.handle().render();
    assert!(
        page.contains("heapwarden_sample_duration_seconds_count 1"),
        "a fast round is not a round: {page}"
    );
}
