//! Shared setup of the Node end-to-end tests: a sandbox holding the test app
//! (`tests/node/*.js`), an agent running it under the real Node probe, and the CLI.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use heapwarden_tests::*;
use serde_json::Value;

pub const SECS: fn(u64) -> Duration = Duration::from_secs;
pub const APP_JS: &str = include_str!("../../node/app.js");
pub const CHILD_JS: &str = include_str!("../../node/child.js");
pub const PACKAGE_JSON: &str = include_str!("../../node/package.json");
pub const HOSTILE_JS: &str = include_str!("../../node/hostile.js");

pub struct NodeSetup {
    pub sandbox: Sandbox,
    pub agent: Proc,
    pub service: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
}

/// Node must be installed (scripts/test installs it from Debian): a test never skips.
pub fn require_node() {
    let out = Command::new("node").arg("--version").output();
    assert!(
        out.as_ref().is_ok_and(|o| o.status.success()),
        "node is not installed: run ./scripts/test, which installs nodejs and npm"
    );
}

/// Where the framework tests' npm packages (Express 5, Fastify 5) live: outside the
/// repository, shared by runs. `HEAPWARDEN_TEST_NPM_DIR` overrides.
pub fn npm_dir() -> PathBuf {
    std::env::var_os("HEAPWARDEN_TEST_NPM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/heapwarden-npm"))
}

/// The `node_modules` holding Express 5 and Fastify 5, installed from npm when missing
/// (scripts/test does it first; this keeps a lone `cargo test` working).
pub fn framework_modules() -> PathBuf {
    require_node();
    let dir = npm_dir();
    let modules = dir.join("node_modules");
    if modules.join("express").is_dir() && modules.join("fastify").is_dir() {
        return modules;
    }
    std::fs::create_dir_all(&dir).expect("create the npm cache dir");
    if !dir.join("package.json").exists() {
        std::fs::write(
            dir.join("package.json"),
            r#"{"name":"heapwarden-test-frameworks","private":true}"#,
        )
        .expect("write package.json");
    }
    let out = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "express@5",
            "fastify@5",
        ])
        .current_dir(&dir)
        .output()
        .expect("run npm (scripts/test installs it)");
    assert!(
        out.status.success(),
        "npm install express@5 fastify@5 in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    modules
}

/// Starts an agent whose pool runs `command` in a sandbox holding the test app; `extra`
/// is TOML appended after the `[pool]` keys (more `[pool]` keys, then other sections).
pub fn start(command: &str, workers: usize, extra: &str) -> NodeSetup {
    let files = [
        ("app.js", APP_JS),
        ("child.js", CHILD_JS),
        ("package.json", PACKAGE_JSON),
        ("hostile.js", HOSTILE_JS),
    ];
    start_with(&files, None, command, workers, extra)
}

/// [`start`] with the sandbox holding `files`, and `node_modules` linked to `modules`.
pub fn start_with(
    files: &[(&str, &str)],
    modules: Option<&std::path::Path>,
    command: &str,
    workers: usize,
    extra: &str,
) -> NodeSetup {
    require_node();
    let sandbox = Sandbox::new();
    for (name, text) in files {
        sandbox.write(name, text);
    }
    if let Some(modules) = modules {
        std::os::unix::fs::symlink(modules, sandbox.path().join("node_modules"))
            .expect("link node_modules");
    }
    let (port, admin) = (free_port(), free_port());
    let cwd = sandbox.path().display().to_string();
    let agent = sandbox.agent(&format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
[pool]
workers = {workers}
command = {command}
cwd = {cwd:?}
listen = "127.0.0.1:{port}"
min-uptime = "1s"
drain-timeout = "5s"
kill-timeout = "2s"
{extra}
"#
    ));
    let config = sandbox.path().join("heapwarden.toml");
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_until_ok(admin, "/readyz", SECS(60), &agent.logs);
    NodeSetup {
        service: format!("127.0.0.1:{port}").parse().unwrap(),
        admin,
        sandbox,
        agent,
        config,
    }
}

impl NodeSetup {
    /// Runs `heapwarden ARGS --json -c CONFIG`; returns its JSON or its error line.
    pub fn cli(&self, args: &[&str]) -> Result<Value, String> {
        cli_json(&self.config, args)
    }

    /// `GET` of an admin API path with the agent's token; its JSON or what came instead.
    pub fn api_json(&self, path: &str) -> Result<Value, String> {
        let token = std::fs::read_to_string(self.sandbox.path().join("state/admin-token"))
            .map_err(|e| e.to_string())?;
        match http_request(self.admin, "GET", path, Some(token.trim()), b"", SECS(60)) {
            Ok((200, body)) => serde_json::from_str(&body).map_err(|e| e.to_string()),
            other => Err(format!("{other:?}")),
        }
    }

    pub fn workers(&self) -> Vec<Value> {
        self.cli(&["ps"]).expect("ps").as_array().unwrap().clone()
    }

    /// The app's own view of its memory (`/mem`), from whichever worker answers.
    pub fn app_mem(&self) -> Value {
        let (status, body) = http_get(self.service, "/mem", SECS(10)).expect("GET /mem");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("mem JSON")
    }

    pub fn profiles(&self) -> Vec<Value> {
        self.cli(&["profiles"])
            .expect("profiles")
            .as_array()
            .unwrap()
            .clone()
    }
}
