//! The watchdog's decisions on whole samples: which figure it watches, and the one
//! replacement request for a worker whose probe went silent.

use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::supervisor::{SlotState, SlotView, WorkerView};

use super::*;

fn sample(heap: bool) -> WorkerSample {
    let slot = serving(SlotState::Ready).slots.remove(0);
    WorkerSample {
        slot: 0,
        slot_state: slot.state,
        worker: slot.worker.expect("a worker"),
        at: std::time::Instant::now(),
        rss: 300,
        pss: None,
        uss: None,
        swap: None,
        cpu_seconds: 0.0,
        processes: 1,
        heap: heap.then_some(heapwarden_protocol::HeapStats {
            allocated: 100,
            active: 120,
            resident: Some(150),
            mapped: Some(200),
            retained: Some(0),
            metadata: Some(10),
        }),
        heap_processes: usize::from(heap),
        heap_children: Default::default(),
        runtime_lag_seconds: None,
        external_bytes: Some(40),
        array_buffers_bytes: Some(20),
        dumping: false,
        probe: ProbeAnswer::NotLinked,
    }
}

#[test]
fn auto_watches_the_heap_of_probe_linked_workers_even_after_a_missed_reply() {
    let figure = Figure::pick(Watch::Auto, true, Some(Runtime::Rust));
    assert_eq!(figure, Figure::Heap);
    assert_eq!(figure.read(&sample(true)), Some(100));
    // A late reply skips this sample; it does not switch the figure.
    assert_eq!(figure.read(&sample(false)), None);
}

#[test]
fn auto_watches_pss_of_plain_workers_and_explicit_choices_win() {
    assert_eq!(Figure::pick(Watch::Auto, false, None), Figure::Pss);
    assert_eq!(Figure::pick(Watch::Rss, true, None), Figure::Rss);
    assert_eq!(Figure::Rss.read(&sample(false)), Some(300));
}

#[test]
fn node_workers_are_watched_on_heap_used_plus_external() {
    let node = Some(Runtime::Node);
    assert_eq!(Figure::pick(Watch::Auto, true, node), Figure::JsHeld);
    assert_eq!(Figure::pick(Watch::Heap, true, node), Figure::JsHeld);
    assert_eq!(Figure::pick(Watch::Rss, true, node), Figure::Rss);
    // heapUsed 100 + external 40: a Buffer leak moves the watched figure.
    assert_eq!(Figure::JsHeld.read(&sample(true)), Some(140));
    assert_eq!(Figure::JsHeld.read(&sample(false)), None);
}

fn serving(state: SlotState) -> PoolView {
    PoolView {
        slots: vec![SlotView {
            slot: 0,
            state,
            worker: Some(WorkerView {
                worker_id: 1,
                pid: 1,
                started_at: Instant::now(),
                ready_at: None,
                started_wall: SystemTime::now(),
                ready: state == SlotState::Ready,
                probe: true,
                runtime: Some(Runtime::Rust),
                link: None,
                children: None,
            }),
            restarts: 0,
            budget_exhausted: false,
        }],
        stopping: false,
    }
}

fn watchdog(
    pool: watch::Receiver<PoolView>,
) -> (Watchdog, mpsc::Receiver<Request>, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("temp dir");
    let store =
        crate::profiles::ProfileStore::open(state.path(), Default::default()).expect("store");
    let (store, _thread) = ProfileStoreHandle::spawn(store);
    let (requests, requests_rx) = mpsc::channel(4);
    let (figures, _) = watch::channel(Default::default());
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let mut config = crate::config::Config::default();
    config.sampling.missed_pings = 3;
    // The sender may go: the watchdog keeps the last config it was given.
    let (_, settings) = watch::channel(config);
    let dog = Watchdog::new(settings, pool, requests, store, figures, log);
    (dog, requests_rx, state)
}

/// A sample of the worker `serving(state)` shows.
fn probe_sample(probe: ProbeAnswer, state: SlotState) -> WorkerSample {
    let slot = serving(state).slots.remove(0);
    WorkerSample {
        probe,
        slot_state: slot.state,
        worker: slot.worker.expect("a worker"),
        ..sample(false)
    }
}

#[tokio::test]
async fn a_silent_probe_is_replaced_once_after_missed_pings_in_a_row() {
    let (_pool_tx, pool) = watch::channel(serving(SlotState::Ready));
    let (mut dog, mut requests, _dir) = watchdog(pool);
    let ready = |probe| probe_sample(probe, SlotState::Ready);
    dog.observe(ready(ProbeAnswer::Missed));
    dog.observe(ready(ProbeAnswer::Answered));
    dog.observe(ready(ProbeAnswer::Missed));
    dog.observe(ready(ProbeAnswer::Missed));
    assert!(requests.try_recv().is_err(), "an answer resets the count");
    dog.observe(ready(ProbeAnswer::Missed));
    assert_eq!(
        requests.try_recv().ok(),
        Some(Request::Replace {
            slot: 0,
            worker: 1,
            reason: RestartReason::Unhealthy
        })
    );
    dog.observe(ready(ProbeAnswer::Missed));
    assert!(requests.try_recv().is_err(), "asked once per worker");
}

#[tokio::test]
async fn plain_and_starting_workers_are_never_replaced_as_unhealthy() {
    let (_pool_tx, pool) = watch::channel(serving(SlotState::Starting));
    let (mut dog, mut requests, _dir) = watchdog(pool);
    for _ in 0..5 {
        // The sample says the slot was starting when it was taken.
        dog.observe(probe_sample(ProbeAnswer::Missed, SlotState::Starting));
        dog.observe(probe_sample(ProbeAnswer::NotLinked, SlotState::Starting));
    }
    assert!(
        requests.try_recv().is_err(),
        "the ready timeout covers a starting worker"
    );
    for _ in 0..5 {
        dog.observe(probe_sample(ProbeAnswer::NotLinked, SlotState::Ready));
    }
    assert!(requests.try_recv().is_err(), "no probe, no silence");
}
