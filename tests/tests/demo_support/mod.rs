//! Shared helpers of the demo end-to-end tests: start `heapwarden-demo` alone (its own
//! port, state directory and config), a private `redis-server`, an HTTP client that
//! returns 4xx/5xx as values, and a PostgreSQL schema per test run.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

pub use heapwarden_tests::poll;
use heapwarden_tests::{Proc, Sandbox, free_port, heapwarden_demo, msg};

pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A standalone demo worker; SIGKILLed on drop.
pub struct Demo {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Demo {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Writes the config (`[demo]` lines from the caller) and starts `heapwarden-demo` on a
/// free port with its state directory in the sandbox, waiting until it serves.
pub fn start_demo(sandbox: &Sandbox, demo_toml: &str, extra_args: &[&str]) -> Demo {
    start_demo_on(sandbox, free_port(), demo_toml, extra_args)
}

pub fn start_demo_on(sandbox: &Sandbox, port: u16, demo_toml: &str, extra_args: &[&str]) -> Demo {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let state = sandbox.path().join("state");
    let text = format!("[demo]\n{demo_toml}\n");
    let config = sandbox.write("demo.toml", &text);
    let mut command = Command::new(heapwarden_demo());
    command
        .arg("-c")
        .arg(config)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--state-dir")
        .arg(&state)
        .args(extra_args);
    // Run alone: none of an agent's context may leak in from the test's environment.
    for var in [
        "LISTEN_FDS",
        "LISTEN_PID",
        "HEAPWARDEN_CONTROL_FD",
        heapwarden_probes::SLOT_ENV,
        heapwarden_probes::POOL_SIZE_ENV,
        heapwarden_probes::STATE_DIR_ENV,
        heapwarden_probes::CONFIG_ENV,
        heapwarden_probes::LOG_LEVEL_ENV,
        heapwarden_probes::LOG_REDACT_ENV,
    ] {
        command.env_remove(var);
    }
    let proc = Proc::spawn(command);
    proc.logs.wait_for(
        START_TIMEOUT,
        "the demo to serve",
        msg("The demo worker is serving."),
    );
    Demo { proc, addr }
}

pub use heapwarden_tests::http::{Reply, client};

/// `method url` with optional headers and body; panics only on transport errors.
pub fn call(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    try_call(method, url, headers, body).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

pub fn try_call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Reply, ureq::Error> {
    let agent = client(Duration::from_secs(20));
    heapwarden_tests::http::fetch(&agent, method, url, headers, body.map(str::as_bytes))
}

pub fn get(url: &str) -> Reply {
    call("GET", url, &[], None)
}

/// The value of the first sample of `name` whose label set contains every `labels` pair.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A private redis-server on its own port, never the shared one. Killed on drop.
pub struct RedisServer {
    pub proc: Proc,
    pub port: u16,
}

impl RedisServer {
    pub fn start_on(port: u16) -> RedisServer {
        let mut command = Command::new("redis-server");
        command.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        let proc = Proc::spawn(command);
        poll(
            Duration::from_secs(10),
            "redis-server to answer PING",
            || redis_ping(port).then_some(()),
        );
        RedisServer { proc, port }
    }

    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

pub fn redis_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// The service URL from the environment, or None (the caller prints "skipped").
pub fn service_env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// A fresh schema in the test database; returns a URL whose connections use it.
pub fn pg_schema(base_url: &str, tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let schema = format!("hw_{tag}_{}_{nanos}", std::process::id());
    let status = Command::new("psql")
        .arg(base_url)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            &format!("CREATE SCHEMA {schema}"),
        ])
        .status()
        .expect("psql (Debian package postgresql-client) is required");
    assert!(
        status.success(),
        "creating schema {schema} failed; is PostgreSQL at {base_url} up?"
    );
    let sep = if base_url.contains('?') { '&' } else { '?' };
    format!("{base_url}{sep}options=-csearch_path%3D{schema}")
}

/// Counts the NDJSON lines of a streamed body, checking each parses.
pub fn count_ndjson(url: &str) -> usize {
    let agent = client(Duration::from_secs(120));
    let response = agent.get(url).call().expect("export request");
    assert_eq!(response.status().as_u16(), 200);
    let reader = BufReader::new(response.into_body().into_reader());
    let mut n = 0;
    for line in reader.lines() {
        let line = line.expect("export body");
        serde_json::from_str::<serde_json::Value>(&line).expect("each line is JSON");
        n += 1;
    }
    n
}
