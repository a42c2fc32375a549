//! SIGHUP re-reads the whole config: the pool scales up and down (scale-down drains),
//! leak rules change from the next sample, keys that need a restart are named and kept,
//! and a bad file changes nothing; `POST /api/v1/reload` and `heapwarden reload` answer
//! with the outcome (422 naming every key of a refused file).

use std::net::SocketAddr;
use std::time::Duration;

use heapwarden_tests::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// An agent whose config file the test rewrites between reloads.
struct Reloadable {
    sandbox: Sandbox,
    agent: Proc,
    admin: SocketAddr,
    port: u16,
}

impl Reloadable {
    fn start(body: &str) -> Reloadable {
        let sandbox = Sandbox::new();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let port = free_port();
        let agent = sandbox.agent(&Self::text(admin, port, body));
        Reloadable {
            sandbox,
            agent,
            admin,
            port,
        }
    }

    fn text(admin: SocketAddr, port: u16, body: &str) -> String {
        format!(
            "[admin]\nlisten = \"{admin}\"\n{}",
            body.replace("PORT", &port.to_string())
        )
    }

    /// Rewrites the file (what `Sandbox::agent` wrote, state-dir first) and sends SIGHUP.
    fn reload(&self, body: &str) {
        self.rewrite(body);
        self.agent.signal(Signal::SIGHUP);
    }

    fn rewrite(&self, body: &str) {
        let state = self.sandbox.path().join("state");
        let text = format!(
            "state-dir = {:?}\n{}",
            state.display().to_string(),
            Self::text(self.admin, self.port, body)
        );
        self.sandbox.write("heapwarden.toml", &text);
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.sandbox.path().join("state/admin-token"))
            .expect("the admin token")
            .trim()
            .to_string()
    }

    /// The API's worker rows; none while the agent is not up yet.
    fn workers(&self) -> Vec<Value> {
        let Ok(token) = std::fs::read_to_string(self.sandbox.path().join("state/admin-token"))
        else {
            return Vec::new();
        };
        let reply = http_request(
            self.admin,
            "GET",
            "/api/v1/workers",
            Some(token.trim()),
            b"",
            SECS(5),
        );
        match reply {
            Ok((200, body)) => serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .expect("a JSON array"),
            _ => Vec::new(),
        }
    }

    /// Waits until the pool has `n` slots, all ready.
    fn wait_ready_slots(&self, n: usize) -> Vec<i64> {
        poll(SECS(30), &format!("{n} ready slots"), || {
            let rows = self.workers();
            (rows.len() == n && rows.iter().all(|r| r["ready"] == true))
                .then(|| rows.iter().filter_map(|r| r["pid"].as_i64()).collect())
        })
    }

    fn reloads(&self) -> usize {
        self.agent
            .logs
            .matching(msg(
                "The config was reloaded; replacing every worker, one slot at a time.",
            ))
            .len()
    }
}

const POOL: &str = r#"
[pool]
workers = WORKERS
listen = "127.0.0.1:PORT"
command = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
min-uptime = "200ms"
drain-timeout = "2s"
kill-timeout = "1s"
"#;

fn pool(workers: usize) -> String {
    POOL.replace("WORKERS", &workers.to_string())
}

