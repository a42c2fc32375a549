//! End-to-end tests of the supervisor: the real `heapwarden run` supervising small shell
//! workers that trap signals — restarts, crash loops, signals, config errors, output.

use std::time::Duration;

use heapwarden_tests::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn ts(record: &Value) -> f64 {
    let text = record["ts"].as_str().expect("ts");
    let t = humantime_parse(text);
    t.as_secs_f64()
}

/// Parses the RFC 3339 `ts` the agent writes (UTC, fractional seconds).
fn humantime_parse(text: &str) -> Duration {
    // 2026-11-22T15:23:51.570660567Z → seconds within the day are enough here.
    let time = text
        .split('T')
        .nth(1)
        .expect("time part")
        .trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next().and_then(|p| p.parse().ok()).expect("hours");
    let m: f64 = parts.next().and_then(|p| p.parse().ok()).expect("minutes");
    let s: f64 = parts.next().and_then(|p| p.parse().ok()).expect("seconds");
    Duration::from_secs_f64(h * 3600.0 + m * 60.0 + s)
}

#[test]
fn crashing_worker_is_restarted_with_growing_delays() {
    let _guard = TimeoutGuard::new("crashing_worker", SECS(60));
    let sandbox = Sandbox::new();
    let config = AgentConfig::sh(1, "echo up; exit 3")
        .set("pool", "min-uptime", "5s")
        .set("pool.restart", "initial-delay", "100ms")
        .set("pool.restart", "factor", "2.0")
        .set("pool.restart", "max-delay", "10s")
        .set("pool.restart", "max-restarts", "20");
    let agent = sandbox.agent(&config.to_string());
    let starts = agent
        .logs
        .wait_for_n(5, SECS(20), "5 worker starts", msg("A worker started."));
    // Exit → next start is the backoff delay itself; start → start would add the worker's
    // own run time (a shell's start-up, which a loaded machine stretches).
    let exits = agent.logs.matching(msg("A worker exited."));
    assert!(exits.len() >= 4, "{exits:?}");
    let gaps: Vec<f64> = exits
        .iter()
        .zip(&starts[1..])
        .map(|(exit, next)| ts(next) - ts(exit))
        .collect();
    for pair in gaps.windows(2) {
        assert!(pair[1] > pair[0] * 1.5, "delays must grow: {gaps:?}");
    }
    assert!(
        gaps[0] >= 0.09 && gaps[0] < 0.5,
        "first delay ~100ms: {gaps:?}"
    );
    let restarts = agent.logs.matching(msg("A worker slot restarted."));
    assert!(
        restarts.iter().all(|r| r["reason"] == "exit"),
        "{restarts:?}"
    );
    let exits = agent.logs.matching(msg("A worker exited."));
    assert!(exits.iter().all(|r| r["exit_code"] == 3), "{exits:?}");
}

#[test]
fn crash_loop_marks_slot_failed_then_retries_after_cool_down() {
    let _guard = TimeoutGuard::new("crash_loop", SECS(60));
    let sandbox = Sandbox::new();
    let config = AgentConfig::sh(1, "kill -SEGV $$")
        .set("pool.restart", "initial-delay", "50ms")
        .set("pool.restart", "max-delay", "100ms")
        .set("pool.restart", "max-restarts", "3")
        .set("pool.restart", "window", "60s")
        .set("pool.restart", "cool-down", "2s");
    let agent = sandbox.agent(&config.to_string());
    let failed = agent.logs.wait_for(
        SECS(20),
        "slot failed",
        msg("A worker slot keeps failing; it is paused before the next try."),
    );
    assert_eq!(failed["worker"], 0);
    let starts_before = agent.logs.matching(msg("A worker started.")).len();
    assert_eq!(
        starts_before, 3,
        "exactly max-restarts starts before the cool-down"
    );
    let next = agent.logs.wait_for_n(
        starts_before + 1,
        SECS(10),
        "start after cool-down",
        msg("A worker started."),
    );
    let waited = ts(&next[starts_before]) - ts(&failed);
    assert!(
        (1.9..4.0).contains(&waited),
        "retried after the 2s cool-down, waited {waited}s"
    );
    let crashes = agent.logs.matching(msg("A worker slot restarted."));
    assert!(
        crashes.iter().all(|r| r["reason"] == "crash"),
        "{crashes:?}"
    );
}

