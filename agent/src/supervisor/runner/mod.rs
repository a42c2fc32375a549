//! The thin, impure half of the supervisor: one task owns the `Pool`, turns the outside
//! world (child exits, control-channel messages, sd_notify, signals, timers, requests
//! from the admin API and the watchdog) into events, and carries out the actions. Its
//! own tasks report on one channel, as one message enum (`Inbox`).
//! `relay` fans cache invalidations out to the workers; `status` publishes the pool view
//! and reports to systemd; `start` starts a worker; `reload` re-reads the config.

mod relay;
mod reload;
mod start;
mod status;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant, SystemTime};

use heapwarden_protocol::channel::AgentMsg;
use nix::sys::signal::{Signal as NixSignal, killpg};
use nix::unistd::Pid;
use slog::{Logger, error, info, warn};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use super::contain::Containment;
use super::link::LinkEvent;
use super::listen::Listeners;
use super::notify::{NotifiedReady, SystemdNotifier};
use super::state::{Action, Event, ExitStatus, Pool, Signal, Timer, WorkerId};
use super::view::{PoolView, Request};
use crate::config::{Config, ConfigErrors, ConfigSource};
use crate::log::LevelHandle;
use crate::metric_names::{WORKER_FAILED, WORKER_RESTARTS};
use crate::ticks::Grid;
use reload::{ReloadReply, WorkerCommand};
use start::WorkerRuntime;

/// Room in the inbox: a burst of control-link messages from every worker, exits and
/// readiness reports beside them.
const INBOX: usize = 1536;

/// What the supervisor's own tasks tell it, on one channel: a worker exited, its control
/// link spoke or closed, it notified `READY=1`, or a requested reload was read.
#[derive(Debug)]
pub(super) enum Inbox {
    Exited {
        worker: WorkerId,
        status: ExitStatus,
    },
    Link(LinkEvent),
    Ready(WorkerId),
    /// Boxed: a whole config is far larger than the other messages.
    Reloaded {
        loaded: Box<Result<Config, ConfigErrors>>,
        reply: Option<ReloadReply>,
    },
}

impl From<LinkEvent> for Inbox {
    fn from(event: LinkEvent) -> Inbox {
        Inbox::Link(event)
    }
}

impl From<NotifiedReady> for Inbox {
    fn from(NotifiedReady(worker): NotifiedReady) -> Inbox {
        Inbox::Ready(worker)
    }
}

/// Channels the rest of the agent uses to watch and steer the supervisor.
pub struct SupervisorHandles {
    pub view: watch::Receiver<PoolView>,
    pub requests: mpsc::Sender<Request>,
    /// Updated on every turn of the control loop; /healthz checks it is recent.
    pub heartbeat: watch::Receiver<Instant>,
    /// The running config, replaced by every accepted reload.
    pub config: watch::Receiver<Config>,
}

pub struct Supervisor {
    /// The running config, as loaded (restart-only keys as at start).
    config: Config,
    source: ConfigSource,
    log: Logger,
    log_level: LevelHandle,
    /// Parent of every relayed output record: module `worker`, not one of the agent's.
    worker_log: Logger,
    pool: Pool,
    socket: Listeners,
    containment: Containment,
    /// What workers are started with; prepared again by each reload.
    command: WorkerCommand,
    slot_series: fn(Range<usize>),
    grid: Grid,
    runtimes: HashMap<WorkerId, WorkerRuntime>,
    timers: BinaryHeap<Reverse<(Instant, u64, TimerKey)>>,
    timer_seq: u64,
    view_tx: watch::Sender<PoolView>,
    config_tx: watch::Sender<Config>,
    heartbeat_tx: watch::Sender<Instant>,
    requests_rx: mpsc::Receiver<Request>,
    /// What the supervisor's own tasks report (exits, control links, sd_notify, reloads).
    inbox_tx: mpsc::Sender<Inbox>,
    inbox_rx: mpsc::Receiver<Inbox>,
    systemd: SystemdNotifier,
    last_leak: Option<SystemTime>,
}

/// What the supervisor is built from besides the config.
pub struct SupervisorParts {
    pub socket: Listeners,
    pub containment: Containment,
    /// Where the config came from, for reloads.
    pub source: ConfigSource,
    pub log: Logger,
    pub log_level: LevelHandle,
    pub worker_log: Logger,
    /// Zero-initialises the per-slot series of new slots (at start and on scale-up).
    pub slot_series: fn(Range<usize>),
    /// The agent's timer grid: the heartbeat ticks on it, with the sampler's rounds.
    pub grid: Grid,
}

