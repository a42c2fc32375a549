//! `Probe`: the worker's end of the control channel.
//!
//! The channel runs on std threads of its own (one reads and answers the agent, one
//! writes, and one pushes the heap figures once the agent sets an interval), never on the
//! app's async runtime: nothing in the worker's hot path waits on
//! the agent. App threads hand messages over through a bounded queue with `try_send`;
//! when the agent stops reading, messages are dropped and counted instead of blocking.

mod handler;
mod report;

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{oneshot, watch};

use crate::channel::{WorkerMsg, encode};
use crate::diag::warn;
use crate::error::ProbeError;
use crate::held_fd::HeldFd;
use crate::liveness::RuntimeLag;
use heapwarden_protocol::activation::adopt_inherited_socket;

pub use heapwarden_protocol::{
    CHILD_SOCKET_ENV, CONTROL_FD_ENV, WORKER_PID_ENV, worker_pid_matches,
};
/// How long [`Probe::invalidate_everywhere`] waits for every other worker's ack.
pub const INVALIDATE_TIMEOUT: Duration = Duration::from_secs(2);
pub use heapwarden_protocol::RUST_PROBE_MARK;
/// Messages waiting for the writer thread; beyond this they are dropped and counted.
const SEND_QUEUE: usize = 256;
const NO_DEADLINE: u64 = u64::MAX;

type MetricsSource = dyn Fn() -> String + Send + Sync;
type InvalidateCallback = dyn Fn(&str, i64) + Send + Sync;
type DrainCallback = dyn Fn(Duration) + Send + Sync;

/// Handle to the control channel. Cheap to clone; all clones share one channel.
#[derive(Clone)]
pub struct Probe {
    shared: Arc<Shared>,
}

/// What the app registered, read by the reader thread when the agent asks.
#[derive(Default)]
struct Hooks {
    metrics: Option<Arc<MetricsSource>>,
    invalidate: Option<Arc<InvalidateCallback>>,
    drain: Option<Arc<DrainCallback>>,
    runtime_lag: Option<RuntimeLag>,
}

struct Shared {
    outbox: SyncSender<WorkerMsg>,
    dropped: Arc<AtomicU64>,
    next_seq: AtomicU64,
    closed: AtomicBool,
    drained: watch::Sender<bool>,
    drain_deadline_ms: AtomicU64,
    hooks: RwLock<Hooks>,
    /// `invalidate_everywhere` calls waiting for the agent's `InvalidateDone`, by seq.
    pending_invalidations: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

impl Shared {
    fn send(&self, msg: WorkerMsg) -> Result<(), ProbeError> {
        match self.outbox.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Err(ProbeError::QueueFull)
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Err(ProbeError::ChannelClosed)
            }
        }
    }

    /// The agent is gone: the app should drain, and pending invalidations fail.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.drained.send_replace(true);
        lock(&self.pending_invalidations).clear();
    }
}

