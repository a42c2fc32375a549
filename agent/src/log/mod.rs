//! Structured logging: slog + slog-json, one JSON object per line on stdout, written
//! from a slog-async thread. Sensitive keys are redacted before serialisation
//! (`redact.rs`), and `LogGuard` flushes every queued record at shutdown. The level is a
//! `LevelHandle` a reload can change while the agent runs. Under systemd each line
//! carries its journald priority (`journal.rs`). Errors are logged with their causes, each
//! once (`Causes`, from `heapwarden-protocol`, which the demo's logs use too).

mod journal;
mod redact;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use slog::{Drain, Level, Logger, o};

pub use heapwarden_protocol::{Causes, Nested, causes};
pub use redact::Redact;

use crate::config::{LogConfig, LogLevel};

/// Records queued for the writer thread before new ones are dropped (and the drop
/// counted in a record of its own). The queue's slots (104 bytes each) are all written
/// when it is made, so each is resident for the agent's life: 8192 of them were 0.8 MiB
/// of an 8-worker agent's ~2.5 MiB of anonymous memory. 1024 hold a 10 ms stall of the
/// writer at the relay's ceiling (~90k worker lines a second, a full core at ~11 µs each).
const LOG_QUEUE: usize = 1024;

/// Keeps the async drain alive; dropping it waits until every record is written.
pub struct LogGuard {
    _async_guard: slog_async::AsyncGuard,
    level: LevelHandle,
}

impl LogGuard {
    /// The handle that changes the level of the logger this guard belongs to.
    pub fn level(&self) -> LevelHandle {
        self.level.clone()
    }
}

/// The most verbose level still written; shared by every clone.
#[derive(Debug, Clone)]
pub struct LevelHandle(Arc<AtomicUsize>);

impl LevelHandle {
    fn new(level: LogLevel) -> LevelHandle {
        LevelHandle(Arc::new(AtomicUsize::new(slog_level(level).as_usize())))
    }

    pub fn set(&self, level: LogLevel) {
        self.0
            .store(slog_level(level).as_usize(), Ordering::Relaxed);
    }

    fn allows(&self, level: Level) -> bool {
        level.as_usize() <= self.0.load(Ordering::Relaxed)
    }
}

/// Drops records above the handle's level before they are queued.
struct LevelFilter<D> {
    drain: D,
    level: LevelHandle,
}

impl<D: Drain> Drain for LevelFilter<D> {
    type Ok = Option<D::Ok>;
    type Err = D::Err;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<Self::Ok, Self::Err> {
        if self.level.allows(record.level()) {
            self.drain.log(record, values).map(Some)
        } else {
            Ok(None)
        }
    }

    fn is_enabled(&self, level: Level) -> bool {
        self.level.allows(level) && self.drain.is_enabled(level)
    }
}

/// A logger writing JSON lines to stdout, each prefixed with its journald priority
/// when stdout is the journal stream.
pub fn init(config: &LogConfig) -> (Logger, LogGuard) {
    let stream = std::env::var("JOURNAL_STREAM").ok();
    let journal = journal::is_journal_stream(stream.as_deref(), std::io::stdout());
    build_with(config, std::io::stdout(), journal)
}

/// A logger writing JSON lines to `out` (stdout in production, a buffer in tests).
pub fn build<W: Write + Send + 'static>(config: &LogConfig, out: W) -> (Logger, LogGuard) {
    build_with(config, out, false)
}

/// [`build`], with the `<N>` priority prefix on every line when `journal`.
fn build_with<W: Write + Send + 'static>(
    config: &LogConfig,
    out: W,
    journal: bool,
) -> (Logger, LogGuard) {
    let current = journal::CurrentPriority::default();
    let json = slog_json::Json::new(journal::PrefixWriter::new(out, current.clone(), journal))
        .set_newlines(true)
        .add_default_keys()
        .build();
    let json = journal::PriorityDrain {
        drain: json,
        current,
    }
    .fuse();
    let redacted = Redact::new(json, &config.redact).fuse();
    let (drain, guard) = slog_async::Async::new(redacted)
        .chan_size(LOG_QUEUE)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .thread_name("heapwarden-log".into())
        .build_with_guard();
    let level = LevelHandle::new(config.level);
    let drain = LevelFilter {
        drain,
        level: level.clone(),
    }
    .fuse();
    let logger = Logger::root(drain, o!());
    (
        logger,
        LogGuard {
            _async_guard: guard,
            level,
        },
    )
}

