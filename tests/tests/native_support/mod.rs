//! Shared helpers of the native-probe end-to-end tests: compile the C worker with the
//! system compiler, start the real agent with `probe = "native"` on a given command, and
//! read what it reports (CLI JSON, log records, the profile store).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use heapwarden_tests::tools::{assert_success, repo_root, run_tool};
use heapwarden_tests::{Proc, Sandbox, bin, cli_json, free_port, heapwarden};
use serde_json::Value;

pub const SECS: fn(u64) -> Duration = Duration::from_secs;
/// The preload's line when it attaches in a worker (relayed by the agent).
pub const ATTACHED: &str = "The heapwarden native probe is attached.";

/// `tests/native/<name>`.
pub fn source(name: &str) -> PathBuf {
    repo_root().join("tests/native").join(name)
}

/// Compiles `tests/native/worker.c` into the sandbox with `cc -O1 -g` (plus `extra`),
/// against the preload's header (`probes/preload/include/heapwarden.h`).
pub fn compile_worker(sandbox: &Sandbox, name: &str, extra: &[&str]) -> PathBuf {
    let out = sandbox.path().join(name);
    let include = repo_root().join("probes/preload/include");
    let mut cc = Command::new("cc");
    cc.args(["-O1", "-g", "-Wall"])
        .arg("-I")
        .arg(include)
        .args(extra)
        .arg(source("worker.c"))
        .arg("-o")
        .arg(&out);
    let output = run_tool(cc, "gcc");
    assert_success("cc worker.c", &output);
    out
}

/// The preload library the agent will find next to itself (put there by
/// `heapwarden-preload-build`, a member of the root workspace: `cargo build --workspace`).
pub fn assert_preload_built() {
    let library = heapwarden().with_file_name("libheapwarden_preload.so");
    assert!(
        library.is_file(),
        "{} is missing: build it first (cargo build --workspace)",
        library.display()
    );
    let _ = bin("heapwarden");
}

pub struct NativeAgent {
    pub sandbox: Sandbox,
    pub agent: Proc,
    pub admin: SocketAddr,
    pub config: PathBuf,
}

/// Starts the agent on `command` (TOML array text) with `probe = "native"`, sampling
/// every 100 ms, and `extra` appended (sections of its own: `[pool.env]`, `[watchdog]`).
pub fn start_native(sandbox: Sandbox, workers: usize, command: &str, extra: &str) -> NativeAgent {
    start_native_ready_after(sandbox, workers, command, "1s", extra)
}

/// [`start_native`] with another `min-uptime`: a long one leaves readiness to the
/// program's own sd_notify `READY=1` (gunicorn sends it once it serves).
pub fn start_native_ready_after(
    sandbox: Sandbox,
    workers: usize,
    command: &str,
    min_uptime: &str,
    extra: &str,
) -> NativeAgent {
    assert_preload_built();
    let admin = free_port();
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
[pool]
workers = {workers}
command = {command}
probe = "native"
listen = "127.0.0.1:{port}"
min-uptime = "{min_uptime}"
drain-timeout = "5s"
kill-timeout = "2s"
[sampling]
interval = "100ms"
pss-every = 10
{extra}
"#,
        port = free_port()
    );
    let agent = sandbox.agent(&text);
    let config = sandbox.path().join("heapwarden.toml");
    NativeAgent {
        admin: format!("127.0.0.1:{admin}").parse().unwrap(),
        sandbox,
        agent,
        config,
    }
}

impl NativeAgent {
    /// Runs a CLI verb against this agent and returns its JSON.
    pub fn cli(&self, args: &[&str]) -> Value {
        cli_json(&self.config, args).unwrap_or_else(|e| {
            panic!(
                "heapwarden {args:?}: {e}\nagent log:\n{}",
                self.agent.logs.raw()
            )
        })
    }

    /// `heap_allocated_bytes` of every slot, once every slot reports one.
    pub fn heap_of_every_slot(&self) -> Option<Vec<u64>> {
        let rows = self.cli(&["ps"]);
        rows.as_array()?
            .iter()
            .map(|r| r["heap_allocated_bytes"].as_u64())
            .collect()
    }

    pub fn profiles_dir(&self) -> PathBuf {
        self.sandbox.path().join("state/profiles")
    }

    /// Log records of the agent that come from the worker in `slot` with `msg`.
    pub fn worker_records(&self, slot: u64, msg: &str) -> Vec<Value> {
        self.agent
            .logs
            .matching(|r| r["msg"] == msg && r["worker"] == slot)
    }
}

/// `go tool pprof` with its scratch files in `dir`.
pub fn go_pprof(dir: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new("go");
    cmd.args(["tool", "pprof"])
        .args(args)
        .env("PPROF_TMPDIR", dir)
        .env("HOME", dir);
    let output = run_tool(cmd, "golang-go");
    assert_success("go tool pprof", &output);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The function column of the first row of a `-top` table that grew (a flat above
/// zero). pprof orders a `-base` diff by size, shrinking included: between two sampled
/// profiles a churning working set can shrink by more than the leak grew (CI saw -9.66 MB
/// of it against the leak's +8.32 MB). A plain `-top` has only rows above zero.
pub fn top_entry(table: &str) -> String {
    table
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .map(str::split_whitespace)
        .find_map(|mut row| {
            let flat = row.next()?;
            (flat != "0" && !flat.starts_with('-')).then(|| row.nth(4))?
        })
        .unwrap_or_default()
        .to_string()
}
