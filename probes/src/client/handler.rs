//! The reader thread: decodes agent messages and answers them. A request for the app's
//! metrics text is handed to a metrics thread (started on the first one), so a slow
//! render never delays the answers to heap samples and pings the agent judges the
//! worker's health by; a report interval goes to the push thread ([`super::report`]).

use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use serde_json::json;

use super::report::Reporter;
use super::{Shared, lock, read_hooks};
use crate::channel::{AgentMsg, DumpFormat, DumpKind, FrameDecoder, WorkerMsg};
use crate::diag::warn;
use crate::dump::dump_profile;
use crate::held_fd::HeldFd;
use crate::stats::{HeapStats, ReadHeapStats};

const READ_CHUNK: usize = 64 * 1024;

/// Reads until end-of-stream, an I/O error or a frame error that loses frame boundaries,
/// then closes the channel (which tells the app to drain).
pub(super) fn run_reader(shared: Arc<Shared>, mut socket: HeldFd) {
    let mut decoder = FrameDecoder::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut metrics_thread: Option<SyncSender<u64>> = None;
    let mut reporter: Option<Reporter> = None;
    'read: loop {
        // Parked in poll, not read: see `HeldFd::wait_readable`.
        let n = match socket
            .wait_readable()
            .and_then(|()| socket.read(&mut chunk))
        {
            Ok(0) => {
                if let Err(error) = decoder.finish() {
                    warn(
                        "The agent closed the channel mid-frame.",
                        &[("error", json!(error.to_string()))],
                    );
                }
                break;
            }
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                warn(
                    "Reading from the agent failed.",
                    &[("error", json!(error.to_string()))],
                );
                break;
            }
        };
        decoder.push(&chunk[..n]);
        loop {
            match decoder.next_frame::<AgentMsg>() {
                Ok(Some(msg)) => handle(&shared, msg, &mut metrics_thread, &mut reporter),
                Ok(None) => break,
                Err(error) if error.is_fatal() => {
                    warn(
                        "The agent sent a frame that cannot be delimited; closing the channel.",
                        &[("error", json!(error.to_string()))],
                    );
                    break 'read;
                }
                Err(error) => {
                    warn(
                        "Ignored a malformed frame from the agent.",
                        &[("error", json!(error.to_string()))],
                    );
                }
            }
        }
    }
    socket.shutdown();
    shared.close();
    drop(reporter);
}

pub(super) fn reply(shared: &Shared, msg: WorkerMsg) {
    // Failure is already counted in `dropped`; the agent sees a missing answer.
    let _ = shared.send(msg);
}

/// Queues a metrics render; when one is already queued, answers at once without text
/// (the agent keeps the last text it got).
fn sample_with_metrics(shared: &Arc<Shared>, seq: u64, thread: &mut Option<SyncSender<u64>>) {
    let sender = thread.get_or_insert_with(|| {
        let (tx, rx) = sync_channel::<u64>(1);
        let shared = shared.clone();
        let started = std::thread::Builder::new()
            .name("heapwarden-metrics".into())
            .spawn(move || {
                while let Ok(seq) = rx.recv() {
                    reply(&shared, sample(&shared, seq, true));
                }
            });
        if started.is_err() {
            warn("Could not start the metrics thread.", &[]);
        }
        tx
    });
    match sender.try_send(seq) {
        Ok(()) => {}
        Err(TrySendError::Full(seq) | TrySendError::Disconnected(seq)) => {
            reply(shared, sample(shared, seq, false));
        }
    }
}

fn handle(
    shared: &Arc<Shared>,
    msg: AgentMsg,
    metrics_thread: &mut Option<SyncSender<u64>>,
    reporter: &mut Option<Reporter>,
) {
    match msg {
        AgentMsg::Sample { seq, metrics: true } if read_hooks(shared).metrics.is_some() => {
            sample_with_metrics(shared, seq, metrics_thread);
        }
        AgentMsg::Sample { seq, metrics } => reply(shared, sample(shared, seq, metrics)),
        AgentMsg::Dump {
            seq, path, kind, ..
        } => {
            if kind != DumpKind::Profile {
                let error = Some("this probe writes jemalloc heap profiles only; heap snapshots need the Node probe".to_string());
                reply(
                    shared,
                    WorkerMsg::ProfileWritten {
                        seq,
                        path,
                        error,
                        micros: 0,
                        format: DumpFormat::Jemalloc,
                    },
                );
                return;
            }
            let (error, micros) = match dump_profile(Path::new(&path)) {
                Ok(took) => (None, u64::try_from(took.as_micros()).unwrap_or(u64::MAX)),
                Err(error) => (Some(error.to_string()), 0),
            };
            reply(
                shared,
                WorkerMsg::ProfileWritten {
                    seq,
                    path,
                    error,
                    micros,
                    format: DumpFormat::Jemalloc,
                },
            );
        }
        AgentMsg::Drain { deadline_ms } => {
            shared
                .drain_deadline_ms
                .store(deadline_ms, Ordering::Relaxed);
            shared.drained.send_replace(true);
            let callback = read_hooks(shared).drain.clone();
            if let Some(callback) = callback
                && catch_unwind(AssertUnwindSafe(|| {
                    callback(Duration::from_millis(deadline_ms))
                }))
                .is_err()
            {
                warn("The app's drain callback panicked.", &[]);
            }
        }
        AgentMsg::Invalidate { seq, key, version } => {
            let callback = read_hooks(shared).invalidate.clone();
            if let Some(callback) = callback
                && catch_unwind(AssertUnwindSafe(|| callback(&key, version))).is_err()
            {
                warn(
                    "The app's invalidation callback panicked.",
                    &[("key", json!(key))],
                );
            }
            reply(shared, WorkerMsg::Invalidated { seq });
        }
        AgentMsg::InvalidateDone { seq } => {
            if let Some(waiter) = lock(&shared.pending_invalidations).remove(&seq) {
                let _ = waiter.send(());
            }
        }
        AgentMsg::Ping { seq } => reply(shared, WorkerMsg::Pong { seq }),
        AgentMsg::Report {
            every_ms,
            first_ms,
            at_us,
        } => {
            if reporter.is_none() && every_ms > 0 {
                *reporter = Reporter::start(shared);
            }
            if let Some(reporter) = reporter {
                reporter.set(every_ms, first_ms, at_us);
            }
        }
    }
}

pub(super) fn sample(shared: &Shared, seq: u64, with_metrics: bool) -> WorkerMsg {
    let heap = match HeapStats::read() {
        Ok(heap) => Some(heap),
        Err(error) => {
            warn(
                "Could not read jemalloc heap stats.",
                &[("error", json!(error.to_string()))],
            );
            None
        }
    };
    let (runtime_lag, metrics_source) = {
        let hooks = read_hooks(shared);
        (hooks.runtime_lag.clone(), hooks.metrics.clone())
    };
    let metrics = match metrics_source {
        Some(render) if with_metrics => match catch_unwind(AssertUnwindSafe(|| render())) {
            Ok(text) => Some(text),
            Err(_) => {
                warn("The app's metrics source panicked.", &[]);
                None
            }
        },
        _ => None,
    };
    WorkerMsg::Stats {
        seq,
        heap,
        runtime_lag_seconds: runtime_lag.map(|lag| lag.lag_seconds()),
        dropped: shared.dropped.load(Ordering::Relaxed),
        metrics,
        external_bytes: None,
        array_buffers_bytes: None,
        sampling_restarts: None,
    }
}