/// A poisoned lock only means an app callback panicked while it was held elsewhere; the
/// data (hooks, pending acks) stays consistent, so the probe keeps going.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Probe {
    /// The probe for this worker when it runs under heapwarden (`HEAPWARDEN_CONTROL_FD`
    /// set, and [`WORKER_PID_ENV`] unset or naming this process), else `None`. Takes
    /// ownership of the descriptor; a second call returns `None`.
    pub fn from_env() -> Option<Probe> {
        let value = std::env::var(CONTROL_FD_ENV).ok()?;
        if worker_pid_matches() == Some(false) {
            // A descendant of the worker: the channel is the worker's, not ours.
            return None;
        }
        let adopted = adopt_inherited_socket(&value)
            .and_then(|fd| Probe::from_fd(fd).map_err(|e| e.to_string()));
        match adopted {
            Ok(probe) => Some(probe),
            Err(reason) => {
                let error = ProbeError::InheritedFd {
                    var: CONTROL_FD_ENV,
                    value,
                    reason,
                };
                warn(
                    "Running without the heapwarden probe: the control socket is unusable.",
                    &[("error", json!(error.to_string()))],
                );
                None
            }
        }
    }

    /// Runs the channel over an already-owned connected stream socket and sends `Hello`.
    pub fn from_fd(fd: OwnedFd) -> Result<Probe, ProbeError> {
        Probe::from_fd_as(fd, crate::channel::Runtime::Rust)
    }

    /// [`from_fd`](Self::from_fd) for another kind of host: the native preload library
    /// says `runtime: native` in its hello.
    pub fn from_fd_as(fd: OwnedFd, runtime: crate::channel::Runtime) -> Result<Probe, ProbeError> {
        // Both copies sit above the floor and are re-checked before each use
        // (`held_fd`): the program's own descriptors are never written, shut or closed.
        let reader = HeldFd::adopt(fd).map_err(|source| ProbeError::Io {
            doing: "moving the control socket above the program's descriptors",
            source,
        })?;
        let writer = reader.try_clone().map_err(|source| ProbeError::Io {
            doing: "duplicating the control socket for the writer thread",
            source,
        })?;
        let (outbox, queue) = sync_channel(SEND_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            outbox,
            dropped: dropped.clone(),
            next_seq: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            drained: watch::Sender::new(false),
            drain_deadline_ms: AtomicU64::new(NO_DEADLINE),
            hooks: RwLock::new(Hooks::default()),
            pending_invalidations: Mutex::new(HashMap::new()),
        });
        // The queue is empty, so Hello is always first on the wire.
        shared.send(WorkerMsg::Hello {
            pid: std::process::id(),
            probe_version: env!("CARGO_PKG_VERSION").to_string(),
            runtime,
            push: true,
        })?;
        let spawn_error = |source| ProbeError::Io {
            doing: "starting a probe thread",
            source,
        };
        std::thread::Builder::new()
            .name(RUST_PROBE_MARK.into())
            .spawn(move || run_writer(queue, writer, dropped))
            .map_err(spawn_error)?;
        let for_reader = shared.clone();
        std::thread::Builder::new()
            .name("heapwarden-probe-rx".into())
            .spawn(move || handler::run_reader(for_reader, reader))
            .map_err(spawn_error)?;
        Ok(Probe { shared })
    }

    /// Tells the agent the app is listening and can take traffic.
    pub fn ready(&self) {
        if let Err(error) = self.shared.send(WorkerMsg::Ready) {
            // An app that calls this in a loop while the agent is stuck must not flood
            // its own stderr: the 1st, 2nd, 4th, 8th… drop is logged, all are counted.
            let dropped = self.dropped();
            if dropped.is_power_of_two() {
                warn(
                    "Could not tell the agent the worker is ready.",
                    &[
                        ("error", json!(error.to_string())),
                        ("dropped", json!(dropped)),
                    ],
                );
            }
        }
    }

    /// Resolves once the agent asked this worker to drain, or the channel closed (the
    /// agent is gone). The app then stops accepting and finishes in-flight work.
    pub fn drained(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut drained = self.shared.drained.subscribe();
        async move {
            // An error means the probe itself is gone, which also means: stop.
            let _ = drained.wait_for(|done| *done).await;
        }
    }

    /// Non-async form of [`drained`](Self::drained), for apps without a runtime.
    pub fn is_drained(&self) -> bool {
        *self.shared.drained.borrow()
    }

    /// The deadline the agent gave with `Drain`, if one arrived.
    pub fn drain_deadline(&self) -> Option<Duration> {
        match self.shared.drain_deadline_ms.load(Ordering::Relaxed) {
            NO_DEADLINE => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The app's metrics in Prometheus text format, rendered when the agent samples.
    pub fn set_metrics_source(&self, source: impl Fn() -> String + Send + Sync + 'static) {
        write_hooks(&self.shared).metrics = Some(Arc::new(source));
    }

    /// Called (on the probe thread) for each invalidation another worker announced.
    pub fn on_invalidate(&self, callback: impl Fn(&str, i64) + Send + Sync + 'static) {
        write_hooks(&self.shared).invalidate = Some(Arc::new(callback));
    }

    /// Called (on the probe thread) when the agent asks this worker to drain, with the
    /// deadline it gave; [`drained`](Self::drained) resolves either way. The native
    /// preload library uses it to turn `Drain` into a SIGTERM for programs that know
    /// nothing of the channel.
    pub fn on_drain(&self, callback: impl Fn(Duration) + Send + Sync + 'static) {
        write_hooks(&self.shared).drain = Some(Arc::new(callback));
    }

    /// Reports this monitor's lag in every `Stats` reply.
    pub fn set_runtime_lag(&self, lag: RuntimeLag) {
        write_hooks(&self.shared).runtime_lag = Some(lag);
    }

    /// Messages dropped because the agent was not reading (or was gone).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Asks the agent to run `key`'s invalidation on every other worker; resolves once
    /// they all acknowledged, or fails after [`INVALIDATE_TIMEOUT`] or when the channel
    /// closes. Awaiting needs a tokio runtime with the time driver.
    pub fn invalidate_everywhere(
        &self,
        key: &str,
        version: i64,
    ) -> impl Future<Output = Result<(), ProbeError>> + Send + 'static {
        let shared = self.shared.clone();
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        let key = key.to_owned();
        let (done_tx, done_rx) = oneshot::channel();
        lock(&shared.pending_invalidations).insert(seq, done_tx);
        // Checked after registering, so a close racing with us either clears our entry
        // or is seen here.
        let sent = if shared.closed.load(Ordering::SeqCst) {
            Err(ProbeError::ChannelClosed)
        } else {
            shared.send(WorkerMsg::Invalidate {
                seq,
                key: key.clone(),
                version,
            })
        };
        async move {
            if let Err(error) = sent {
                lock(&shared.pending_invalidations).remove(&seq);
                return Err(error);
            }
            match tokio::time::timeout(INVALIDATE_TIMEOUT, done_rx).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(ProbeError::ChannelClosed),
                Err(_) => {
                    lock(&shared.pending_invalidations).remove(&seq);
                    Err(ProbeError::InvalidateTimeout { seq, key })
                }
            }
        }
    }
}

fn write_hooks(shared: &Shared) -> std::sync::RwLockWriteGuard<'_, Hooks> {
    shared
        .hooks
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read_hooks(shared: &Shared) -> std::sync::RwLockReadGuard<'_, Hooks> {
    shared
        .hooks
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes queued messages until every sender is gone or the socket fails.
fn run_writer(queue: Receiver<WorkerMsg>, mut socket: HeldFd, dropped: Arc<AtomicU64>) {
    for msg in queue {
        let frame = match encode(&msg) {
            Ok(frame) => frame,
            Err(error) => {
                dropped.fetch_add(1, Ordering::Relaxed);
                warn(
                    "Dropped a message that cannot be framed.",
                    &[("error", json!(error.to_string()))],
                );
                continue;
            }
        };
        if let Err(error) = socket.write_all(&frame) {
            warn(
                "Writing to the agent failed; closing the control channel.",
                &[("error", json!(error.to_string()))],
            );
            // Wakes the reader thread with end-of-stream so it closes the channel (a
            // number that is no longer ours is left alone).
            socket.shutdown();
            return;
        }
    }
}
