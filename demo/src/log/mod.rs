//! The worker's logger: one JSON object per line on stdout, the agent's record format
//! (`ts`, `level`, `msg`, then the fields), serialised on the logging thread into an
//! in-memory batch that one flusher thread writes to stdout `FLUSH_EVERY` after the
//! batch's first record (sooner when `WAKE_AT` bytes wait). With nothing logged the
//! flusher sleeps until a record comes, so an idle worker's log costs no wake-ups. Its
//! level and the keys it redacts come from the agent through the probe's `WorkerContext`
//! (or `--log-level` when run alone); redaction is done where request data is logged
//! (`redact`), not by a drain on every record.
//!
//! Why not a slog-async pipeline like the agent's: with the request log on, handing every
//! record to the log thread cost more than serving the request. Each record's values were
//! copied into owned boxes, the log thread was woken through a futex and spun in
//! `sched_yield` (two calls per request, measured with `strace -c`), the copies were freed
//! on the other thread, and each record was its own `write`. Here a record is serialised
//! where it is logged (no copies), appended under a mutex, and written with many others in
//! one call. The request path never waits for stdout: only the flusher writes, and when
//! stdout cannot keep up, records beyond `MAX_BACKLOG` are dropped and the count
//! reported, as slog-async's `DropAndReport` did. A record reaches stdout at most
//! `FLUSH_EVERY` late; `LogFlush` (held by `main`) writes what is left at shutdown.

mod redact;

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use slog::{Drain, Level, Logger, o};

pub use redact::{REDACTED, Redactor};

pub const FLUSH_EVERY: Duration = Duration::from_millis(20);
const WAKE_AT: usize = 64 * 1024;
const MAX_BACKLOG: usize = 8 * 1024 * 1024;

struct Batch {
    pending: Vec<u8>,
    dropped: u64,
    stopped: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.dropped == 0
    }
}

struct Shared {
    batch: Mutex<Batch>,
    wake: Condvar,
    /// The flusher's passes (each one wake-up), for the tests.
    passes: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Batch> {
        // A writer that panicked mid-record leaves at worst a cut line; keep logging.
        self.batch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes what is pending (and a report of drops) for the caller to write.
    fn take(&self) -> Vec<u8> {
        let mut batch = self.lock();
        let mut out = std::mem::take(&mut batch.pending);
        if batch.dropped > 0 {
            let _ = writeln!(
                out,
                r#"{{"msg":"Log records were dropped: stdout did not keep up.","level":"WARN","module":"demo","pid":{},"dropped":{}}}"#,
                std::process::id(),
                batch.dropped
            );
            batch.dropped = 0;
        }
        out
    }
}

/// What slog-json writes into: one record, appended to the batch at its newline.
struct RecordWriter {
    shared: Arc<Shared>,
    record: Vec<u8>,
}

impl Write for RecordWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.record.extend_from_slice(buf);
        if buf.ends_with(b"\n") {
            let mut batch = self.shared.lock();
            // The first record of a batch starts the flusher's wait; a full batch ends it.
            let first = batch.is_empty();
            if batch.pending.len() + self.record.len() > MAX_BACKLOG {
                batch.dropped += 1;
            } else {
                batch.pending.extend_from_slice(&self.record);
            }
            if first || batch.pending.len() >= WAKE_AT {
                self.shared.wake.notify_one();
            }
            self.record.clear();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes what is left when dropped (at the end of `demo::main`) and stops the flusher.
pub struct LogFlush<W: Write + Send + 'static> {
    shared: Arc<Shared>,
    out: Arc<Mutex<W>>,
}

impl<W: Write + Send + 'static> Drop for LogFlush<W> {
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
        self.shared.wake.notify_one();
        write_out(&self.out, &self.shared);
    }
}

/// Writes what is pending. The output is locked before the batch is taken, so two
/// writers (the flusher and the final flush) cannot put batches out of order.
fn write_out<W: Write>(out: &Mutex<W>, shared: &Shared) {
    let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
    let bytes = shared.take();
    if bytes.is_empty() {
        return;
    }
    // Nowhere to report a failing stdout; the records are lost either way.
    let _ = out.write_all(&bytes).and_then(|()| out.flush());
}

/// Sleeps until a batch has a record, gives it `every` to fill (a full batch or the stop
/// ends that wait), writes it, and so on until stopped.
fn flusher<W: Write>(shared: &Shared, out: &Mutex<W>, every: Duration) {
    loop {
        let stopped = {
            let mut batch = shared.lock();
            while batch.is_empty() && !batch.stopped {
                batch = shared.wake.wait(batch).unwrap_or_else(|p| p.into_inner());
            }
            if !batch.stopped && batch.pending.len() < WAKE_AT {
                batch = shared
                    .wake
                    .wait_timeout(batch, every)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            batch.stopped
        };
        shared.passes.fetch_add(1, Ordering::Relaxed);
        write_out(out, shared);
        if stopped {
            return;
        }
    }
}

/// `error`, `warn`, `info`, `debug` or `trace`, as the agent's `log.level`.
pub fn parse_level(text: &str) -> Result<Level, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "error" => Ok(Level::Error),
        "warn" | "warning" => Ok(Level::Warning),
        "info" => Ok(Level::Info),
        "debug" => Ok(Level::Debug),
        "trace" => Ok(Level::Trace),
        _ => Err(format!(
            "expected error, warn, info, debug or trace, got {text:?}"
        )),
    }
}

