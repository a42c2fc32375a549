//! End-to-end tests of the watchdog: the real agent with two demo workers, one leaking
//! for real (`leak-rate`, `leak-slots`), under a client loop of HTTP requests.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use heapwarden_tests::*;
use serde_json::Value;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const LEAK_FN: &str = "leak_on_purpose_for_heap_profile";

struct Setup {
    admin: SocketAddr,
    sandbox: Sandbox,
    agent: Proc,
    service: SocketAddr,
    config: std::path::PathBuf,
}

fn start(action: &str) -> Setup {
    let sandbox = Sandbox::new();
    let config = AgentConfig::new(2, &[])
        .set("pool", "min-uptime", "1s")
        .set("pool", "drain-timeout", "5s")
        .set("pool", "kill-timeout", "2s")
        .set("sampling", "interval", "250ms")
        .set("sampling", "pss-every", "4")
        .set("watchdog", "warmup", "3s")
        .set("watchdog", "max-memory", "1GiB")
        .set("watchdog", "growth", "off")
        .set("watchdog", "trend-window", "6s")
        .set("watchdog", "trend-min-rate", "1MiB/s")
        .set("watchdog", "action", action)
        .set("log", "level", "warn")
        .set("demo", "seed-rows", "100")
        .set("demo", "leak-rate", "6MiB")
        .set("demo", "leak-slots", "[1]");
    let agent = sandbox.agent(&config.to_string());
    let (service, admin) = (config.listen, config.admin);
    let config = sandbox.path().join("heapwarden.toml");
    // The log level is warn (the demo logs every request at info): poll /readyz.
    wait_until_ok(admin, "/readyz", SECS(60), &agent.logs);
    Setup {
        admin,
        sandbox,
        agent,
        service,
        config,
    }
}

fn cli(setup: &Setup, args: &[&str]) -> Value {
    cli_json(&setup.config, args).unwrap_or_else(|e| panic!("heapwarden {args:?}: {e}"))
}

fn go_pprof(args: &[&str]) -> String {
    let out = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .output()
        .expect("`go` is missing: install the Debian package golang-go");
    assert!(
        out.status.success(),
        "go tool pprof {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first function line of `go tool pprof -top` output.
fn top_entry(report: &str) -> String {
    report
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_leaking_worker_is_profiled_diffed_and_replaced_without_a_failed_request() {
    let _guard = TimeoutGuard::new("leak_replaced", SECS(150));
    let setup = start("restart");
    let logs = &setup.agent.logs;
    let clients = ClientLoop::start(setup.service, 4, |id| format!("/items/{}", id % 100 + 1));

    let detection = logs.wait_for(SECS(60), "leak detection on worker 1", |r| {
        r["msg"] == "A memory leak was detected." && r["worker"] == 1
    });
    assert_eq!(detection["rule"], "trend", "{detection}");
    let sites = detection["top_growing_sites"]
        .as_array()
        .expect("top sites");
    let top = sites
        .first()
        .and_then(|s| s["function"].as_str())
        .unwrap_or_default();
    assert!(
        top.contains(LEAK_FN),
        "top growing site names the leak: {sites:?}"
    );
    let leak_id = detection["profile_id"].as_u64().expect("leak profile id");
    let base_id = detection["baseline_profile_id"]
        .as_u64()
        .expect("baseline id");

    let replaced = logs.wait_for(SECS(30), "leak replacement of worker 1", |r| {
        r["msg"] == "A memory leak was detected." && r["worker"] == 1 && r["action"] == "restart"
    });
    assert_eq!(replaced["profile_id"], detection["profile_id"]);
    poll_until(SECS(30), "worker 1 replaced and ready", || {
        let workers = cli(&setup, &["ps"]);
        workers[1]["restarts"].as_u64().unwrap_or(0) >= 1 && workers[1]["ready"] == true
    });
    // Let the old worker drain and the new one serve for a while under load.
    let served = clients.ok.load(Ordering::Relaxed);
    poll_until(SECS(30), "300 more answers from the new worker", || {
        clients.ok.load(Ordering::Relaxed) >= served + 300
    });
    let (ok, failures) = clients.finish();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(ok > 300, "the client loop made progress ({ok})");
    let workers = cli(&setup, &["ps"]);
    assert_eq!(
        workers[0]["restarts"],
        0,
        "the healthy worker was left alone: {workers}\nagent log:\n{}",
        logs.raw()
    );

    // The on-call view: the diff names the leak, the files open in go tool pprof.
    let diff = cli(&setup, &["diff", &leak_id.to_string()]);
    assert!(
        diff["top"][0]["function"]
            .as_str()
            .unwrap_or_default()
            .contains(LEAK_FN),
        "{diff}"
    );
    let dir = setup.sandbox.path();
    let (leak, base) = (dir.join("leak.pb.gz"), dir.join("base.pb.gz"));
    cli(
        &setup,
        &["pull", &leak_id.to_string(), "-o", leak.to_str().unwrap()],
    );
    cli(
        &setup,
        &["pull", &base_id.to_string(), "-o", base.to_str().unwrap()],
    );
    let top = go_pprof(&["-top", leak.to_str().unwrap()]);
    assert!(
        top_entry(&top).contains(LEAK_FN),
        "go tool pprof -top:\n{top}"
    );
    let diff = go_pprof(&[
        "-top",
        "-base",
        base.to_str().unwrap(),
        leak.to_str().unwrap(),
    ]);
    assert!(
        top_entry(&diff).contains(LEAK_FN),
        "go tool pprof -top -base:\n{diff}"
    );
    let profiles = cli(&setup, &["profiles"]);
    let triggers: Vec<&str> = profiles
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["trigger"].as_str())
        .collect();
    assert!(
        triggers.contains(&"baseline") && triggers.contains(&"leak"),
        "{triggers:?}"
    );
}

#[test]
fn the_dry_run_writes_the_profile_and_restarts_nothing() {
    let _guard = TimeoutGuard::new("dry_run", SECS(120));
    let setup = start("profile-only");
    let logs = &setup.agent.logs;
    let detection = logs.wait_for(SECS(60), "leak detection", |r| {
        r["msg"] == "A memory leak was detected." && r["worker"] == 1
    });
    assert_eq!(detection["action"], "profile-only");
    let leak_id = detection["profile_id"]
        .as_u64()
        .expect("the leak profile was written");
    // Give a restart every chance to happen: 12 more sampling rounds (3 s at 250 ms),
    // counted by the agent itself, which covers a replacement and its drain.
    let rounds = || {
        let (_, body) = http_get(setup.admin, "/metrics", SECS(5)).expect("scrape /metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("heapwarden_sample_duration_seconds_count "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let start = rounds();
    poll_until(SECS(30), "12 more sampling rounds", || {
        rounds() >= start + 12.0
    });
    let workers = cli(&setup, &["ps"]);
    assert!(
        workers
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["restarts"] == 0),
        "{workers}"
    );
    let profiles = cli(&setup, &["profiles"]);
    assert!(
        profiles
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == leak_id && p["trigger"] == "leak"),
        "{profiles}"
    );
    let baselines = profiles
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["trigger"] == "baseline")
        .count();
    assert_eq!(baselines, 2, "a baseline per worker: {profiles}");
}