/// `Timer` wrapped so the heap can order it (timers carry no meaningful order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimerKey(Timer);

impl Ord for TimerKey {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl PartialOrd for TimerKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Supervisor {
    pub fn new(
        config: Config,
        parts: SupervisorParts,
    ) -> anyhow::Result<(Supervisor, SupervisorHandles)> {
        let command = WorkerCommand::prepare(
            &config,
            parts.source.file.as_deref(),
            parts.socket.local_addr(),
            &parts.log,
        )?;
        let mut settings = super::settings_from(&config);
        settings.probe_hello_grace = command.hello_grace(&config);
        let (view_tx, view) = watch::channel(PoolView::default());
        let (config_tx, config_rx) = watch::channel(config.clone());
        let (heartbeat_tx, heartbeat) = watch::channel(Instant::now());
        let (requests, requests_rx) = mpsc::channel(64);
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX);
        (parts.slot_series)(0..settings.workers);
        let supervisor = Supervisor {
            pool: Pool::new(settings),
            config,
            source: parts.source,
            log: parts.log,
            log_level: parts.log_level,
            worker_log: parts.worker_log,
            socket: parts.socket,
            containment: parts.containment,
            command,
            slot_series: parts.slot_series,
            grid: parts.grid,
            runtimes: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            view_tx,
            config_tx,
            heartbeat_tx,
            requests_rx,
            inbox_tx,
            inbox_rx,
            systemd: SystemdNotifier::from_env(),
            last_leak: None,
        };
        let handles = SupervisorHandles {
            view,
            requests,
            heartbeat,
            config: config_rx,
        };
        Ok((supervisor, handles))
    }

    /// Runs until every worker is gone after a shutdown signal.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sighup = signal(SignalKind::hangup())?;
        // Adopted orphans (the agent is a subreaper) are reaped or killed on each SIGCHLD
        // and when the pool forgets a worker (`publish`), not on a timer.
        let mut sigchld = signal(SignalKind::child())?;
        let mut tick = self.grid.interval(Duration::from_secs(1));
        let mut signals_seen = 0u32;
        if self.feed(Event::Start) {
            return Ok(());
        }
        loop {
            let next_timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
            let sleep = async {
                match next_timer {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                _ = sigterm.recv() => self.shutdown_signal(&mut signals_seen, "SIGTERM"),
                _ = sigint.recv() => self.shutdown_signal(&mut signals_seen, "SIGINT"),
                _ = sighup.recv() => {
                    info!(self.log, "SIGHUP received: reloading the config.");
                    self.start_reload(None);
                    None
                }
                Some(message) = self.inbox_rx.recv() => match message {
                    Inbox::Reloaded { loaded, reply } => {
                        self.finish_reload(*loaded, reply);
                        None
                    }
                    Inbox::Exited { worker, status } => {
                        self.record_drain(worker, status);
                        Some(Event::Exited { worker, status })
                    }
                    Inbox::Ready(worker) => Some(Event::Ready { worker }),
                    Inbox::Link(link_event) => self.on_link_event(link_event),
                },
                _ = sigchld.recv() => {
                    self.sweep_orphans();
                    None
                }
                Some(request) = self.requests_rx.recv() => match request {
                    Request::Replace { slot, worker, reason } => {
                        Some(Event::Replace { slot, worker, reason })
                    }
                    Request::Reload { reply } => {
                        info!(self.log, "A reload was requested: reloading the config.");
                        self.start_reload(reply);
                        None
                    }
                },
                _ = sleep => self.timers.pop().map(|Reverse((_, _, TimerKey(t)))| Event::Timer(t)),
                _ = tick.tick() => {
                    self.heartbeat();
                    None
                }
            };
            if let Some(event) = event
                && self.feed(event)
            {
                break;
            }
        }
        self.systemd.stopping();
        // Nothing of a worker outlives the agent.
        self.containment.sweep(&HashMap::new(), &self.log);
        info!(self.log, "Every worker has stopped; the agent exits.");
        Ok(())
    }

    /// Reaps adopted processes that exited and kills those whose worker is gone. Run on
    /// the two events that change either: a SIGCHLD (an adopted process exited, or a
    /// process in a worker's tree did and its children were adopted) and a worker leaving
    /// `runtimes`. A process adopted while its worker lives is left until then.
    fn sweep_orphans(&self) {
        let live: HashMap<u32, WorkerId> =
            self.runtimes.iter().map(|(id, rt)| (rt.pid, *id)).collect();
        self.containment.sweep(&live, &self.log);
    }