/// The worker's root logger, writing JSON lines to stdout.
pub fn stdout_logger(level: Level) -> (Logger, LogFlush<io::Stdout>) {
    logger(level, io::stdout(), FLUSH_EVERY)
}

/// A logger writing JSON lines to `out`, flushed by its own thread `every` after a batch's
/// first record.
pub fn logger<W: Write + Send + 'static>(
    level: Level,
    out: W,
    every: Duration,
) -> (Logger, LogFlush<W>) {
    let shared = Arc::new(Shared {
        batch: Mutex::new(Batch {
            pending: Vec::with_capacity(WAKE_AT),
            dropped: 0,
            stopped: false,
        }),
        wake: Condvar::new(),
        passes: AtomicU64::new(0),
    });
    let out = Arc::new(Mutex::new(out));
    let (for_thread, out_for_thread) = (shared.clone(), out.clone());
    // Without the thread records would wait for the final flush; better late than a
    // worker that fails to start over its log.
    let _ = std::thread::Builder::new()
        .name("demo-log-flush".into())
        .spawn(move || flusher(&for_thread, &out_for_thread, every));
    let json = slog_json::Json::new(RecordWriter {
        shared: shared.clone(),
        record: Vec::with_capacity(1024),
    })
    .set_newlines(true)
    .add_default_keys()
    .build();
    let drain = Mutex::new(json).filter_level(level).fuse();
    (Logger::root(drain, o!()), LogFlush { shared, out })
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::info;
    use std::time::Instant;

    /// An in-memory sink: clones share the same buffer.
    #[derive(Clone, Default)]
    struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

    impl SharedBuffer {
        fn lines(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
            String::from_utf8_lossy(&bytes)
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        }
    }

    impl Write for SharedBuffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_reach_the_output_on_the_timer_at_their_level() {
        let sink = SharedBuffer::default();
        let (log, flush) = logger(Level::Info, sink.clone(), Duration::from_millis(5));
        slog::debug!(log, "Below the level.");
        info!(log, "A record."; "n" => 1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.lines().is_empty() {
            assert!(Instant::now() < deadline, "the flusher never wrote");
            std::thread::sleep(Duration::from_millis(5));
        }
        let line = &sink.lines()[0];
        assert_eq!(line["msg"], "A record.");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["n"], 1);
        assert!(line["ts"].is_string());
        drop(flush);
        assert_eq!(sink.lines().len(), 1, "the debug record was written");
    }

    /// Hands each write of the flusher to the test, so it can wait for one.
    struct ChannelSink(std::sync::mpsc::Sender<Vec<u8>>);

    impl Write for ChannelSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_flusher_sleeps_until_a_record_comes_then_writes_it_a_period_later() {
        let (sink, written) = std::sync::mpsc::channel();
        let every = Duration::from_millis(20);
        let (log, flush) = logger(Level::Info, ChannelSink(sink), every);
        let passes = || flush.shared.passes.load(Ordering::Relaxed);
        // Ten periods with nothing logged (one record below the level): no write, no pass.
        slog::debug!(log, "Below the level.");
        assert!(
            written.recv_timeout(every * 10).is_err(),
            "wrote a dropped record"
        );
        assert_eq!(passes(), 0, "the flusher woke with nothing to write");
        let logged = Instant::now();
        info!(log, "A record.");
        let batch = written
            .recv_timeout(Duration::from_secs(5))
            .expect("the flusher never wrote");
        assert!(
            logged.elapsed() >= every,
            "written before the batch had its period"
        );
        assert!(String::from_utf8_lossy(&batch).contains("A record."));
        assert!(written.recv_timeout(every * 5).is_err(), "a second write");
        assert_eq!(passes(), 1, "one record, one pass");
    }

    #[test]
    fn everything_is_written_at_shutdown() {
        let sink = SharedBuffer::default();
        let (log, flush) = logger(Level::Info, sink.clone(), Duration::from_secs(3600));
        for n in 0..5000u32 {
            info!(log, "A numbered record."; "n" => n);
        }
        drop(flush);
        let lines = sink.lines();
        assert_eq!(lines.len(), 5000);
        assert_eq!(lines[4999]["n"], 4999);
    }

    #[test]
    fn levels_parse_as_the_agent_writes_them() {
        assert_eq!(parse_level("warn"), Ok(Level::Warning));
        assert_eq!(parse_level(" INFO "), Ok(Level::Info));
        assert!(parse_level("loud").unwrap_err().contains("loud"));
    }
}