#[test]
fn sigterm_kills_a_worker_that_ignores_it_after_kill_timeout_and_exits_zero() {
    let _guard = TimeoutGuard::new("graceful_sigterm", SECS(60));
    let sandbox = Sandbox::new();
    let config = AgentConfig::sh(
        2,
        "trap 'echo ignoring TERM' TERM; echo up; while true; do sleep 0.1; done",
    )
    .set("pool", "min-uptime", "200ms")
    .set("pool", "kill-timeout", "1s");
    let mut agent = sandbox.agent(&config.to_string());
    agent
        .logs
        .wait_for(SECS(15), "all ready", msg("Every worker is ready."));
    let pids = worker_pids(&agent.logs);
    assert_eq!(pids.len(), 2);
    let sent = std::time::Instant::now();
    agent.signal(Signal::SIGTERM);
    let status = agent
        .wait_exit(SECS(10))
        .expect("agent exits after kill-timeout");
    let took = sent.elapsed();
    assert!(status.success(), "agent exit status {status:?}");
    assert!(
        took >= Duration::from_millis(900),
        "waited for kill-timeout, took {took:?}"
    );
    assert!(took < SECS(4), "exited within the bound, took {took:?}");
    for pid in pids {
        assert!(wait_gone(pid, SECS(2)), "worker {pid} still running");
    }
    agent.logs.wait_for(SECS(5), "TERM was delivered", |r| {
        r["msg"] == "ignoring TERM"
    });
}

#[test]
fn second_signal_kills_at_once() {
    let _guard = TimeoutGuard::new("second_signal", SECS(60));
    let sandbox = Sandbox::new();
    let config = AgentConfig::sh(1, "trap '' TERM; while true; do sleep 0.1; done")
        .set("pool", "min-uptime", "200ms")
        .set("pool", "kill-timeout", "30s");
    let mut agent = sandbox.agent(&config.to_string());
    agent
        .logs
        .wait_for(SECS(15), "all ready", msg("Every worker is ready."));
    agent.signal(Signal::SIGTERM);
    agent.logs.wait_for(
        SECS(5),
        "first signal",
        msg("Shutdown signal received: draining workers."),
    );
    agent.signal(Signal::SIGINT);
    let status = agent
        .wait_exit(SECS(5))
        .expect("second signal ends the agent at once");
    assert!(status.success());
}

#[test]
fn sigkill_of_the_agent_leaves_no_worker_running() {
    let _guard = TimeoutGuard::new("sigkill_agent", SECS(60));
    let sandbox = Sandbox::new();
    let config = AgentConfig::sh(3, "trap '' TERM; while true; do sleep 0.1; done").set(
        "pool",
        "min-uptime",
        "200ms",
    );
    let mut agent = sandbox.agent(&config.to_string());
    agent
        .logs
        .wait_for(SECS(15), "all ready", msg("Every worker is ready."));
    let pids = worker_pids(&agent.logs);
    assert_eq!(pids.len(), 3);
    agent.signal(Signal::SIGKILL);
    agent.wait_exit(SECS(5)).expect("agent died");
    for pid in pids {
        assert!(wait_gone(pid, SECS(5)), "worker {pid} outlived the agent");
    }
}