    fn shutdown_signal(&mut self, seen: &mut u32, name: &str) -> Option<Event> {
        *seen += 1;
        if *seen == 1 {
            info!(self.log, "Shutdown signal received: draining workers."; "signal" => name);
            self.systemd.stopping();
            Some(Event::Shutdown)
        } else {
            warn!(self.log, "Second shutdown signal: killing every worker now."; "signal" => name);
            Some(Event::ForceShutdown)
        }
    }

    /// Feeds one event and everything it leads to; true once the agent should exit.
    fn feed(&mut self, event: Event) -> bool {
        let mut queue = VecDeque::from([event]);
        let mut exit = false;
        while let Some(event) = queue.pop_front() {
            for action in self.pool.handle(event, Instant::now()) {
                match self.execute(action) {
                    Some(Flow::Event(e)) => queue.push_back(e),
                    Some(Flow::Exit) => exit = true,
                    None => {}
                }
            }
        }
        // A scale-down's retired slots take no new connections.
        self.socket.close_slots_from(self.pool.slot_count());
        self.publish();
        exit
    }

    fn execute(&mut self, action: Action) -> Option<Flow> {
        match action {
            Action::Spawn { slot, worker } => Some(Flow::Event(self.spawn(slot, worker))),
            Action::Drain {
                worker,
                pid,
                via_channel,
            } => {
                if let Some(rt) = self.runtimes.get_mut(&worker) {
                    rt.drain_started = Some(Instant::now());
                    rt.drain_requested
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                let deadline_ms = self.config.pool.drain_timeout.as_millis() as u64;
                let sent = via_channel
                    && self
                        .runtimes
                        .get(&worker)
                        .is_some_and(|r| r.link.send(AgentMsg::Drain { deadline_ms }).is_ok());
                if !sent {
                    signal_group(pid, NixSignal::SIGTERM);
                }
                info!(self.log, "Draining a worker."; "worker_id" => worker, "pid" => pid);
                None
            }
            Action::Signal { pid, signal, .. } => {
                let sig = match signal {
                    Signal::Term => NixSignal::SIGTERM,
                    Signal::Kill => NixSignal::SIGKILL,
                };
                signal_group(pid, sig);
                None
            }
            Action::Schedule { at, timer } => {
                self.timer_seq += 1;
                self.timers
                    .push(Reverse((at, self.timer_seq, TimerKey(timer))));
                None
            }
            Action::CountRestart { slot, reason } => {
                metrics::counter!(WORKER_RESTARTS.name,
                    "worker" => slot.to_string(), "reason" => reason.as_str())
                .increment(1);
                if reason == super::RestartReason::Leak {
                    self.last_leak = Some(SystemTime::now());
                }
                info!(self.log, "A worker slot restarted."; "worker" => slot, "reason" => reason.as_str());
                None
            }
            Action::SlotFailed { slot, until } => {
                self.socket.close_slot(slot);
                let retry_in = until.saturating_duration_since(Instant::now());
                error!(self.log, "A worker slot keeps failing; it is paused before the next try.";
                    "worker" => slot, "retry_in_seconds" => retry_in.as_secs());
                metrics::counter!(WORKER_FAILED.name, "worker" => slot.to_string()).increment(1);
                None
            }
            Action::BudgetExhausted { slot } => {
                error!(self.log, "The leak-restart budget of a slot is spent; it keeps running and alerting without restarts.";
                    "worker" => slot, "max_leak_restarts_per_hour" => self.config.watchdog.max_leak_restarts_per_hour);
                None
            }
            Action::ReadyTimedOut { slot, worker, pid } => {
                warn!(self.log, "A worker was not ready within ready-timeout; it is killed.";
                    "worker" => slot, "worker_id" => worker, "pid" => pid,
                    "ready_timeout_seconds" => self.config.pool.ready_timeout.as_secs_f64(),
                    "hint" => "did it listen on the pool's port (PORT) rather than its own?");
                None
            }
            Action::ReplacementDropped {
                slot,
                worker,
                reason,
            } => {
                info!(self.log, "A replacement was dropped: the worker it named no longer serves its slot.";
                    "worker" => slot, "worker_id" => worker, "reason" => reason.as_str());
                None
            }
            Action::Exit => Some(Flow::Exit),
        }
    }
}

enum Flow {
    Event(Event),
    Exit,
}

/// Signals the worker's whole process group (it leads its own group).
fn signal_group(pid: u32, signal: NixSignal) {
    let _ = killpg(Pid::from_raw(pid as i32), signal);
}