pub fn slog_level(level: LogLevel) -> Level {
    match level {
        LogLevel::Error => Level::Error,
        LogLevel::Warn => Level::Warning,
        LogLevel::Info => Level::Info,
        LogLevel::Debug => Level::Debug,
        LogLevel::Trace => Level::Trace,
    }
}

/// An in-memory sink for tests: clones share the same buffer.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct SharedBuffer(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl SharedBuffer {
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

#[cfg(test)]
impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::info;

    #[test]
    fn records_are_json_with_context_and_redacted_keys() {
        let buf = SharedBuffer::default();
        let (logger, guard) = build(&LogConfig::default(), buf.clone());
        let child = logger.new(o!("module" => "supervisor", "worker" => 2, "token" => "t0p"));
        let nested = Nested(serde_json::json!({
            "headers": {"Authorization": "Bearer abc", "accept": "*/*"},
            "user": {"password": "hunter2", "name": "ada"}
        }));
        info!(child, "A worker said hello."; "password" => "hunter2", "request" => nested, "bytes" => 42u64);
        drop(logger);
        drop(child);
        drop(guard);
        let lines = buf.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let rec = &lines[0];
        assert_eq!(rec["msg"], "A worker said hello.");
        assert_eq!(rec["level"], "INFO");
        assert!(rec["ts"].is_string());
        assert_eq!(rec["module"], "supervisor");
        assert_eq!(rec["worker"], 2);
        assert_eq!(rec["bytes"], 42);
        assert_eq!(rec["password"], "[REDACTED]");
        assert_eq!(rec["token"], "[REDACTED]");
        assert_eq!(rec["request"]["headers"]["Authorization"], "[REDACTED]");
        assert_eq!(rec["request"]["headers"]["accept"], "*/*");
        assert_eq!(rec["request"]["user"]["password"], "[REDACTED]");
        assert_eq!(rec["request"]["user"]["name"], "ada");
        assert!(!String::from_utf8_lossy(&buf.0.lock().unwrap()).contains("hunter2"));
    }

    #[test]
    fn the_level_changes_while_the_logger_runs() {
        let buf = SharedBuffer::default();
        let config = LogConfig {
            level: LogLevel::Warn,
            ..LogConfig::default()
        };
        let (logger, guard) = build(&config, buf.clone());
        info!(logger, "Not written at warn.");
        guard.level().set(LogLevel::Debug);
        slog::debug!(logger, "Written at debug.");
        guard.level().set(LogLevel::Error);
        slog::warn!(logger, "Not written at error.");
        drop(logger);
        drop(guard);
        let msgs: Vec<String> = buf.lines().iter().map(|r| r["msg"].to_string()).collect();
        assert_eq!(msgs, vec!["\"Written at debug.\"".to_string()]);
    }

    #[test]
    fn journal_lines_carry_their_priority_and_the_same_json() {
        let buf = SharedBuffer::default();
        let (logger, guard) = build_with(&LogConfig::default(), buf.clone(), true);
        slog::error!(logger, "The reloaded config was refused."; "key" => "pool.workers");
        slog::warn!(logger, "A warning.");
        info!(logger, "An info.");
        drop(logger);
        drop(guard);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        for (line, (prefix, msg)) in lines.iter().zip([
            ("<3>", "The reloaded config was refused."),
            ("<4>", "A warning."),
            ("<6>", "An info."),
        ]) {
            let body = line
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{line}"));
            let rec: serde_json::Value = serde_json::from_str(body).expect("JSON body");
            assert_eq!(rec["msg"], msg);
        }
    }

    /// A full queue of records (a burst the writer has not started on) is written at
    /// shutdown, in order. More than the queue holds at once is dropped and reported
    /// (`DropAndReport`): logging never blocks the agent.
    #[test]
    fn nothing_is_lost_at_shutdown() {
        let buf = SharedBuffer::default();
        let (logger, guard) = build(&LogConfig::default(), buf.clone());
        let queued = u32::try_from(LOG_QUEUE).expect("small");
        for i in 0..queued {
            info!(logger, "A numbered record."; "n" => i);
        }
        drop(logger);
        drop(guard);
        let lines = buf.lines();
        assert_eq!(lines.len(), LOG_QUEUE);
        assert_eq!(lines[LOG_QUEUE - 1]["n"], queued - 1);
    }
}
