//! End-to-end tests of sampling and the admin server (issue 3, item 6): the real
//! `heapwarden run` supervising probe-linked `probe-worker`s, checked through `/metrics`,
//! `/healthz`, `/readyz` and `/api/v1/workers` against `/proc` and `promtool`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use heapwarden_tests::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MIB: f64 = 1024.0 * 1024.0;
const PROMTOOL: &str = "/usr/bin/promtool";

/// An agent with `workers` probe-workers; slot N holds `N * hold_step_mib` MiB, so slot 0
/// is the probe's own baseline and the others hold a known amount on top of it.
struct Pool {
    sandbox: Sandbox,
    agent: Proc,
    admin: SocketAddr,
}

/// `initial_delay` is the restart delay; `sampling` the sampling interval.
fn probe_pool(workers: usize, hold_step_mib: u64, initial_delay: &str, sampling: &str) -> Pool {
    let sandbox = Sandbox::new();
    let worker = bin("probe-worker");
    let script = format!(
        "PROBE_WORKER_HOLD_MIB=$((HEAPWARDEN_WORKER_SLOT * {hold_step_mib})) exec {:?}",
        worker.display().to_string()
    );
    let config = AgentConfig::sh(workers, &script)
        .set("pool", "min-uptime", "500ms")
        .set("pool.restart", "max-restarts", "100")
        .set("pool.restart", "initial-delay", initial_delay)
        .set("sampling", "interval", sampling);
    let agent = sandbox.agent(&config.to_string());
    agent
        .logs
        .wait_for(SECS(20), "all ready", msg("Every worker is ready."));
    Pool {
        sandbox,
        agent,
        admin: config.admin,
    }
}

impl Pool {
    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path, SECS(5)).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics status; body:\n{body}");
        body
    }

    fn token(&self) -> String {
        let path = self.sandbox.path().join("state").join("admin-token");
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    /// Waits until `rounds` more sampling rounds have completed, so the next scrape
    /// holds figures taken after whatever the caller waited for.
    fn wait_rounds(&self, rounds: f64) {
        let count =
            |body: &str| value(body, "heapwarden_sample_duration_seconds_count").unwrap_or(0.0);
        let start = count(&self.metrics());
        poll_until(SECS(10), "sampling rounds", || {
            count(&self.metrics()) >= start + rounds
        });
    }

    /// The pid of the worker currently in `slot`, from the API.
    fn worker_pid(&self, slot: u64) -> i32 {
        let (status, body) = get_with_token(self.admin, "/api/v1/workers", Some(&self.token()));
        assert_eq!(status, 200, "{body}");
        let rows: Value = serde_json::from_str(&body).expect("workers JSON");
        rows.as_array()
            .and_then(|rows| rows.iter().find(|r| r["slot"] == slot))
            .and_then(|r| r["pid"].as_i64())
            .unwrap_or_else(|| panic!("no pid for slot {slot} in {body}")) as i32
    }
}

/// The value of the sample whose name-and-labels text is exactly `series`.
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .and_then(|(_, v)| v.parse().ok())
}

/// GET with an optional bearer token.
fn get_with_token(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    http_request(addr, "GET", path, token, b"", SECS(5))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Resident bytes of `pid` from `/proc/PID/statm` (pages × the kernel page size).
fn statm_rss_bytes(pid: i32) -> f64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).expect("read statm");
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm resident");
    pages * page_size()
}

