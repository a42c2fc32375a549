//! The watchdog's decisions on whole samples: which figure it watches, and the one
//! replacement request for a worker whose probe went silent.

use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::supervisor::{SlotState, SlotView, WorkerView};

use super::rules::Rule;
use super::*;

fn sample(heap: bool) -> WorkerSample {
    let slot = serving(SlotState::Ready).slots.remove(0);
    WorkerSample {
        fast: false,
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
    watchdog_with(pool, |_| {})
}

fn watchdog_with(
    pool: watch::Receiver<PoolView>,
    edit: impl FnOnce(&mut crate::config::Config),
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
    edit(&mut config);
    // The sender may go: the watchdog keeps the last config it was given.
    let (_, settings) = watch::channel(config);
    let dog = Watchdog::new(settings, pool, requests, store, figures, log);
    (dog, requests_rx, state)
}

/// A sample of the worker `serving(state)` shows.
fn probe_sample(probe: ProbeAnswer, state: SlotState) -> WorkerSample {
    let slot = serving(state).slots.remove(0);
    WorkerSample {
        fast: false,
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

const MIB: u64 = 1024 * 1024;

/// A ready worker's RSS sample `at`, full-round or fast.
fn rss_sample(at: Instant, mib: u64, fast: bool) -> WorkerSample {
    WorkerSample {
        at,
        rss: mib * MIB,
        fast,
        ..probe_sample(ProbeAnswer::NotLinked, SlotState::Ready)
    }
}

#[tokio::test]
async fn a_worker_heading_for_the_limit_is_sampled_fast_until_it_turns_back() {
    let (_pool_tx, pool) = watch::channel(serving(SlotState::Ready));
    let (mut dog, _requests, _dir) = watchdog_with(pool, |c| {
        c.watchdog.watch = Watch::Rss;
        c.watchdog.max_memory = crate::config::types::Toggle::On("200MiB".parse().expect("size"));
    });
    let lane = dog.fast_lane();
    let t0 = Instant::now();
    let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
    let horizon = |dog: &Watchdog| dog.slots[&0].detector.horizon();
    dog.observe(rss_sample(at(0), 100, false));
    assert!(lane.borrow().is_empty(), "one sample shows no rise");
    // 8 MiB/s at 108 MiB: 11.5 s to the limit, within twice the default horizon (6 s: 1.5 s
    // of replacement × 2 + 3 samples of 1 s); before the fit has 5 samples, the rise
    // since the previous sample says so.
    dog.observe(rss_sample(at(1000), 108, false));
    assert_eq!(*lane.borrow(), vec![1], "in the lane");
    assert_eq!(
        horizon(&dog),
        std::time::Duration::from_secs(6),
        "that sample was judged on the full-round horizon"
    );
    // Fast samples at the same rate: the fit's 10.75 s is beyond the fast horizon.
    for (i, mib) in [110, 112, 114].into_iter().enumerate() {
        dog.observe(rss_sample(at(1250 + i as u64 * 250), mib, true));
        assert_eq!(*lane.borrow(), vec![1], "still in the lane");
        assert_eq!(
            horizon(&dog),
            std::time::Duration::from_millis(3750),
            "a worker in the lane is judged on the horizon of its fast samples"
        );
    }
    // It stops climbing: flat fast samples until the prediction no longer says near.
    let mut left = None;
    for i in 1..=40u64 {
        dog.observe(rss_sample(at(1750 + i * 250), 114, true));
        if lane.borrow().is_empty() {
            left = Some(i);
            break;
        }
    }
    let left = left.expect("the worker left the lane once it stopped climbing");
    assert!(
        dog.slots[&0].detector.tripped().is_none(),
        "no trip on a plateau"
    );
    assert!(left < 40, "left after {left} flat samples");
}

#[tokio::test]
async fn fast_samples_a_probe_did_not_answer_are_no_health_evidence() {
    let (_pool_tx, pool) = watch::channel(serving(SlotState::Ready));
    let (mut dog, mut requests, _dir) = watchdog(pool);
    for _ in 0..10 {
        dog.observe(WorkerSample {
            fast: true,
            ..probe_sample(ProbeAnswer::Missed, SlotState::Ready)
        });
    }
    assert!(
        requests.try_recv().is_err(),
        "fast rounds do not judge health"
    );
    for _ in 0..3 {
        dog.observe(probe_sample(ProbeAnswer::Missed, SlotState::Ready));
    }
    assert!(requests.try_recv().is_ok(), "full rounds still do");
}

/// What [`drive`] saw.
struct Driven {
    /// The rule that tripped, when, and the figure then (MiB).
    trip: Option<(Rule, f64, f64)>,
    /// Fast samples taken.
    fast: usize,
}

/// Feeds the watchdog a worker whose RSS is `mib(t)` (t in seconds since it was ready)
/// against `limit` MiB, with only the predicted rule and `max-memory` on, sampled as the
/// sampler would: full rounds every second from `phase_ms`, and every 250 ms between them
/// while the watchdog keeps the worker in the fast lane (`lane`), for `seconds` or until a
/// rule trips.
fn drive(mib: impl Fn(f64) -> f64, limit: u64, phase_ms: u64, lane: bool, seconds: u64) -> Driven {
    let (_pool_tx, pool) = watch::channel(serving(SlotState::Ready));
    let (mut dog, _requests, _dir) = watchdog_with(pool, |c| {
        use crate::config::types::Toggle;
        c.watchdog.watch = Watch::Rss;
        c.watchdog.max_memory = Toggle::On(format!("{limit}MiB").parse().expect("size"));
        c.watchdog.growth = Toggle::Off;
        c.watchdog.trend_min_rate = Toggle::Off;
        if !lane {
            c.sampling.fast_interval = c.sampling.interval;
        }
    });
    let fast_lane = dog.fast_lane();
    let t0 = Instant::now();
    let mut driven = Driven {
        trip: None,
        fast: 0,
    };
    for step in 0..seconds * 4 {
        let ms = phase_ms + step * 250;
        let full = step % 4 == 0;
        if !full && fast_lane.borrow().is_empty() {
            continue;
        }
        driven.fast += usize::from(!full);
        let t = ms as f64 / 1000.0;
        let sample = WorkerSample {
            rss: (mib(t) * MIB as f64) as u64,
            ..rss_sample(t0 + std::time::Duration::from_millis(ms), 0, !full)
        };
        dog.observe(sample);
        if let Some(rule) = dog.slots[&0].detector.tripped() {
            driven.trip = Some((rule, t, mib(t)));
            return driven;
        }
    }
    driven
}

/// A leak of `rate` MiB/s from `start` MiB against 200 MiB: the rule that tripped and
/// the seconds the leak had left to the limit then.
fn leak_until_trip(start: f64, rate: f64, phase_ms: u64, lane: bool) -> (Rule, f64) {
    let driven = drive(|t| start + rate * t, 200, phase_ms, lane, 100);
    let (rule, _, mib) = driven
        .trip
        .unwrap_or_else(|| panic!("no trip from {start} MiB at {rate} MiB/s"));
    (rule, (200.0 - mib) / rate)
}

#[tokio::test]
async fn the_fast_lane_changes_no_verdict_on_a_sawtooth_a_plateau_a_ramp_or_a_spike() {
    // The shapes of `rules_predict_tests.rs` against 512 MiB, now sampled 4 times a second
    // whenever the watchdog asks: faster samples bring no false trip.
    let saw = |period: f64| move |t: f64| 100.0 + 284.0 * (t % period) / period;
    let step = |t: f64| 150.0 + (10.0 * (t - 60.0)).clamp(0.0, 250.0);
    let settle = |t: f64| 450.0 * (1.0 - (-t / 8.0).exp());
    let spike = |t: f64| {
        if (100.0..102.0).contains(&t) {
            505.0
        } else {
            300.0
        }
    };
    let mut laned = 0;
    for phase in [0, 250, 500, 750] {
        let runs = [
            ("sawtooth 10 s", drive(saw(10.0), 512, phase, true, 600)),
            ("sawtooth 20 s", drive(saw(20.0), 512, phase, true, 600)),
            ("sawtooth 45 s", drive(saw(45.0), 512, phase, true, 600)),
            ("load step", drive(step, 512, phase, true, 600)),
            ("settling ramp", drive(settle, 512, phase, true, 600)),
            ("spike", drive(spike, 512, phase, true, 300)),
        ];
        for (shape, driven) in runs {
            assert!(
                driven.trip.is_none(),
                "{shape}, phase {phase} ms: {:?}",
                driven.trip
            );
            laned += usize::from(driven.fast > 0);
        }
    }
    // Not a vacuous pass: the 10 and 20 s sawtooth, the load step and the settling ramp
    // each entered the fast lane at every phase (4 to 180 fast samples each).
    assert!(laned >= 16, "only {laned} runs entered the fast lane");
}

#[tokio::test]
async fn the_fast_lane_trips_a_20_mib_s_leak_with_a_replacement_to_spare_from_any_start() {
    let mut with_lane = Vec::new();
    let mut without = Vec::new();
    for start in (20..=100).step_by(10) {
        for phase in [0, 250, 500, 750] {
            let start = f64::from(start);
            with_lane.push((start, phase, leak_until_trip(start, 20.0, phase, true)));
            without.push((start, phase, leak_until_trip(start, 20.0, phase, false)));
        }
    }
    // The default horizon assumes 1.5 s of replacement (× 2 of margin): every trip leaves
    // more than that, 2 s at worst (ready at the level guard and first sampled 750 ms
    // later, at 115 MiB), where full rounds alone let some cross the limit.
    let least =
        |runs: &[(f64, u64, (Rule, f64))]| runs.iter().map(|r| r.2.1).fold(f64::INFINITY, f64::min);
    for (start, phase, (rule, left)) in &with_lane {
        assert_eq!(*rule, Rule::Predicted, "from {start} MiB, phase {phase} ms");
        assert!(
            *left >= 2.0 - 1e-9,
            "from {start} MiB, phase {phase} ms: {left:.2} s left at the trip"
        );
    }
    assert!(
        least(&without) < 1.5,
        "full rounds alone leave less: {:.2} s at worst",
        least(&without)
    );
    eprintln!(
        "least time left at the trip: {:.2} s with the fast lane, {:.2} s without",
        least(&with_lane),
        least(&without)
    );
}
