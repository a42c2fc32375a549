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

/// Starts an agent whose pool runs `command` in a sandbox holding the test app; `extra`
/// is TOML appended after the `[pool]` keys (more `[pool]` keys, then other sections).
pub fn start(command: &str, workers: usize, extra: &str) -> NodeSetup {
    require_node();
    let sandbox = Sandbox::new();
    sandbox.write("app.js", APP_JS);
    sandbox.write("child.js", CHILD_JS);
    sandbox.write("package.json", PACKAGE_JSON);
    sandbox.write("hostile.js", HOSTILE_JS);
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
        let out = Command::new(heapwarden())
            .args(args)
            .arg("--json")
            .arg("-c")
            .arg(&self.config)
            .current_dir(self.sandbox.path())
            .output()
            .expect("run the CLI");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(serde_json::from_slice(&out.stdout).expect("CLI JSON"))
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