/// The base page size, from our own smaps (no libc call needed).
fn page_size() -> f64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read smaps");
    smaps
        .lines()
        .find_map(|l| l.strip_prefix("KernelPageSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib * 1024.0)
        .expect("KernelPageSize in /proc/self/smaps")
}

#[test]
fn held_heap_and_rss_show_on_metrics() {
    let _guard = TimeoutGuard::new("held_heap_and_rss", SECS(60));
    let hold_mib = 64.0;
    let pool = probe_pool(2, hold_mib as u64, "100ms", DEFAULT_SAMPLING);
    pool.wait_rounds(2.0);
    let body = pool.metrics();
    let heap = |slot: u64| {
        value(
            &body,
            &format!("heapwarden_worker_heap_allocated_bytes{{worker=\"{slot}\"}}"),
        )
        .unwrap_or_else(|| panic!("no heap figure for worker {slot}:\n{body}"))
    };
    let (baseline, holding) = (heap(0), heap(1));
    println!(
        "heap allocated: worker 0 (HOLD=0) {baseline} B, worker 1 (HOLD={hold_mib}) {holding} B"
    );
    // The probe itself allocates a little (its thread, buffers): well under a MiB.
    assert!(baseline < 2.0 * MIB, "baseline heap {baseline} B");
    let held = hold_mib * MIB;
    for (what, figure) in [
        ("absolute", holding),
        ("above the HOLD=0 baseline", holding - baseline),
    ] {
        let error = (figure - held).abs() / held;
        assert!(
            error < 0.05,
            "heap {what} {figure} B vs {held} B held: {:.1}% off",
            error * 100.0
        );
    }

    for slot in [0, 1] {
        let pid = pool.worker_pid(slot);
        let before = statm_rss_bytes(pid);
        let reported = value(
            &pool.metrics(),
            &format!("heapwarden_worker_rss_bytes{{worker=\"{slot}\"}}"),
        )
        .expect("rss figure");
        let after = statm_rss_bytes(pid);
        let proc_rss = (before + after) / 2.0;
        let error = (reported - proc_rss).abs() / proc_rss;
        println!("worker {slot} pid {pid}: metrics rss {reported} B, statm {proc_rss} B");
        assert!(
            error < 0.10,
            "worker {slot} rss {reported} vs statm {proc_rss}: {:.1}% off",
            error * 100.0
        );
    }
}

#[test]
fn metrics_pass_promtool_check() {
    let _guard = TimeoutGuard::new("promtool", SECS(60));
    assert!(
        std::path::Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: install the Debian package `prometheus` (apt-get install prometheus)"
    );
    let pool = probe_pool(2, 8, "100ms", DEFAULT_SAMPLING);
    // Two rounds: histograms have samples and every worker family is present.
    pool.wait_rounds(2.0);
    let body = pool.metrics();
    assert!(
        body.contains("heapwarden_worker_up{worker=\"1\"}"),
        "{body}"
    );
    let mut promtool = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits 1 on a parse error and 3 when it only has lint findings (a family
    // without HELP, a counter not ending in _total): those are printed, not fatal.
    match out.status.code() {
        Some(0) => {}
        Some(3) => panic!("promtool lint warnings:\n{report}"),
        other => {
            panic!("promtool check metrics failed ({other:?}):\n{report}\n--- body ---\n{body}")
        }
    }
    assert!(
        !report.contains("error"),
        "promtool reported an error:\n{report}"
    );
}

/// Kills the worker in slot 1 and returns its pid; slot 0 stays up as the control.
fn kill_slot_one(pool: &Pool) -> i32 {
    let pid = pool.worker_pid(1);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL)
        .expect("SIGKILL worker");
    pid
}

/// A slow restart (1s) and a fast sampler, so the down phase spans several rounds.
const SLOW_RESTART: &str = "1s";
/// `sampling.interval`'s default.
const DEFAULT_SAMPLING: &str = "1s";
const FAST_SAMPLING: &str = "200ms";

#[test]
fn killed_worker_goes_down_and_back_up_on_metrics() {
    let _guard = TimeoutGuard::new("worker_up", SECS(60));
    let pool = probe_pool(2, 0, SLOW_RESTART, FAST_SAMPLING);
    let up =
        |body: &str, slot: u64| value(body, &format!("heapwarden_worker_up{{worker=\"{slot}\"}}"));
    poll_until(SECS(10), "both slots up", || {
        let body = pool.metrics();
        up(&body, 0) == Some(1.0) && up(&body, 1) == Some(1.0)
    });
    let old_pid = kill_slot_one(&pool);
    poll_until(SECS(10), "worker_up{worker=\"1\"} 0", || {
        let body = pool.metrics();
        assert_eq!(
            up(&body, 0),
            Some(1.0),
            "slot 0 must stay up while slot 1 is down"
        );
        up(&body, 1) == Some(0.0)
    });
    poll_until(SECS(15), "worker_up{worker=\"1\"} back to 1", || {
        up(&pool.metrics(), 1) == Some(1.0)
    });
    let new_pid = pool.worker_pid(1);
    assert_ne!(new_pid, old_pid, "slot 1 runs a new worker");
    assert!(!alive(old_pid), "the killed worker is gone");
    let restarts = pool
        .agent
        .logs
        .matching(|r| r["msg"] == "A worker slot restarted." && r["worker"] == 1);
    assert!(
        restarts.iter().any(|r| r["reason"] == "crash"),
        "a crash restart was logged: {restarts:?}"
    );
}

#[test]
fn readyz_names_the_down_slot_until_it_is_back() {
    let _guard = TimeoutGuard::new("readyz", SECS(60));
    let pool = probe_pool(2, 0, SLOW_RESTART, FAST_SAMPLING);
    poll_until(SECS(10), "ready before the kill", || {
        pool.get("/readyz").0 == 200
    });
    kill_slot_one(&pool);
    let mut reason = String::new();
    poll_until(SECS(10), "/readyz 503", || {
        let (status, body) = pool.get("/readyz");
        if status != 503 {
            return false;
        }
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("503 body is not JSON ({e}): {body}"));
        assert_eq!(json["ready"], false, "{body}");
        reason = json["reason"]
            .as_str()
            .unwrap_or_else(|| panic!("no reason in {body}"))
            .to_string();
        true
    });
    println!("/readyz reason while slot 1 is down: {reason}");
    assert!(reason.contains("slot 1"), "reason names slot 1: {reason}");
    assert!(
        !reason.contains("slot 0"),
        "slot 0 is fine and not named: {reason}"
    );
    poll_until(SECS(15), "/readyz 200 again", || {
        pool.get("/readyz").0 == 200
    });
    let (_, body) = pool.get("/readyz");
    let json: Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(json["ready"], true, "{body}");
}