#[test]
fn reload_scales_the_pool_up_and_down() {
    let _guard = TimeoutGuard::new("reload_scale", SECS(90));
    let r = Reloadable::start(&pool(2));
    let two = r.wait_ready_slots(2);

    r.reload(&pool(3));
    r.agent.logs.wait_for(SECS(10), "the first reload", |rec| {
        rec["msg"] == "The config was reloaded; replacing every worker, one slot at a time."
    });
    // The rolling replacement gives both old slots a new worker; slot 2 starts new.
    r.agent
        .logs
        .wait_for_n(2, SECS(30), "two reload restarts", |rec| {
            rec["msg"] == "A worker slot restarted." && rec["reason"] == "reload"
        });
    let three = r.wait_ready_slots(3);
    assert!(
        three.iter().all(|p| !two.contains(p)),
        "{two:?} -> {three:?}"
    );

    let before = r.workers();
    let kept = before[0]["pid"].as_i64().unwrap() as i32;
    r.reload(&pool(1));
    poll_until(SECS(10), "the second reload", || r.reloads() == 2);
    r.agent
        .logs
        .wait_for_n(3, SECS(30), "slot 0 replaced again", |rec| {
            rec["msg"] == "A worker slot restarted." && rec["reason"] == "reload"
        });
    let one = r.wait_ready_slots(1);
    // Slots 1 and 2 were drained (SIGTERM to these plain workers) and are gone.
    for row in &before[1..] {
        let pid = row["pid"].as_i64().unwrap() as i32;
        assert!(
            wait_gone(pid, SECS(10)),
            "worker {pid} of a removed slot still runs"
        );
    }
    r.agent.logs.wait_for_n(
        2,
        SECS(10),
        "two drains finished",
        msg("A drained worker has exited."),
    );
    assert_ne!(one[0] as i32, kept, "slot 0 was replaced too");
    let starts = r.agent.logs.matching(msg("A worker started.")).len();
    assert_eq!(
        starts,
        2 + 1 + 2 + 1,
        "2 at first, 1 new slot, 2 + 1 replacements"
    );
}

#[test]
fn reload_applies_new_leak_rules_from_the_next_sample() {
    let _guard = TimeoutGuard::new("reload_rules", SECS(90));
    // A plain worker holding ~40 MiB; rules watch RSS, and max-memory is off at first.
    let body = |max_memory: &str| {
        format!(
            r#"
[pool]
workers = 1
listen = "127.0.0.1:PORT"
command = ["python3", "-c", "import time; x = bytearray(40 << 20); time.sleep(600)"]
min-uptime = "200ms"
[sampling]
interval = "200ms"
[watchdog]
watch = "rss"
warmup = "1s"
trend-window = "10s"
max-memory = "{max_memory}"
action = "profile-only"
"#
        )
    };
    let r = Reloadable::start(&body("off"));
    r.wait_ready_slots(1);
    // Samples of the 40 MiB with the rule off: nothing trips.
    poll_until(SECS(20), "RSS over 30 MiB sampled", || {
        r.workers()
            .first()
            .is_some_and(|w| w["rss_bytes"].as_u64().unwrap_or(0) > 30 << 20)
    });
    assert!(
        r.agent
            .logs
            .matching(msg("A leak rule tripped."))
            .is_empty()
    );
    r.reload(&body("20MiB"));
    r.agent.logs.wait_for(
        SECS(10),
        "the new rules",
        msg("The leak rules use new settings."),
    );
    let trip = r
        .agent
        .logs
        .wait_for(SECS(20), "a max-memory trip", msg("A leak rule tripped."));
    assert_eq!(trip["rule"], "max_memory", "{trip}");
    assert_eq!(trip["figure"], "rss", "{trip}");
}

#[test]
fn a_bad_file_is_refused_with_every_error_and_restart_only_keys_are_named() {
    let _guard = TimeoutGuard::new("reload_bad_file", SECS(90));
    let r = Reloadable::start(&pool(2));
    let pids = r.wait_ready_slots(2);
    let bad = pool(2)
        .replace("workers = 2", "workers = \"many\"")
        .replace("min-uptime = \"200ms\"", "min-uptime = \"soon\"");
    r.reload(&bad);
    let refused = r.agent.logs.wait_for(SECS(10), "the refusal", |rec| {
        rec["msg"] == "The reloaded config was refused; the running config stays."
    });
    assert_eq!(refused["errors"], 2, "{refused}");
    let errors = r
        .agent
        .logs
        .matching(msg("The reloaded config has an error."));
    let keys: Vec<&str> = errors.iter().filter_map(|e| e["key"].as_str()).collect();
    assert!(
        keys.contains(&"pool.workers") && keys.contains(&"pool.min-uptime"),
        "{keys:?}"
    );
    assert_eq!(r.wait_ready_slots(2), pids, "nothing was replaced");

    // A good file that also moves the service port: applied, but the port stays.
    let moved = pool(2).replace("127.0.0.1:PORT", &format!("127.0.0.1:{}", free_port()));
    r.reload(&moved);
    let restart = r
        .agent
        .logs
        .wait_for(SECS(10), "the restart-only key", |rec| {
            rec["msg"] == "A changed setting needs a restart to take effect."
        });
    assert_eq!(restart["key"], "pool.listen");
    poll_until(SECS(10), "the reload", || r.reloads() == 1);
    r.agent
        .logs
        .wait_for_n(2, SECS(30), "both slots rolled", |rec| {
            rec["msg"] == "A worker slot restarted." && rec["reason"] == "reload"
        });
    let now = r.wait_ready_slots(2);
    assert!(
        now.iter().all(|p| !pids.contains(p)),
        "rolled: {pids:?} -> {now:?}"
    );
    let service: SocketAddr = format!("127.0.0.1:{}", r.port).parse().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&service, SECS(2)).is_ok(),
        "the service socket is still on its port"
    );
}

