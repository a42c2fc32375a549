//! A tiny probe-linked worker for the end-to-end tests: std threads only, no runtime.
//!
//! Behaviour comes from the environment:
//! - `PROBE_WORKER_HOLD_MIB=N`: allocate, touch and hold N MiB (`hold_memory_for_test`);
//! - `PROBE_WORKER_LEAK_MIB_PER_SEC=R`: leak R MiB per second (`leak_for_test`);
//! - `LISTEN_FDS=1`: answer every HTTP request on fd 3 with `200 ok`, `Connection: close`;
//! - `PROBE_WORKER_METRICS=1`: hand the agent metrics text on request: a gauge with the
//!   render time (`probe_worker_rendered_unix_ms`), `PROBE_WORKER_METRICS_TEXT` verbatim,
//!   and `PROBE_WORKER_METRICS_BYTES=N` bytes of valid series as padding;
//! - `PROBE_WORKER_REPORT_HEAP=1`: on exit, write one JSON line with its final
//!   `heap_allocated` (jemalloc `stats.allocated`); a leak only grows, so that is the
//!   peak of the figure the agent watches (the overshoot benchmark and test read it).
//!
//! It activates heap profiling, sends Ready once listening, and on Drain, on the agent
//! going away, or on SIGTERM/SIGINT stops accepting, finishes in-flight requests and
//! exits 0.
#![forbid(unsafe_code)]

heapwarden_probes::install!();

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use heapwarden_probes::Probe;
use nix::sys::signal::{SigSet, Signal};

const MIB: usize = 1024 * 1024;
const POLL: Duration = Duration::from_millis(20);
const DEFAULT_DRAIN: Duration = Duration::from_secs(5);

#[inline(never)]
fn hold_memory_for_test(mib: usize) -> Vec<Box<[u8]>> {
    // Filled with a non-zero byte so every page is touched and resident.
    (0..mib)
        .map(|_| vec![0x5a_u8; MIB].into_boxed_slice())
        .collect()
}

#[inline(never)]
fn leak_for_test(bytes: usize) {
    let leaked: &'static mut [u8] = Box::leak(vec![0xa5_u8; bytes].into_boxed_slice());
    std::hint::black_box(leaked);
}

fn env_number(name: &str) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn serve(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    );
}

fn main() -> ExitCode {
    // Blocked before any thread starts, so every thread inherits the mask and only the
    // sigwait thread below ever sees these signals.
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGTERM);
    stop_signals.add(Signal::SIGINT);
    if let Err(error) = stop_signals.thread_block() {
        eprintln!("probe-worker: cannot block signals: {error}");
        return ExitCode::from(70);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stop_on_signal = stop.clone();
    std::thread::spawn(move || {
        if stop_signals.wait().is_ok() {
            stop_on_signal.store(true, Ordering::SeqCst);
        }
    });

    if let Err(error) = heapwarden_probes::activate_profiling() {
        eprintln!("probe-worker: heap profiling unavailable: {error}");
    }
    let probe = Probe::from_env();

    let _held = hold_memory_for_test(env_number("PROBE_WORKER_HOLD_MIB") as usize);
    let leak_rate = env_number("PROBE_WORKER_LEAK_MIB_PER_SEC");
    if leak_rate > 0.0 {
        let bytes_per_tick = (leak_rate * MIB as f64 / 10.0) as usize;
        std::thread::spawn(move || {
            loop {
                leak_for_test(bytes_per_tick);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }

    let listener = match heapwarden_probes::take_listen_socket() {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("probe-worker: {error}");
            return ExitCode::from(71);
        }
    };
    if let Some(listener) = &listener
        && let Err(error) = listener.set_nonblocking(true)
    {
        eprintln!("probe-worker: cannot make the listener non-blocking: {error}");
        return ExitCode::from(71);
    }
    if let Some(probe) = &probe {
        if std::env::var_os("PROBE_WORKER_METRICS").is_some() {
            let padding = padding_series(env_number("PROBE_WORKER_METRICS_BYTES") as usize);
            let extra = std::env::var("PROBE_WORKER_METRICS_TEXT").unwrap_or_default();
            probe.set_metrics_source(move || render_metrics(&extra, &padding));
        }
        probe.ready();
    }

    let in_flight = Arc::new(AtomicUsize::new(0));
    let should_stop =
        || stop.load(Ordering::SeqCst) || probe.as_ref().is_some_and(Probe::is_drained);
    while !should_stop() {
        accept_some(listener.as_ref(), &in_flight);
    }
    drop(listener);

    let grace = probe
        .as_ref()
        .and_then(Probe::drain_deadline)
        .unwrap_or(DEFAULT_DRAIN);
    let deadline = Instant::now() + grace;
    while in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(POLL);
    }
    if std::env::var_os("PROBE_WORKER_REPORT_HEAP").is_some()
        && let Ok(stats) =
            <heapwarden_probes::HeapStats as heapwarden_probes::ReadHeapStats>::read()
    {
        eprintln!(
            "{{\"msg\":\"probe-worker exits.\",\"level\":\"INFO\",\"heap_allocated\":{}}}",
            stats.allocated
        );
    }
    ExitCode::SUCCESS
}

/// Valid series of about `bytes` bytes in one gauge family.
fn padding_series(bytes: usize) -> String {
    let mut text =
        String::from("# HELP probe_worker_padding Padding.\n# TYPE probe_worker_padding gauge\n");
    let mut i = 0u64;
    while text.len() < bytes {
        text.push_str(&format!(
            "probe_worker_padding{{series=\"{i:08}\",kind=\"filler\"}} {i}\n"
        ));
        i += 1;
    }
    text
}

fn render_metrics(extra: &str, padding: &str) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "# HELP probe_worker_rendered_unix_ms When this text was rendered.\n\
# TYPE probe_worker_rendered_unix_ms gauge\nprobe_worker_rendered_unix_ms {now_ms}\n{extra}\n{padding}"
    )
}

/// Accepts what is queued, one thread per connection; waits one poll period when idle.
fn accept_some(listener: Option<&TcpListener>, in_flight: &Arc<AtomicUsize>) {
    let Some(listener) = listener else {
        std::thread::sleep(POLL);
        return;
    };
    match listener.accept() {
        Ok((stream, _)) => {
            // Accepted sockets inherit O_NONBLOCK from the listener; requests are blocking.
            let _ = stream.set_nonblocking(false);
            in_flight.fetch_add(1, Ordering::SeqCst);
            let in_flight = in_flight.clone();
            std::thread::spawn(move || {
                serve(stream);
                in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
        Err(error) if error.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
        Err(error) => {
            eprintln!("probe-worker: accept failed: {error}");
            std::thread::sleep(POLL);
        }
    }
}
