//! End-to-end tests of the admin server's limits (issue 11, items 4, 6, 7, 8): idle and
//! slow connections cannot starve the supervisor of file descriptors or `/healthz` of
//! an answer; idle connections are closed after `admin.header-timeout`; 3 MB of metrics
//! per worker under 8 concurrent scrapers neither slows `/healthz` nor gets a healthy
//! worker replaced; worker metrics on a scrape are at most one sampling interval old,
//! from the very first scrape on; a hostile worker's text cannot break the page.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use heapwarden_tests::tools::promtool_check_metrics;
use heapwarden_tests::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// An agent running `workers` probe-workers with `env` (TOML inline-table entries) and
/// `admin_extra` lines in `[admin]`; `nofile` caps its RLIMIT_NOFILE (soft and hard).
fn start(
    sandbox: &Sandbox,
    workers: usize,
    env: &str,
    admin_extra: &str,
    sampling: &str,
    nofile: Option<u64>,
) -> (Proc, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let state = sandbox.path().join("state");
    let config = format!(
        "state-dir = {:?}\n[admin]\nlisten = \"{admin}\"\n{admin_extra}\n\
[pool]\nworkers = {workers}\nlisten = \"127.0.0.1:{}\"\ncommand = [{:?}]\n\
env = {{ {env} }}\ndrain-timeout = \"1s\"\nkill-timeout = \"1s\"\n\
[pool.restart]\ninitial-delay = \"0s\"\n[sampling]\n{sampling}\n",
        state.display().to_string(),
        free_port(),
        bin("probe-worker").display().to_string()
    );
    let path = sandbox.write("heapwarden.toml", &config);
    let mut command = Command::new(heapwarden());
    command.args(["run", "-c"]).arg(path);
    if let Some(limit) = nofile {
        // SAFETY: setrlimit is async-signal-safe and only changes the child's limits.
        unsafe {
            command.pre_exec(move || {
                let rlim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let agent = Proc::spawn(command);
    agent
        .logs
        .wait_for(SECS(30), "all ready", msg("Every worker is ready."));
    (agent, admin)
}

/// `GET path` timed; the error text when it failed.
fn timed_get(addr: SocketAddr, path: &str) -> (Duration, Result<(u16, String), String>) {
    let started = Instant::now();
    let result = http_get(addr, path, SECS(10)).map_err(|e| e.to_string());
    (started.elapsed(), result)
}

fn percentile(mut values: Vec<Duration>, p: f64) -> Duration {
    values.sort();
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[index]
}

/// Whether the server closed `stream` (EOF or reset) within `wait`.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let _ = stream.set_read_timeout(Some(wait));
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[test]
fn idle_and_slow_admin_connections_cannot_starve_the_supervisor() {
    let _guard = TimeoutGuard::new("admin_fd_starvation", SECS(120));
    let sandbox = Sandbox::new();
    let (agent, admin) = start(&sandbox, 2, "", "", "", Some(256));
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(stream) = TcpStream::connect_timeout(&admin, SECS(2)) {
            idle.push(stream);
        }
    }
    // Slow senders: one byte of a request head every 200 ms, never finishing.
    let stop = Arc::new(AtomicBool::new(false));
    let mut slow = Vec::new();
    for _ in 0..60 {
        if let Ok(stream) = TcpStream::connect_timeout(&admin, SECS(2)) {
            slow.push(stream);
        }
    }
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for stream in &mut slow {
                    let _ = stream.write(b"G");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    assert!(idle.len() >= 250, "connected {} idle", idle.len());

    let before = worker_pids(&agent.logs);
    let victim = before[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill worker");
    agent.logs.wait_for(SECS(20), "a new worker", |r| {
        r["msg"] == "A worker started."
            && r["pid"]
                .as_i64()
                .is_some_and(|p| !before.contains(&(p as i32)))
    });
    agent.logs.wait_for_n(
        2,
        SECS(20),
        "the pool ready again",
        msg("Every worker is ready."),
    );
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let (took, result) = timed_get(admin, "/healthz");
        assert!(
            matches!(result, Ok((200, _))),
            "healthz failed: {result:?}; log:\n{}",
            agent.logs.raw()
        );
        latencies.push(took);
    }
    let p95 = percentile(latencies, 0.95);
    assert!(p95 < Duration::from_millis(500), "/healthz p95 {p95:?}");
    assert!(
        agent
            .logs
            .matching(|r| r.to_string().contains("Too many open files"))
            .is_empty(),
        "fd exhaustion:\n{}",
        agent.logs.raw()
    );
    stop.store(true, Ordering::Relaxed);
    trickle.join().expect("trickle thread");
}

#[test]
fn idle_and_slow_admin_connections_are_closed_after_the_header_timeout() {
    let _guard = TimeoutGuard::new("admin_header_timeout", SECS(60));
    let sandbox = Sandbox::new();
    let (_agent, admin) = start(&sandbox, 1, "", "header-timeout = \"2s\"", "", None);
    let opened = Instant::now();
    let mut idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect_timeout(&admin, SECS(2)).expect("connect"))
        .collect();
    let mut slow = TcpStream::connect_timeout(&admin, SECS(2)).expect("connect");
    // A keep-alive connection that got an answer is idle afterwards.
    let mut answered = TcpStream::connect_timeout(&admin, SECS(2)).expect("connect");
    answered
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("request");
    let mut buf = [0u8; 512];
    let n = answered.read(&mut buf).expect("answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Still open well before the timeout.
    assert!(!closed_within(&mut idle[0], Duration::from_millis(500)));
    for i in 0..40 {
        if slow.write_all(b"G").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if i == 0 {
            assert!(
                opened.elapsed() < SECS(2),
                "the machine is too slow for this test"
            );
        }
    }
    for stream in idle.iter_mut().chain([&mut slow, &mut answered]) {
        let left = (opened + SECS(5)).saturating_duration_since(Instant::now());
        assert!(
            closed_within(stream, left.max(Duration::from_millis(10))),
            "a connection outlived the 2 s header timeout by 3 s"
        );
    }
}

/// The metrics page, its scrape time and whether `probe_worker_rendered_unix_ms` for
/// `worker` was in it (with its value).
fn scrape(admin: SocketAddr, worker: &str) -> (String, u128, Option<f64>) {
    let (status, body) = http_get(admin, "/metrics", SECS(10)).expect("scrape");
    assert_eq!(status, 200, "{body}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let prefix = format!("probe_worker_rendered_unix_ms{{worker=\"{worker}\"}} ");
    let value = body
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok());
    (body, now, value)
}

#[test]
fn worker_metrics_are_fresh_from_the_first_scrape_and_a_hostile_worker_cannot_break_them() {
    let _guard = TimeoutGuard::new("admin_fresh_metrics", SECS(60));
    let sandbox = Sandbox::new();
    let hostile = "x{this is not a label} 1\\ndup{a=\\\"1\\\",a=\\\"2\\\"} 1\\n\
heapwarden_worker_up{worker=\\\"0\\\"} 0\\nstolen{worker=\\\"7\\\"} 1\\n";
    let env = format!("PROBE_WORKER_METRICS = \"1\", PROBE_WORKER_METRICS_TEXT = \"{hostile}\"");
    let (agent, admin) = start(&sandbox, 1, &env, "", "interval = \"1s\"", None);
    wait_until_ok(admin, "/readyz", SECS(20), &agent.logs);
    let (first, _, value) = scrape(admin, "0");
    assert!(
        value.is_some(),
        "the first scrape lacks worker metrics:\n{first}"
    );
    let mut ages = Vec::new();
    for _ in 0..4 {
        // Scrapes further apart than the sampling interval, as Prometheus does.
        std::thread::sleep(Duration::from_millis(2500));
        let (page, now, value) = scrape(admin, "0");
        let rendered = value.unwrap_or_else(|| panic!("no worker metrics:\n{page}"));
        ages.push(now.saturating_sub(rendered as u128));
    }
    // One sampling interval plus the time a round takes on a loaded machine.
    assert!(
        ages.iter().all(|age| *age <= 1500),
        "worker metrics older than one sampling interval: {ages:?} ms"
    );
    let (page, _, _) = scrape(admin, "0");
    assert!(page.contains("stolen{worker=\"0\"} 1"), "{page}");
    assert_eq!(page.matches("heapwarden_worker_up{").count(), 1, "{page}");
    assert!(!page.contains("dup{"), "{page}");
    let rejected = |reason: &str| {
        page.lines().any(|l| {
            l.starts_with("heapwarden_worker_metrics_rejected_total{")
                && l.contains(&format!("reason=\"{reason}\""))
                && !l.ends_with(" 0")
        })
    };
    assert!(
        rejected("syntax") && rejected("reserved") && rejected("worker_label"),
        "{page}"
    );
    promtool_parses(&page);
}

/// `promtool check metrics` must parse the page; lint findings about worker families
/// (exit 3) are the worker's business.
fn promtool_parses(page: &str) {
    let (code, report) = promtool_check_metrics(page);
    assert!(
        matches!(code, Some(0 | 3)) && !report.contains("error"),
        "promtool: {report}"
    );
    assert!(
        !report.lines().any(|l| l.starts_with("heapwarden_")),
        "agent families fail lint: {report}"
    );
}

#[test]
fn big_worker_metrics_and_concurrent_scrapers_never_stall_the_agent() {
    let _guard = TimeoutGuard::new("admin_big_metrics", SECS(120));
    let sandbox = Sandbox::new();
    let env = "PROBE_WORKER_METRICS = \"1\", PROBE_WORKER_METRICS_BYTES = \"3000000\"";
    let (agent, admin) = start(
        &sandbox,
        2,
        env,
        "",
        "interval = \"1s\"\nmissed-pings = 3",
        None,
    );
    wait_until_ok(admin, "/readyz", SECS(20), &agent.logs);
    let started = worker_pids(&agent.logs).len();
    let stop = Arc::new(AtomicBool::new(false));
    let scrapers: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut pages = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    if matches!(http_get(admin, "/metrics", SECS(30)), Ok((200, _))) {
                        pages += 1;
                    }
                }
                pages
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let until = Instant::now() + SECS(8);
    while Instant::now() < until {
        let (took, result) = timed_get(admin, "/healthz");
        assert!(matches!(result, Ok((200, _))), "healthz: {result:?}");
        latencies.push(took);
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let pages: u32 = scrapers
        .into_iter()
        .map(|t| t.join().expect("scraper"))
        .sum();
    let p99 = percentile(latencies.clone(), 0.99);
    let p50 = percentile(latencies, 0.5);
    eprintln!("/healthz p50 {p50:?} p99 {p99:?} while 8 scrapers fetched {pages} pages");
    assert!(pages >= 8, "the scrapers got {pages} pages");
    assert!(
        p99 < Duration::from_millis(500),
        "/healthz p99 {p99:?} (p50 {p50:?})"
    );
    assert_eq!(
        worker_pids(&agent.logs).len(),
        started,
        "a healthy worker was replaced:\n{}",
        agent.logs.raw()
    );
    let (_, body) = http_get(admin, "/metrics", SECS(30)).expect("scrape");
    assert!(
        body.lines().any(
            |l| l.starts_with("heapwarden_worker_metrics_rejected_total{")
                && l.contains("reason=\"too_large\"")
                && !l.ends_with(" 0")
        ),
        "3 MB per worker is over the budget and counted"
    );
}
