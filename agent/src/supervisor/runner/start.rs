//! Starting a worker and owning what it holds in the agent: its private directory (with
//! the notify socket), the notify watcher task, its control link, its output relays and
//! the task that waits for its exit. `WorkerRuntime` is dropped when the pool forgets the
//! worker (it was reaped), and with it every one of those — none outlives the worker.

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use nix::sys::signal::Signal as NixSignal;
use slog::{error, info, o};
use tokio::task::AbortHandle;

use super::super::children::{self, ChildLinks};
use super::super::link::{ControlLink, spawn_link};
use super::super::notify;
use super::super::output::capture;
use super::super::rundir::WorkerDir;
use super::super::spawn::{SpawnSpec, spawn_worker};
use super::super::state::{Event, ExitStatus, WorkerId};
use super::{Inbox, Supervisor, signal_group};
use crate::log::Causes;

pub(super) struct WorkerRuntime {
    pub pid: u32,
    pub link: ControlLink,
    /// The worker's forked children reporting on their own channels.
    pub children: ChildLinks,
    /// From the latest hello on the channel (the claimant's probe).
    pub runtime: Option<heapwarden_protocol::Runtime>,
    pub started_wall: SystemTime,
    /// Set when the worker was asked to drain, for `heapwarden_drain_duration_seconds`.
    pub drain_started: Option<Instant>,
    /// Set with `drain_started`, read by the exit task: a planned stop is logged once, as
    /// "A drained worker has exited.", never as a crash or as "killed by a signal".
    pub drain_requested: Arc<AtomicBool>,
    _resources: WorkerResources,
}

/// Released on drop, in field order: the watcher first (closing the socket), then the
/// directory holding the socket file.
struct WorkerResources {
    _notify_watcher: AbortOnDrop,
    _children_listener: Option<AbortOnDrop>,
    _dir: WorkerDir,
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Supervisor {
    pub(super) fn spawn(&mut self, slot: usize, worker: WorkerId) -> Event {
        let failed = |this: &Self, what: &str, e: std::io::Error| {
            error!(this.log, "A worker could not be started."; "worker" => slot, "step" => what, "error" => %Causes(&e));
            Event::SpawnFailed { worker }
        };
        let dir = match self.containment.create_worker_dir(worker) {
            Ok(d) => d,
            Err(e) => return failed(self, "directory", e),
        };
        let notify_path = dir.notify_socket();
        let notify_socket = match notify::bind(&notify_path) {
            Ok(s) => s,
            Err(e) => return failed(self, "notify socket", e),
        };
        // Without it the worker still runs; its forked children are then measured from
        // procfs only.
        let child_path = dir.child_socket();
        let child_listener = match children::bind(&child_path) {
            Ok(l) => Some(l),
            Err(e) => {
                slog::warn!(self.log, "A worker's socket for its forked children could not be bound; they are measured from procfs only.";
                    "worker" => slot, "error" => %Causes(&e));
                None
            }
        };
        if self.command.identity.is_some()
            && let Err(e) = dir.open_to_worker_user()
        {
            return failed(self, "directory", e);
        }
        let (listen_fd, listen_fd_name) = match self.socket.for_slot(slot) {
            Ok(socket) => socket,
            Err(e) => return failed(self, "listening socket", e),
        };
        let spec = SpawnSpec {
            argv: &self.command.argv,
            env: &self.command.env,
            cwd: self.config.pool.cwd.as_ref(),
            listen_fd,
            listen_fd_name: &listen_fd_name,
            slot,
            worker_id: worker,
            notify_socket: &notify_path,
            child_socket: child_listener.as_ref().map(|_| child_path.as_path()),
            instance: self.containment.instance(),
            identity: self.command.identity.as_ref(),
        };
        let spawned = match spawn_worker(&spec) {
            Ok(s) => s,
            Err(e) => return failed(self, "spawn", e),
        };
        let pid = spawned.pid;
        self.containment.record_group(&dir, pid);
        let log = self.log.new(o!("worker" => slot, "pid" => pid));
        info!(log, "A worker started."; "worker_id" => worker);
        let mut child = spawned.child;
        let output_log = self.worker_log.new(o!("worker" => slot, "pid" => pid));
        // The pipes leave the process handle for the relay's own readiness-driven reads
        // (`into_owned_fd` fails only if the reactor refuses to let them go).
        if let Some(Ok(out)) = child.stdout.take().map(|out| out.into_owned_fd()) {
            capture(out, "stdout", slot, output_log.clone());
        }
        if let Some(Ok(err)) = child.stderr.take().map(|err| err.into_owned_fd()) {
            capture(err, "stderr", slot, output_log);
        }
        let hello_grace = self
            .command
            .attached
            .zip(self.command.hello_grace(&self.config));
        let link = spawn_link(
            spawned.control,
            worker,
            self.inbox_tx.clone(),
            hello_grace,
            log.clone(),
        );
        let watcher = notify::watch_worker(
            notify_socket,
            worker,
            pid,
            self.command.identity.as_ref().map(|who| who.uid),
            self.inbox_tx.clone(),
            log.clone(),
        );
        let (children_task, children) = match child_listener {
            Some(listener) => {
                let (task, links) = children::spawn_listener(listener, pid, log.clone());
                (Some(AbortOnDrop(task)), links)
            }
            None => (
                None,
                tokio::sync::watch::channel(std::sync::Arc::from([])).1,
            ),
        };
        let exits = self.inbox_tx.clone();
        let drain_requested = Arc::new(AtomicBool::new(false));
        let drained = drain_requested.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => match s.signal() {
                    Some(sig) => ExitStatus::Signal(sig),
                    None => ExitStatus::Code(s.code().unwrap_or(-1)),
                },
                Err(_) => ExitStatus::Code(-1),
            };
            drop(child);
            // Whatever the worker left in its process group goes with it.
            signal_group(pid, NixSignal::SIGKILL);
            // A drained worker's exit is the supervisor's to log (`record_drain`).
            match status {
                _ if drained.load(Ordering::Acquire) => {}
                ExitStatus::Code(code) => info!(log, "A worker exited."; "exit_code" => code),
                ExitStatus::Signal(sig) => {
                    info!(log, "A worker was killed by a signal."; "signal" => sig)
                }
            }
            // The task is allocated for the worker's whole life at the size of its largest
            // state: the `Child` is gone before the last one, which takes a slot first and
            // builds the message after (a `send` future would carry an `Inbox` too).
            if let Ok(permit) = exits.reserve().await {
                permit.send(Inbox::Exited { worker, status });
            }
        });
        self.runtimes.insert(
            worker,
            WorkerRuntime {
                pid,
                link,
                children,
                runtime: None,
                started_wall: SystemTime::now(),
                drain_started: None,
                drain_requested,
                _resources: WorkerResources {
                    _notify_watcher: AbortOnDrop(watcher),
                    _children_listener: children_task,
                    _dir: dir,
                },
            },
        );
        Event::Spawned { worker, pid }
    }
}
