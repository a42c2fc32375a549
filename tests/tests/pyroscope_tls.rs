//! Profiles to an `https://` Pyroscope: the test receiver served over TLS with a
//! certificate from a CA made for the test (`heapwarden_tests::tls`), the real agent and
//! demo. Trusting that CA through `export.pyroscope.ca-file`, profiles arrive (with HTTP
//! Basic auth from `username` and `token-file`, as Grafana Cloud takes it); trusting
//! another CA, every attempt fails its handshake and is retried with a log that names the
//! refused certificate and the setting, while dumps go on unhindered — and a reload with
//! the right CA delivers the waiting profile. A `ca-file` that holds no certificate is a
//! config error naming the key (exit 64).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use heapwarden_tests::pyroscope::Receiver;
use heapwarden_tests::tls::TestCa;
use heapwarden_tests::*;
use serde_json::Value;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// One demo worker, no baseline (warm-up of an hour): only the test's dumps are pushed.
fn tls_config(url: &str, ca_file: &Path) -> AgentConfig {
    AgentConfig::new(1, &[])
        .set("pool", "min-uptime", "1s")
        .set("watchdog", "warmup", "1h")
        .set("demo", "seed-rows", "20")
        .set("export.pyroscope", "url", url)
        .set("export.pyroscope", "service-name", "shop")
        .set("export.pyroscope", "timeout", "5s")
        .set(
            "export.pyroscope",
            "ca-file",
            &ca_file.display().to_string(),
        )
}

struct Agent {
    proc: Proc,
    config: PathBuf,
    admin: SocketAddr,
}

fn start(sandbox: &Sandbox, config: &AgentConfig) -> Agent {
    let proc = sandbox.agent(&config.to_string());
    wait_until_ok(config.admin, "/readyz", SECS(60), &proc.logs);
    Agent {
        proc,
        config: sandbox.path().join("heapwarden.toml"),
        admin: config.admin,
    }
}

impl Agent {
    fn cli(&self, args: &[&str]) -> Value {
        cli_json(&self.config, args).unwrap_or_else(|e| panic!("heapwarden {args:?}: {e}"))
    }

    fn dump(&self) -> u64 {
        self.cli(&["dump", "0"])["id"].as_u64().expect("profile id")
    }

    fn exports(&self, outcome: &str) -> f64 {
        let (_, page) = http_get(self.admin, "/metrics", SECS(5)).expect("scrape /metrics");
        let series = format!("heapwarden_profile_exports_total{{outcome=\"{outcome}\"}} ");
        page.lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
    }
}

#[test]
fn profiles_reach_an_https_sink_whose_certificate_chains_to_the_ca_file() {
    let _guard = TimeoutGuard::new("pyroscope_tls", SECS(120));
    let ca = TestCa::new("heapwarden test CA");
    let receiver = Receiver::start_tls(&ca);
    assert!(receiver.url().starts_with("https://127.0.0.1:"));
    let sandbox = Sandbox::new();
    let ca_file = ca.write_ca(sandbox.path(), "ca.pem");
    // Grafana Cloud's way: HTTP Basic with the stack's user and a token as password.
    let token = sandbox.write("pyroscope-token", "glc_secret\n");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod the token");
    let config = tls_config(&receiver.url(), &ca_file)
        // Bare, as Grafana Cloud's numeric user is written (and as the env override reads it).
        .set("export.pyroscope", "username", "1234")
        .set(
            "export.pyroscope",
            "token-file",
            &token.display().to_string(),
        );
    let agent = start(&sandbox, &config);

    let ids = [agent.dump(), agent.dump()];
    let received = receiver.wait_for(2, SECS(60));
    assert_eq!(received.len(), 2);
    for r in &received {
        assert_eq!(r.label("service_name"), "shop", "{:?}", r.labels);
        assert_eq!(r.label("trigger"), "manual");
        assert_eq!(r.label("worker"), "0");
        assert_eq!(
            r.authorization, "Basic MTIzNDpnbGNfc2VjcmV0",
            "1234:glc_secret"
        );
        // Received means the gzipped pprof decoded, as over http.
        assert!(r.time_nanos > 0, "the profile's own time came through");
    }
    for id in ids {
        agent.proc.logs.wait_for(SECS(30), "the sent record", |r| {
            r["msg"] == "A heap profile reached Pyroscope." && r["profile_id"] == id
        });
    }
    assert_eq!(agent.exports("sent"), 2.0);
    assert_eq!(agent.exports("retried"), 0.0, "the first handshake worked");
    assert_eq!(receiver.attempts().len(), 2);
}

#[test]
fn a_sink_the_ca_file_does_not_trust_is_retried_with_a_clear_log_and_never_blocks_a_dump() {
    let _guard = TimeoutGuard::new("pyroscope_tls_wrong_ca", SECS(150));
    let sink_ca = TestCa::new("the sink's CA");
    let other_ca = TestCa::new("another CA");
    let receiver = Receiver::start_tls(&sink_ca);
    let sandbox = Sandbox::new();
    let wrong = other_ca.write_ca(sandbox.path(), "wrong-ca.pem");
    let config = tls_config(&receiver.url(), &wrong);
    let agent = start(&sandbox, &config);

    let id = agent.dump();
    let failed = agent.proc.logs.wait_for(SECS(30), "the failed push", |r| {
        r["msg"]
            == "A profile could not be pushed to Pyroscope; retrying with backoff until it is older than an hour."
    });
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("TLS handshake")
            && reason.contains("UnknownIssuer")
            && reason.contains(&format!("export.pyroscope.ca-file {}", wrong.display())),
        "the log says why and which setting decides: {failed}"
    );
    assert_eq!(failed["profile_id"], id);
    // Retried (each attempt a new handshake the sink sees fail), never sent.
    receiver.wait_for_handshake_failures(2, SECS(30));
    assert!(agent.exports("retried") >= 1.0);
    assert!(receiver.received().is_empty());
    assert!(
        receiver.attempts().is_empty(),
        "no request over an untrusted TLS"
    );
    // The dump path never waits on the sink: dumps return while pushes fail.
    for _ in 0..3 {
        let started = Instant::now();
        agent.dump();
        assert!(
            started.elapsed() < SECS(10),
            "a dump took {:?} while the sink's certificate was refused",
            started.elapsed()
        );
    }

    // The right CA, by reload: the waiting profiles go, the first one first.
    let right = sink_ca.write_ca(sandbox.path(), "ca.pem");
    let fixed = config.set("export.pyroscope", "ca-file", &right.display().to_string());
    let state = sandbox.path().join("state");
    std::fs::write(
        &agent.config,
        format!("state-dir = {:?}\n{fixed}", state.display().to_string()),
    )
    .expect("rewrite the config");
    agent.cli(&["reload"]);
    let received = receiver.wait_for(4, SECS(60));
    assert_eq!(received.len(), 4, "each waiting profile once");
    agent
        .proc
        .logs
        .wait_for(SECS(30), "the first profile sent", |r| {
            r["msg"] == "A heap profile reached Pyroscope." && r["profile_id"] == id
        });
}

#[test]
fn a_ca_file_without_a_certificate_is_a_config_error_naming_the_key() {
    let sandbox = Sandbox::new();
    let not_pem = sandbox.write("ca.pem", "not a certificate\n");
    let config = tls_config("https://127.0.0.1:4040", &not_pem);
    let state = sandbox.path().join("state");
    let path = sandbox.write(
        "heapwarden.toml",
        &format!("state-dir = {:?}\n{config}", state.display().to_string()),
    );
    let out = std::process::Command::new(heapwarden())
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("export.pyroscope.ca-file") && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
}
