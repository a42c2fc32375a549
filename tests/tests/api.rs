//! End-to-end tests of the admin API's edges (auth, bad ids, path escapes, body limits),
//! the CLI's errors, and the replacement of a worker that stops answering.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use heapwarden_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    http_request(addr, method, path, token, body, SECS(30))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn probe_agent(sandbox: &Sandbox, config: AgentConfig) -> (Proc, SocketAddr, String) {
    let agent = sandbox.agent(&config.to_string());
    agent
        .logs
        .wait_for(SECS(20), "all ready", msg("Every worker is ready."));
    let token = std::fs::read_to_string(sandbox.path().join("state/admin-token")).expect("token");
    (agent, config.admin, token.trim().to_string())
}

/// One probe-worker that drains and dies quickly.
fn probe_config() -> AgentConfig {
    let worker = bin("probe-worker").display().to_string();
    AgentConfig::new(1, &[&worker])
        .set("pool", "drain-timeout", "1s")
        .set("pool", "kill-timeout", "1s")
}

#[test]
fn the_api_refuses_bad_input_with_clear_statuses() {
    let _guard = TimeoutGuard::new("api_edges", SECS(60));
    let sandbox = Sandbox::new();
    let (_agent, admin, token) = probe_agent(&sandbox, probe_config());
    let t = Some(token.as_str());
    assert_eq!(call(admin, "GET", "/api/v1/workers", None, b"").0, 401);
    assert_eq!(
        call(admin, "GET", "/api/v1/workers", Some("wrong"), b"").0,
        401
    );
    assert_eq!(call(admin, "GET", "/api/v1/workers", t, b"").0, 200);
    assert_eq!(
        call(admin, "GET", "/metrics", None, b"").0,
        200,
        "metrics are open by default"
    );
    let (status, body) = call(admin, "POST", "/api/v1/workers/0/profile", t, b"");
    assert_eq!(status, 201, "{body}");
    for (path, want) in [
        ("/api/v1/profiles/abc", 400),
        ("/api/v1/profiles/-1", 400),
        ("/api/v1/profiles/99999999999999999999999", 400),
        ("/api/v1/profiles/999", 404),
        ("/api/v1/profiles/1/diff?base=xyz", 400),
        ("/api/v1/profiles/999/diff", 404),
        ("/api/v1/nothing-here", 404),
    ] {
        let (status, body) = call(admin, "GET", path, t, b"");
        assert_eq!(status, want, "{path}: {body}");
        assert!(
            body.contains("\"error\""),
            "{path} answers a JSON error: {body}"
        );
    }
    for escape in [
        "/api/v1/profiles/..%2F..%2Fadmin-token",
        "/api/v1/profiles/1%2F..%2Findex.json",
        "/api/v1/profiles/%2e%2e",
        "/api/v1/profiles/../../admin-token",
    ] {
        let (status, body) = call(admin, "GET", escape, t, b"");
        assert!(matches!(status, 400 | 404), "{escape} -> {status}");
        assert!(!body.contains(&token), "{escape} leaked the token");
    }
    assert_eq!(
        call(admin, "POST", "/api/v1/workers/x/profile", t, b"").0,
        400
    );
    assert_eq!(
        call(admin, "POST", "/api/v1/workers/9/restart", t, b"").0,
        404
    );
    // Raw: the server answers 413 and may reset before reading the body, which a client
    // library reports as a write error rather than the answer.
    let head = format!(
        "POST /api/v1/reload HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}",
        token.trim()
    );
    let oversized = raw_request(admin, &head, &vec![b'a'; 100 * 1024], SECS(30));
    assert_eq!(oversized.expect("an answer").0, 413);
    let (status, bytes) = call(admin, "GET", "/api/v1/profiles/1", t, b"");
    assert_eq!(status, 200);
    assert!(!bytes.is_empty());
}

#[test]
fn a_group_readable_token_file_is_refused_at_start() {
    let _guard = TimeoutGuard::new("token_mode", SECS(30));
    let sandbox = Sandbox::new();
    let token = sandbox.write("token", "s3cret-token-value\n");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = AgentConfig::new(1, &["sleep", "100"]).set(
        "admin",
        "token-file",
        &token.display().to_string(),
    );
    let mut agent = sandbox.agent(&config.to_string());
    let status = agent
        .wait_exit(SECS(10))
        .expect("the agent refuses to start");
    assert!(!status.success());
    let log = agent.logs.raw();
    assert!(
        log.contains(&token.display().to_string()) && log.contains("644"),
        "{log}"
    );
    assert!(!log.contains("A worker started."), "nothing was started");
}

#[test]
fn the_cli_says_in_one_line_when_the_agent_is_down() {
    let out = Command::new(heapwarden())
        .args([
            "ps",
            "--admin-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--state-dir",
        ])
        .arg(std::env::temp_dir())
        .env("HEAPWARDEN_ADMIN_TOKEN_FILE", "/dev/null")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach the agent"), "{err}");
}

/// `heapwarden ps --json | head -1`: a reader that goes away ends the verb quietly
/// (it panicked in `println!` with "failed printing to stdout: Broken pipe").
#[test]
fn the_cli_ends_quietly_when_its_reader_goes_away() {
    let _guard = TimeoutGuard::new("cli_broken_pipe", SECS(60));
    let sandbox = Sandbox::new();
    let (_agent, _admin, _token) = probe_agent(&sandbox, probe_config());
    for args in [&["ps", "--json"][..], &["ps"], &["profiles"]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(heapwarden())
            .args(args)
            .arg("-c")
            .arg(sandbox.path().join("heapwarden.toml"))
            .stdout(writer)
            .output()
            .expect("run the CLI");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

#[test]
fn a_worker_that_stops_answering_is_replaced_as_unhealthy() {
    let _guard = TimeoutGuard::new("unhealthy", SECS(60));
    let sandbox = Sandbox::new();
    let config =
        probe_config()
            .set("sampling", "interval", "200ms")
            .set("sampling", "missed-pings", "3");
    let (agent, _admin, _token) = probe_agent(&sandbox, config);
    let pid = agent
        .logs
        .wait_for(SECS(5), "worker start", msg("A worker started."))["pid"]
        .as_i64()
        .unwrap() as i32;
    let stopped = Instant::now();
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let restart = agent.logs.wait_for(SECS(20), "unhealthy restart", |r| {
        r["msg"] == "A worker slot restarted." && r["reason"] == "unhealthy"
    });
    assert_eq!(restart["worker"], 0);
    assert!(
        stopped.elapsed() < SECS(10),
        "replaced after a few missed samples"
    );
    assert!(wait_gone(pid, SECS(10)), "the stopped worker was killed");
}
