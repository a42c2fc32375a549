//! The thin, impure half of the supervisor: one task owns the `Pool`, turns the outside
//! world (child exits, control-channel messages, sd_notify, signals, timers, requests
//! from the admin API and the watchdog) into events, and carries out the actions.
//! `relay` fans cache invalidations out to the workers; `status` publishes the pool view
//! and reports to systemd.

mod relay;
mod status;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use heapwarden_probes::channel::AgentMsg;
use nix::sys::signal::{Signal as NixSignal, killpg};
use nix::unistd::Pid;
use slog::{Logger, error, info, o, warn};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use super::link::{ControlLink, LinkEvent, spawn_link};
use super::listen::ServiceSocket;
use super::notify::{SystemdNotifier, watch_worker};
use super::output::capture;
use super::spawn::{SpawnSpec, spawn_worker};
use super::state::{Action, Event, ExitStatus, Pool, Signal, Timer, WorkerId};
use super::view::{PoolView, Request};
use crate::config::Config;

/// Channels the rest of the agent uses to watch and steer the supervisor.
pub struct SupervisorHandles {
    pub view: watch::Receiver<PoolView>,
    pub requests: mpsc::Sender<Request>,
    /// Updated on every turn of the control loop; /healthz checks it is recent.
    pub heartbeat: watch::Receiver<Instant>,
}

struct WorkerRuntime {
    pid: u32,
    link: ControlLink,
    started_wall: SystemTime,
    /// Set when the worker was asked to drain, for `heapwarden_drain_duration_seconds`.
    drain_started: Option<Instant>,
}