#[test]
fn the_api_and_the_cli_answer_a_reload_with_its_outcome() {
    let _guard = TimeoutGuard::new("reload_answer", SECS(90));
    let r = Reloadable::start(&pool(2));
    let pids = r.wait_ready_slots(2);

    // A bad file: 422 naming every key, and nothing changes.
    r.rewrite(&pool(2).replace("workers = 2", "workers = -1"));
    let (status, body) = http_request(
        r.admin,
        "POST",
        "/api/v1/reload",
        Some(&r.token()),
        b"",
        SECS(10),
    )
    .expect("the reload answer");
    assert_eq!(status, 422, "{body}");
    let reply: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(reply["errors"][0]["key"], "pool.workers", "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or("")
            .contains("pool.workers"),
        "{reply}"
    );
    assert_eq!(r.wait_ready_slots(2), pids, "nothing was replaced");

    // A good one through the CLI: applied, and the key that needs a restart is named.
    let moved = pool(2).replace("127.0.0.1:PORT", &format!("127.0.0.1:{}", free_port()));
    r.rewrite(&moved);
    let out = std::process::Command::new(heapwarden())
        .arg("reload")
        .arg("-c")
        .arg(r.sandbox.path().join("heapwarden.toml"))
        .output()
        .expect("run the CLI");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("the config was reloaded"), "{stdout}");
    assert!(
        stdout.contains("pool.listen changed but needs a restart"),
        "{stdout}"
    );
    poll_until(SECS(10), "the reload", || r.reloads() == 1);
}

/// `systemctl reload` runs `heapwarden reload`: a file the CLI cannot even parse must
/// still reach the agent (its admin address and token come from the file leniently), so
/// the agent logs the refusal and the CLI exits 1 with the errors.
#[test]
fn the_cli_reaches_the_agent_with_a_file_it_cannot_load() {
    let _guard = TimeoutGuard::new("reload_unparsable", SECS(90));
    let r = Reloadable::start(&pool(1));
    let pids = r.wait_ready_slots(1);
    // Valid TOML where the CLI needs it (state-dir, [admin]), a broken line below.
    let state = r.sandbox.path().join("state");
    let broken = format!(
        "state-dir = {:?}\n[admin]\nlisten = \"{}\"\n[pool]\nworkers = = 2\n",
        state.display().to_string(),
        r.admin
    );
    r.sandbox.write("heapwarden.toml", &broken);
    let out = std::process::Command::new(heapwarden())
        .arg("reload")
        .arg("-c")
        .arg(r.sandbox.path().join("heapwarden.toml"))
        .env_remove("HEAPWARDEN_CONFIG")
        .output()
        .expect("run the CLI");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("HTTP 422"), "the agent answered: {stderr}");
    r.agent.logs.wait_for(
        SECS(10),
        "the refusal logged by the agent",
        msg("The reloaded config was refused; the running config stays."),
    );
    assert_eq!(r.wait_ready_slots(1), pids, "nothing was replaced");
}