#[test]
fn bad_config_is_refused_with_every_key_named() {
    let _guard = TimeoutGuard::new("bad_config", SECS(30));
    let sandbox = Sandbox::new();
    let path = sandbox.write(
        "bad.toml",
        r#"
[pool]
workers = "many"
min-uptime = "soon"
[pool.restart]
factor = 0.5
[watchdog]
strikes = 0
max-memory = "lots"
[nonsense]
x = 1
"#,
    );
    for verb in ["check-config", "run"] {
        let out = std::process::Command::new(heapwarden())
            .args([verb, "-c"])
            .arg(&path)
            .output()
            .expect("run heapwarden");
        assert_eq!(out.status.code(), Some(64), "{verb} exits 64");
        let err = String::from_utf8_lossy(&out.stderr);
        for key in [
            "pool.workers",
            "pool.min-uptime",
            "watchdog.max-memory",
            "nonsense",
        ] {
            assert!(err.contains(key), "{verb}: {key} not named in:\n{err}");
        }
        assert!(out.stdout.is_empty(), "{verb} started nothing");
    }
    // Semantic errors are reported together too, once the types are right.
    let path = sandbox.write(
        "bad2.toml",
        "[pool.restart]\nfactor = 0.5\n[watchdog]\nstrikes = 0\n",
    );
    let out = std::process::Command::new(heapwarden())
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .expect("run heapwarden");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        err.contains("pool.restart.factor") && err.contains("watchdog.strikes"),
        "{err}"
    );
    // An environment override is type-checked and attributed too.
    let out = std::process::Command::new(heapwarden())
        .args(["check-config"])
        .env("HEAPWARDEN_POOL_WORKERS", "lots")
        .output()
        .expect("run heapwarden");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        err.contains("pool.workers") && err.contains("HEAPWARDEN_POOL_WORKERS"),
        "{err}"
    );
}

#[test]
fn durations_that_would_overflow_are_config_errors_not_panics() {
    let _guard = TimeoutGuard::new("duration_bounds", SECS(30));
    let sandbox = Sandbox::new();
    for (text, key) in [
        (
            "[pool]\nready-timeout = \"400000000000y\"\n",
            "pool.ready-timeout",
        ),
        (
            "[sampling]\ninterval = \"4000000000000000000s\"\n",
            "sampling.interval",
        ),
        ("[pool.restart]\nfactor = 1e300\n", "pool.restart.factor"),
        ("[demo]\nl1-ttl = \"2000y\"\n", "demo.l1-ttl"),
    ] {
        let path = sandbox.write("overflow.toml", text);
        for verb in ["check-config", "run"] {
            let out = std::process::Command::new(heapwarden())
                .args([verb, "-c"])
                .arg(&path)
                .output()
                .expect("run heapwarden");
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{verb} {key}: {err}");
            assert!(
                err.contains(key) && !err.contains("panicked"),
                "{verb}: {err}"
            );
        }
    }
}

/// Children of `pid` that are zombies (exited, not reaped).
fn zombie_children(pid: i32) -> Vec<i32> {
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1).and_then(|p| p.parse().ok()) == Some(pid) {
            zombies.push(child);
        }
    }
    zombies
}

#[test]
fn worker_output_is_relayed_structured_and_exited_workers_are_reaped() {
    let _guard = TimeoutGuard::new("output_and_zombies", SECS(60));
    let sandbox = Sandbox::new();
    let config = AgentConfig::sh(2, "echo plain line; echo '{\"msg\":\"structured hello\",\"level\":\"WARN\",\"password\":\"hunter2\",\"n\":7}'; echo to stderr >&2; exit 1")
        .set("pool.restart", "initial-delay", "20ms")
        .set("pool.restart", "max-delay", "50ms")
        .set("pool.restart", "max-restarts", "100");
    let agent = sandbox.agent(&config.to_string());
    let structured = agent.logs.wait_for(SECS(10), "structured line", |r| {
        r["msg"] == "structured hello"
    });
    assert_eq!(structured["level"], "WARN");
    assert_eq!(structured["stream"], "stdout");
    assert_eq!(structured["fields"]["n"], 7, "{structured}");
    assert_eq!(
        structured["fields"]["password"], "[REDACTED]",
        "{structured}"
    );
    assert!(structured["worker"].is_u64() && structured["pid"].is_u64());
    let plain = agent
        .logs
        .wait_for(SECS(10), "stderr line", |r| r["msg"] == "to stderr");
    assert_eq!(plain["stream"], "stderr");
    agent
        .logs
        .wait_for_n(20, SECS(20), "many exits", msg("A worker exited."));
    // Every exited worker was reaped: at most the ones exiting right now are zombies.
    let none_left = || zombie_children(agent.pid()).is_empty().then_some(());
    let zombies = match try_poll(SECS(2), none_left) {
        Some(()) => Vec::new(),
        None => zombie_children(agent.pid()),
    };
    assert!(zombies.len() <= 2, "zombies left behind: {zombies:?}");
    assert!(
        !agent.logs.raw().contains("hunter2"),
        "a secret reached the log"
    );
}