pub struct Supervisor {
    config: Config,
    log: Logger,
    pool: Pool,
    socket: ServiceSocket,
    trampoline: PathBuf,
    argv: Vec<OsString>,
    runtimes: HashMap<WorkerId, WorkerRuntime>,
    timers: BinaryHeap<Reverse<(Instant, u64, TimerKey)>>,
    timer_seq: u64,
    view_tx: watch::Sender<PoolView>,
    heartbeat_tx: watch::Sender<Instant>,
    requests_rx: mpsc::Receiver<Request>,
    exits_tx: mpsc::Sender<(WorkerId, ExitStatus)>,
    exits_rx: mpsc::Receiver<(WorkerId, ExitStatus)>,
    links_tx: mpsc::Sender<LinkEvent>,
    links_rx: mpsc::Receiver<LinkEvent>,
    ready_tx: mpsc::Sender<u64>,
    ready_rx: mpsc::Receiver<u64>,
    systemd: SystemdNotifier,
    last_leak: Option<SystemTime>,
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
        mut config: Config,
        worker_env: Vec<(String, String)>,
        socket: ServiceSocket,
        log: Logger,
    ) -> anyhow::Result<(Supervisor, SupervisorHandles)> {
        let trampoline = super::program::own_exe()?;
        let argv: Vec<OsString> = super::program::worker_argv(&config, &trampoline)?;
        // The pool's own env wins over what the agent passes on.
        for (key, value) in worker_env {
            config.pool.env.entry(key).or_insert(value);
        }
        let settings = super::settings_from(&config);
        let (view_tx, view) = watch::channel(PoolView::default());
        let (heartbeat_tx, heartbeat) = watch::channel(Instant::now());
        let (requests, requests_rx) = mpsc::channel(64);
        let (exits_tx, exits_rx) = mpsc::channel(256);
        let (links_tx, links_rx) = mpsc::channel(1024);
        let (ready_tx, ready_rx) = mpsc::channel(256);
        let supervisor = Supervisor {
            pool: Pool::new(settings),
            config,
            log,
            socket,
            trampoline,
            argv,
            runtimes: HashMap::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            view_tx,
            heartbeat_tx,
            requests_rx,
            exits_tx,
            exits_rx,
            links_tx,
            links_rx,
            ready_tx,
            ready_rx,
            systemd: SystemdNotifier::from_env(),
            last_leak: None,
        };
        let handles = SupervisorHandles {
            view,
            requests,
            heartbeat,
        };
        Ok((supervisor, handles))
    }

    /// Runs until every worker is gone after a shutdown signal.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
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
                    info!(self.log, "SIGHUP received: replacing every worker, one slot at a time.");
                    Some(Event::Reload)
                }
                Some((worker, status)) = self.exits_rx.recv() => {
                    self.record_drain(worker);
                    Some(Event::Exited { worker, status })
                }
                Some(worker) = self.ready_rx.recv() => Some(Event::Ready { worker }),
                Some(link_event) = self.links_rx.recv() => self.on_link_event(link_event),
                Some(request) = self.requests_rx.recv() => Some(match request {
                    Request::Replace { slot, reason } => Event::Replace { slot, reason },
                    Request::Reload => Event::Reload,
                }),
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
        info!(self.log, "Every worker has stopped; the agent exits.");
        Ok(())
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
                metrics::counter!("heapwarden_worker_restarts_total",
                    "worker" => slot.to_string(), "reason" => reason.as_str())
                .increment(1);
                if reason == super::RestartReason::Leak {
                    self.last_leak = Some(SystemTime::now());
                }
                info!(self.log, "A worker slot restarted."; "worker" => slot, "reason" => reason.as_str());
                None
            }
            Action::SlotFailed { slot, until } => {
                let retry_in = until.saturating_duration_since(Instant::now());
                error!(self.log, "A worker slot keeps failing; it is paused before the next try.";
                    "worker" => slot, "retry_in_seconds" => retry_in.as_secs());
                metrics::counter!("heapwarden_worker_failed_total", "worker" => slot.to_string())
                    .increment(1);
                None
            }
            Action::BudgetExhausted { slot } => {
                error!(self.log, "The leak-restart budget of a slot is spent; it keeps running and alerting without restarts.";
                    "worker" => slot, "max_leak_restarts_per_hour" => self.config.watchdog.max_leak_restarts_per_hour);
                None
            }
            Action::Exit => Some(Flow::Exit),
        }
    }

    fn spawn(&mut self, slot: usize, worker: WorkerId) -> Event {
        let spec = SpawnSpec {
            trampoline: &self.trampoline,
            argv: &self.argv,
            env: &self.config.pool.env,
            cwd: self.config.pool.cwd.as_ref(),
            listen_fd: self.socket.fd.as_raw_fd(),
            listen_fd_name: &self.socket.name,
            slot,
            worker_id: worker,
        };
        let spawned = match spawn_worker(&spec) {
            Ok(s) => s,
            Err(e) => {
                error!(self.log, "A worker could not be started."; "worker" => slot, "error" => %e);
                return Event::SpawnFailed { worker };
            }
        };
        let pid = spawned.pid;
        let log = self.log.new(o!("worker" => slot, "pid" => pid));
        info!(log, "A worker started."; "worker_id" => worker);
        let mut child = spawned.child;
        if let Some(out) = child.stdout.take() {
            capture(out, "stdout", log.clone());
        }
        if let Some(err) = child.stderr.take() {
            capture(err, "stderr", log.clone());
        }
        let link = spawn_link(spawned.control, worker, self.links_tx.clone(), log.clone());
        watch_worker(spawned.notify, worker, self.ready_tx.clone(), log.clone());
        let exits = self.exits_tx.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => match s.signal() {
                    Some(sig) => ExitStatus::Signal(sig),
                    None => ExitStatus::Code(s.code().unwrap_or(-1)),
                },
                Err(_) => ExitStatus::Code(-1),
            };
            // Whatever the worker left in its process group goes with it.
            signal_group(pid, NixSignal::SIGKILL);
            match status {
                ExitStatus::Code(code) => info!(log, "A worker exited."; "exit_code" => code),
                ExitStatus::Signal(sig) => {
                    info!(log, "A worker was killed by a signal."; "signal" => sig)
                }
            }
            let _ = exits.send((worker, status)).await;
        });
        self.runtimes.insert(
            worker,
            WorkerRuntime {
                pid,
                link,
                started_wall: SystemTime::now(),
                drain_started: None,
            },
        );
        Event::Spawned { worker, pid }
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
