//! The sampler: every `interval` it measures each worker's process tree from procfs
//! (RSS and CPU each round, PSS/USS/swap every `pss-every` rounds), takes probe-linked
//! workers' heap figures from what their probes pushed just before the round (asking
//! those that did not push, over the control channel), and measures the agent, the
//! machine and the agent's cgroup. It publishes a [`WorkerSample`] per worker for the
//! watchdog (facts only: what was measured and whether the probe answered; the watchdog
//! decides what they mean) and records the metrics. Workers the watchdog puts in the
//! fast lane ([`FastLane`]: heading for `max-memory`) are also sampled every
//! `fast-interval` between rounds. One task (`run_sampler`) owns all of that state.
//! Workers' own metrics text is not the sampler's: `admin::exposition` fetches it when a
//! scrape needs it.

mod child_heaps;
mod collect;
pub mod procfs;
mod record;
mod round;
pub mod system;
pub mod tree;

#[cfg(test)]
mod fake_proc;
#[cfg(test)]
pub(crate) mod round_tests;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Instant;

use heapwarden_protocol::HeapStats;
use slog::{Logger, debug, info};
use tokio::sync::{mpsc, watch};

pub use child_heaps::ProfiledChildren;
pub use collect::{
    AgentFigures, HostFigures, HostReaders, Roots, TreeFigures, TreeSmaps, collect_host,
    collect_trees, read_tree,
};

use crate::config::Config;
use crate::supervisor::{PoolView, SlotState, WorkerView};
use crate::ticks::Grid;

/// One worker's figures from one round, for the watchdog. It carries the worker it was
/// taken from, so a decision on it names that worker without asking the pool again.
#[derive(Debug, Clone)]
pub struct WorkerSample {
    pub slot: usize,
    /// The slot's state when the round began (ready, replacing…).
    pub slot_state: SlotState,
    /// The worker, as the pool saw it when the round began: id, pid, readiness, probe,
    /// runtime, control link and forked children.
    pub worker: WorkerView,
    pub at: Instant,
    /// Taken by a fast-lane round between full rounds ([`FastLane`]): the watchdog's
    /// leak rules use it, its probe-health count does not (a fast round gives a probe
    /// only half a `fast-interval` to answer).
    pub fast: bool,
    /// Bytes, summed over the worker's process tree.
    pub rss: u64,
    /// Present on smaps rounds (every `pss-every` intervals).
    pub pss: Option<u64>,
    pub uss: Option<u64>,
    pub swap: Option<u64>,
    pub cpu_seconds: f64,
    /// Processes in the tree (the worker and its descendants).
    pub processes: usize,
    /// From the probe, when the worker links it and answered in time: summed over the
    /// worker and its forked children that report on their own channels.
    pub heap: Option<HeapStats>,
    /// Processes whose figures are in `heap`.
    pub heap_processes: usize,
    /// The forked children whose heaps grew most and are largest: the tree's profiles
    /// are taken there.
    pub heap_children: ProfiledChildren,
    pub runtime_lag_seconds: Option<f64>,
    /// Node workers: `external` and `arrayBuffers` of `process.memoryUsage()`.
    pub external_bytes: Option<u64>,
    pub array_buffers_bytes: Option<u64>,
    /// The worker was writing a heap snapshot (its event loop blocked): the probe was
    /// not asked, and the leak rules skip this sample.
    pub dumping: bool,
    /// Whether the worker's probe answered this round's sample request.
    pub probe: ProbeAnswer,
}

/// The workers (by worker id) the watchdog wants sampled every `fast-interval` as well:
/// the watchdog decides who, the sampler only takes the samples.
pub type FastLane = Vec<u64>;

/// The probe's side of one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeAnswer {
    /// The worker does not link the probe (or has not said hello yet), or was not asked
    /// because it is writing a heap snapshot.
    NotLinked,
    Answered,
    /// Asked, and no answer within half an interval.
    Missed,
}

impl Roots {
    /// The real `/proc` and the agent's cgroup under `cgroup_root` (`/sys/fs/cgroup`).
    pub fn system(cgroup_root: &Path) -> Roots {
        let proc = procfs::ProcFs::system();
        let agent_pid = std::process::id();
        // A hybrid host mounts v2 at `<root>/unified`: no memory controller there, but
        // PSI (`memory.pressure`) still is.
        let cgroup_dir = [cgroup_root.to_path_buf(), cgroup_root.join("unified")]
            .iter()
            .filter_map(|root| system::own_cgroup_dir(proc.root(), root).ok().flatten())
            .find(|dir| dir.join("cgroup.controllers").exists());
        let kernel_children = tree::kernel_lists_children(&proc, agent_pid);
        Roots {
            proc,
            cgroup_dir,
            agent_pid,
            kernel_children,
        }
    }
}