#[test]
fn healthz_is_ok_while_the_control_loop_ticks() {
    let _guard = TimeoutGuard::new("healthz", SECS(60));
    let pool = probe_pool(1, 0, "100ms", DEFAULT_SAMPLING);
    let (status, body) = pool.get("/healthz");
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).expect("healthz JSON");
    assert_eq!(json["alive"], true, "{body}");
}

#[test]
fn workers_api_requires_the_bearer_token() {
    let _guard = TimeoutGuard::new("api_token", SECS(60));
    let pool = probe_pool(2, 0, "100ms", DEFAULT_SAMPLING);
    for token in [None, Some("not-the-token")] {
        let (status, body) = get_with_token(pool.admin, "/api/v1/workers", token);
        assert_eq!(status, 401, "token {token:?}: {body}");
    }
    let (status, body) = get_with_token(pool.admin, "/api/v1/workers", Some(&pool.token()));
    assert_eq!(status, 200, "{body}");
    let rows: Value = serde_json::from_str(&body).expect("workers JSON");
    let rows = rows
        .as_array()
        .unwrap_or_else(|| panic!("an array of rows: {body}"));
    assert_eq!(rows.len(), 2, "{body}");
    let started = pool.agent.logs.matching(msg("A worker started."));
    for (slot, row) in rows.iter().enumerate() {
        assert_eq!(row["slot"], slot, "{body}");
        assert_eq!(row["ready"], true, "{body}");
        assert_eq!(row["probe"], true, "{body}");
        assert_eq!(row["state"], "ready", "{body}");
        let logged = started
            .iter()
            .find(|r| r["worker"] == slot)
            .map(|r| r["pid"].clone());
        assert_eq!(
            Some(row["pid"].clone()),
            logged,
            "slot {slot} pid matches the log"
        );
    }
}

#[test]
fn the_first_scrape_has_every_histogram_and_every_profile_outcome() {
    let _guard = TimeoutGuard::new("first_scrape", SECS(60));
    let pool = probe_pool(2, 0, "100ms", DEFAULT_SAMPLING);
    // Nothing drained, profiled on demand or restarted yet: the series exist at zero.
    let body = pool.metrics();
    for histogram in [
        "heapwarden_drain_duration_seconds",
        "heapwarden_heap_profile_duration_seconds",
        "heapwarden_sample_duration_seconds",
    ] {
        let bucket = format!("{histogram}_bucket{{le=\"+Inf\"}}");
        assert!(body.contains(&bucket), "{bucket} missing:\n{body}");
    }
    for trigger in ["baseline", "leak", "manual"] {
        for outcome in [
            "written",
            "skipped_disk_full",
            "store_error",
            "dump_failed",
            "convert_failed",
            "no_probe",
        ] {
            let series = format!(
                "heapwarden_heap_profiles_total{{trigger=\"{trigger}\",outcome=\"{outcome}\"}}"
            );
            assert!(body.contains(&series), "{series} missing:\n{body}");
        }
    }
    for slot in ["0", "1"] {
        for reason in [
            "exit",
            "crash",
            "leak",
            "unhealthy",
            "manual",
            "reload",
            "ready_timeout",
        ] {
            let series = format!(
                "heapwarden_worker_restarts_total{{worker=\"{slot}\",reason=\"{reason}\"}} 0"
            );
            assert!(body.contains(&series), "{series} missing:\n{body}");
        }
    }
}
