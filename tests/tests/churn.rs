//! Worker churn leaks nothing: after more than 10,000 worker starts (crash-looping
//! workers restarted without delay) the agent holds exactly the descriptors it held
//! before, and its RSS grew by less than 1 MiB. It keeps both cores busy for its whole run:
//! alone in its own test binary, and given two of nextest's threads (.config/nextest.toml).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use heapwarden_tests::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// `HEAPWARDEN_TEST_CHURN_STARTS` lowers it for a quick local look, never in CI.
const STARTS: f64 = 10_000.0;
const WORKERS: usize = 4;

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Every start after the first is counted in `heapwarden_worker_restarts_total`.
fn restarts(admin: SocketAddr) -> Option<f64> {
    let (_, body) = http_get(admin, "/metrics", SECS(5)).ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with("heapwarden_worker_restarts_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum(),
    )
}

/// Descriptors and RSS with every slot served by a sleeping worker, once the numbers
/// are steady: the lowest of a few readings (an admin connection may be in flight).
fn footprint(pid: i32) -> (usize, u64) {
    let readings: Vec<(usize, u64)> = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            (fd_count(pid), rss_kib(pid))
        })
        .collect();
    let fds = readings.iter().map(|r| r.0).min().unwrap_or(usize::MAX);
    let rss = readings.iter().map(|r| r.1).min().unwrap_or(0);
    (fds, rss)
}

#[test]
fn ten_thousand_worker_starts_leave_no_descriptor_or_memory_behind() {
    let _guard = TimeoutGuard::new("churn", SECS(400));
    let sandbox = Sandbox::new();
    let stop = sandbox.path().join("stop");
    std::fs::write(&stop, "").unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // While `stop` exists a worker sleeps; without it, it exits at once and is restarted
    // with no delay (the window is short, so the slot never counts as failed).
    let agent = sandbox.agent(&format!(
        r#"
[admin]
listen = "{admin}"
[pool]
workers = {WORKERS}
listen = "127.0.0.1:{port}"
command = ["sh", "-c", "[ -e {stop} ] && exec sleep 600"]
min-uptime = "100ms"
[pool.restart]
initial-delay = "0s"
max-delay = "0s"
factor = 1.0
max-restarts = 10000
window = "1s"
[sampling]
interval = "1h"
[watchdog]
trend-window = "5h"
[log]
level = "warn"
"#,
        port = free_port(),
        stop = stop.display()
    ));
    let pid = agent.pid();
    wait_until_ok(admin, "/readyz", SECS(30), &agent.logs);
    let (fds_before, rss_before) = footprint(pid);

    std::fs::remove_file(&stop).unwrap();
    for slot_pid in children_of(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(slot_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let target = std::env::var("HEAPWARDEN_TEST_CHURN_STARTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(STARTS);
    let started = Instant::now();
    poll(SECS(360), "10,000 worker starts", || {
        std::thread::sleep(Duration::from_millis(200));
        restarts(admin).filter(|&n| n >= target)
    });
    let churn = started.elapsed();
    std::fs::write(&stop, "").unwrap();
    wait_until_ok(admin, "/readyz", SECS(30), &agent.logs);
    let total = restarts(admin).unwrap_or(0.0);
    let (fds_after, rss_after) = footprint(pid);
    eprintln!(
        "{total} restarts in {churn:?} ({:.0}/s); fds {fds_before} -> {fds_after}; \
         RSS {rss_before} KiB -> {rss_after} KiB",
        total / churn.as_secs_f64()
    );
    assert!(
        fds_after <= fds_before,
        "descriptors leaked: {fds_before} before, {fds_after} after {total} restarts"
    );
    assert!(
        rss_after < rss_before + 1024,
        "RSS grew by {} KiB over {total} restarts",
        rss_after.saturating_sub(rss_before)
    );
}

/// The agent's direct children (its workers).
fn children_of(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            found.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    found
}