/// Samples until the supervisor drops its end of `pool`.
///
/// `samples` is never awaited: a watchdog that falls behind loses samples (logged at
/// debug), it never slows the sampler down.
/// `settings` carries the running config; a reload's `[sampling]` applies from the next
/// round (a new `interval` restarts the ticker).
/// `lane`: the workers to sample every `fast-interval` too; a fast tick that falls within
/// half a fast interval of a full round is skipped (that round samples them).
/// `grid`: rounds tick on the agent's timer grid, and a late round skips to the next grid
/// time rather than shifting it, because probes that push time their pushes to land just
/// before each round.
pub async fn run_sampler(
    mut settings: watch::Receiver<Config>,
    roots: Roots,
    mut pool: watch::Receiver<PoolView>,
    mut lane: watch::Receiver<FastLane>,
    samples: mpsc::Sender<WorkerSample>,
    grid: Grid,
    log: Logger,
) {
    let cfg = settings.borrow_and_update().sampling.clone();
    info!(log, "The sampler started.";
        "interval_ms" => cfg.interval.as_millis() as u64, "pss_every" => cfg.pss_every,
        "fast_interval_ms" => cfg.fast_interval().as_millis() as u64,
        "kernel_children" => roots.kernel_children,
        "cgroup" => roots.cgroup_dir.as_ref().map(|d| d.display().to_string()));
    let mut state = round::SamplerState::new(cfg.clone(), roots, log.clone());
    let mut ticker = grid.interval(cfg.interval);
    let mut fast_ticker = grid.interval(cfg.fast_interval());
    let mut lane_open = fast_lane_open(&lane.borrow_and_update(), &cfg);
    let mut last_round = Instant::now();
    loop {
        let (tick_at, fast) = tokio::select! {
            tick_at = ticker.tick() => {
                last_round = tick_at.into_std();
                (last_round, false)
            }
            tick_at = fast_ticker.tick(), if lane_open => {
                let tick_at = tick_at.into_std();
                if near_a_round(tick_at, last_round, &state) {
                    continue;
                }
                (tick_at, true)
            }
            changed = pool.changed() => {
                if changed.is_err() { break }
                // A new view alone is no reason to sample; wait for the tick.
                continue;
            }
            Ok(()) = lane.changed() => {
                lane_open = fast_lane_open(&lane.borrow_and_update(), state.config());
                continue;
            }
            Ok(()) = settings.changed() => {
                let new = settings.borrow_and_update().sampling.clone();
                if new.interval != state.interval() {
                    ticker = grid.interval(new.interval);
                }
                if new.fast_interval() != state.fast_interval() {
                    fast_ticker = grid.interval(new.fast_interval());
                }
                lane_open = fast_lane_open(&lane.borrow(), &new);
                if state.set_config(new.clone()) {
                    info!(log, "The sampler uses new settings.";
                        "interval_ms" => new.interval.as_millis() as u64, "pss_every" => new.pss_every,
                        "fast_interval_ms" => new.fast_interval().as_millis() as u64,
                        "missed_pings" => new.missed_pings);
                }
                continue;
            }
        };
        let view = pool.borrow_and_update().clone();
        let taken = if fast {
            let lane = lane.borrow().clone();
            state.fast_round(&view, &lane, tick_at).await
        } else {
            state.round(&view, tick_at).await
        };
        let mut dropped = 0usize;
        for sample in taken {
            if samples.try_send(sample).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            debug!(log, "The watchdog is behind; samples were dropped."; "dropped" => dropped);
        }
    }
    info!(log, "The sampler stopped.");
}

/// Whether a fast tick falls within half a fast interval of the last full round or the
/// next one (that round samples the lane's workers).
fn near_a_round(tick_at: Instant, last_round: Instant, state: &round::SamplerState) -> bool {
    let since = tick_at.saturating_duration_since(last_round);
    let half = state.fast_interval() / 2;
    since < half || since + half > state.interval()
}

/// Whether fast rounds run: someone is in the lane, and `fast-interval` is below
/// `interval` (equal turns the lane off).
fn fast_lane_open(lane: &FastLane, cfg: &crate::config::SamplingConfig) -> bool {
    !lane.is_empty() && cfg.fast_interval() < cfg.interval
}
