//! The PM2 path as written: `tests/node/pm2/ecosystem.config.js` migrated by the table
//! (`tests/node/pm2/heapwarden.toml`, with `env.PORT` → `[pool] listen` and PM2's
//! numbers and booleans kept in `[pool.env]`) passes `check-config` without a warning
//! and serves on both workers. Copying `PORT` into `[pool.env]` instead is warned about
//! by `check-config`, and the worker that then never becomes ready is killed, logged and
//! counted as `ready_timeout`.

mod node_support;

use std::collections::BTreeSet;
use std::process::Command;

use heapwarden_tests::*;
use node_support::*;

const SERVER_JS: &str = include_str!("../node/pm2/server.js");
const MIGRATED: &str = include_str!("../node/pm2/heapwarden.toml");

/// The migrated file with the test's ports and directory; `extra_env` goes under
/// `[pool.env]`, `extra_pool` under `[pool]`.
fn migrated(sandbox: &Sandbox, port: u16, admin: u16, extra_pool: &str, extra_env: &str) -> String {
    let cwd = sandbox.path().display().to_string();
    MIGRATED
        .replace("127.0.0.1:3000", &format!("127.0.0.1:{port}"))
        .replace("[pool]\n", &format!("[pool]\ncwd = {cwd:?}\n{extra_pool}"))
        .replace("[pool.env]", &format!("[pool.env]\n{extra_env}"))
        + &format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\nlevel = \"info\"\n")
}

fn check_config(sandbox: &Sandbox, text: &str) -> (bool, String) {
    let state = sandbox.path().join("state");
    let path = sandbox.write(
        "check.toml",
        &format!("state-dir = {:?}\n{text}", state.display().to_string()),
    );
    let out = Command::new(heapwarden())
        .args(["check-config", "-c"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_migrated_ecosystem_config_serves_on_both_workers() {
    require_node();
    let _guard = TimeoutGuard::new("pm2 migration", SECS(120));
    let sandbox = Sandbox::new();
    sandbox.write("server.js", SERVER_JS);
    let (port, admin) = (free_port(), free_port());
    let text = migrated(&sandbox, port, admin, "", "");
    let (ok, stderr) = check_config(&sandbox, &text);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");

    let agent = sandbox.agent(&text);
    let admin = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_until_ok(admin, "/readyz", SECS(60), &agent.logs);
    let service = format!("127.0.0.1:{port}").parse().unwrap();
    let mut pids = BTreeSet::new();
    // Each request on a new connection; the kernel hands connections to whichever worker
    // accepts first, so ask until both have answered.
    poll(SECS(60), "answers from both workers", || {
        let (status, body) = http_get(service, "/", SECS(10)).ok()?;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["nodeEnv"], "production", "{body}");
        assert_eq!(v["audit"], "true", "{body}");
        pids.insert(v["pid"].as_u64().unwrap());
        (pids.len() == 2).then_some(())
    });
    let workers: BTreeSet<u64> = worker_pids(&agent.logs).iter().map(|&p| p as u64).collect();
    assert!(pids.is_subset(&workers), "{pids:?} vs {workers:?}");
    assert!(
        agent.logs.matching(msg("A worker exited.")).is_empty(),
        "no worker crashed"
    );
}

#[test]
fn port_copied_into_pool_env_is_warned_and_the_kill_is_a_ready_timeout() {
    require_node();
    let _guard = TimeoutGuard::new("pm2 port mistake", SECS(120));
    let sandbox = Sandbox::new();
    sandbox.write("server.js", SERVER_JS);
    let (port, admin, own) = (free_port(), free_port(), free_port());
    let text = migrated(&sandbox, port, admin, "", &format!("PORT = {own}"))
        .replace("ready-timeout = \"8s\"", "ready-timeout = \"3s\"");
    let (ok, stderr) = check_config(&sandbox, &text);
    assert!(ok, "a warning, not an error: {stderr}");
    assert!(
        stderr.contains("config warning: pool.env.PORT") && stderr.contains(&own.to_string()),
        "{stderr}"
    );

    let agent = sandbox.agent(&text);
    agent.logs.wait_for(
        SECS(30),
        "the start-up warning",
        msg("A setting is valid but probably not what was meant."),
    );
    let killed = agent.logs.wait_for(
        SECS(60),
        "the ready-timeout kill",
        msg("A worker was not ready within ready-timeout; it is killed."),
    );
    assert_eq!(killed["ready_timeout_seconds"], 3.0, "{killed}");
    let restarted = agent.logs.wait_for(SECS(30), "the counted restart", |r| {
        r["msg"] == "A worker slot restarted." && r["reason"] == "ready_timeout"
    });
    let slot = restarted["worker"].to_string();
    let admin = format!("127.0.0.1:{admin}").parse().unwrap();
    let series =
        format!("heapwarden_worker_restarts_total{{worker=\"{slot}\",reason=\"ready_timeout\"}}");
    poll(SECS(10), "the ready_timeout counter", || {
        let (_, metrics) = http_get(admin, "/metrics", SECS(10)).ok()?;
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&series))?
            .to_string();
        let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
        (value >= 1.0).then_some(())
    });
    assert!(
        agent
            .logs
            .matching(|r| r["msg"] == "A worker slot restarted." && r["reason"] == "unhealthy")
            .is_empty(),
        "not counted as unhealthy"
    );
}
