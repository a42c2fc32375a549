//! Worker stdout/stderr, captured line by line and re-emitted as agent log records with
//! `worker`, `pid` and `stream`. A line that is itself a JSON object keeps its structure
//! (its `msg` and `level` become the record's, the rest goes under `fields`).
//!
//! Relayed records are marked as the worker's: their `module` is `worker` (never one of
//! the agent's parts) and they carry `stream`; `worker` and `pid` come from the agent,
//! whatever the line says. A line over `MAX_LINE` is cut (`[truncated]` at its end, the
//! dropped byte count in `truncated_bytes`) and counted in
//! `heapwarden_worker_log_lines_truncated_total{worker}`; the pipe is read to its end.

mod lines;

use std::os::fd::OwnedFd;

use slog::{Logger, error, info, warn};
use tokio::net::unix::pipe;

use crate::log::Nested;
use lines::{Line, LineSplitter};

/// Longer lines are cut: a worker printing without newlines must not grow our memory.
pub const MAX_LINE: usize = 64 * 1024;
const MARKER: &str = " [truncated]";

thread_local! {
    /// Every relay on a thread reads through this one buffer into its own splitter, so
    /// an idle worker's pipes hold no read buffer (8 KiB each were most of the heap a
    /// worker cost the agent).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 8 * 1024]);
}

/// Relays the pipe `read_end` until end of file. `log` is the worker-output logger
/// (module `worker`) with the slot and pid in its context.
pub fn capture(read_end: OwnedFd, stream: &'static str, slot: usize, log: Logger) {
    let log = log.new(slog::o!("stream" => stream));
    let truncated = metrics::counter!(crate::metric_names::WORKER_LOG_LINES_TRUNCATED.name, "worker" => slot.to_string());
    tokio::spawn(async move {
        let pipe = match pipe::Receiver::from_owned_fd(read_end) {
            Ok(pipe) => pipe,
            Err(e) => {
                warn!(log, "The worker's output cannot be relayed."; "error" => %crate::log::Causes(&e));
                return;
            }
        };
        let mut splitter = LineSplitter::new(MAX_LINE);
        let mut emit = |line: Line| {
            if line.truncated > 0 {
                truncated.increment(1);
            }
            relay(&log, line);
        };
        while pipe.readable().await.is_ok() {
            // One read per wake-up: a flood of output interleaves with every other task.
            let open = SCRATCH.with_borrow_mut(|scratch| match pipe.try_read(scratch) {
                Ok(0) => false,
                Ok(n) => {
                    splitter.push(&scratch[..n], &mut emit);
                    true
                }
                Err(e) => matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ),
            });
            if !open {
                break;
            }
        }
        if let Some(line) = splitter.finish() {
            emit(line);
        }
    });
}

fn relay(log: &Logger, line: Line) {
    let text = String::from_utf8_lossy(&line.bytes);
    if line.truncated > 0 {
        // Cut JSON is no longer JSON: relayed as text, with the marker and the count.
        warn!(log, "{}{}", text, MARKER; "truncated_bytes" => line.truncated);
        return;
    }
    if text.starts_with('{')
        && let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(&text)
    {
        let msg = match fields.remove("msg") {
            Some(serde_json::Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let level = fields.remove("level");
        fields.remove("ts");
        // The agent's context already says which worker and pid this is.
        fields.remove("worker");
        fields.remove("pid");
        let fields = Nested(serde_json::Value::Object(fields));
        match level.as_ref().and_then(|l| l.as_str()) {
            Some("ERRO" | "ERROR" | "CRIT" | "CRITICAL") => {
                error!(log, "{}", msg; "fields" => fields)
            }
            Some("WARN" | "WARNING") => warn!(log, "{}", msg; "fields" => fields),
            _ => info!(log, "{}", msg; "fields" => fields),
        }
        return;
    }
    info!(log, "{}", text);
}
