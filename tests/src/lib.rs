//! Shared harness of the end-to-end tests: spawns the real `heapwarden` binary (and test
//! workers) with a parent-death signal, collects its JSON log lines, and waits for
//! events with deadlines so a hang fails the test instead of blocking CI. A spawned
//! process is stopped as an operator would stop it (SIGTERM, a bounded wait, then
//! SIGKILL) and carries a mark in its environment that its descendants inherit
//! (`leftovers`), so the suite can end by checking that nothing a test started outlived
//! the test.

#![allow(unsafe_code)]

pub mod config;
pub mod http;
pub mod leftovers;
pub mod markdown;
pub mod nspawn;
pub mod promql;
pub mod pyroscope;
pub mod tls;
pub mod tools;

pub use config::{AgentConfig, toml_array};
pub use http::{ClientLoop, http_get, http_request, raw_request};

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A binary built by this workspace (target/<profile>/<name>), next to the test's own
/// executable (target/<profile>/deps/<test>).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

pub fn heapwarden() -> PathBuf {
    bin("heapwarden")
}

/// The demo service, `heapwarden-demo` (what the agent runs when `pool.command` is empty).
pub fn heapwarden_demo() -> PathBuf {
    bin("heapwarden-demo")
}

/// A free loopback port (bound then released; good enough on a test machine).
/// `heapwarden ARGS --json -c CONFIG`, run in the config's directory (the sandbox): the
/// CLI's JSON, or its stderr when it fails.
pub fn cli_json(config: &Path, args: &[&str]) -> Result<Value, String> {
    let mut command = Command::new(heapwarden());
    command.args(args).arg("--json").arg("-c").arg(config);
    if let Some(dir) = config.parent() {
        command.current_dir(dir);
    }
    let out = command.output().expect("run the CLI");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("CLI JSON: {e}"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Aborts the whole test process if the test runs past `limit`: a hang must fail, and
/// every spawned process dies with us through its parent-death signal.
pub struct TimeoutGuard {
    done: Arc<(Mutex<bool>, Condvar)>,
}

impl TimeoutGuard {
    pub fn new(name: &'static str, limit: Duration) -> TimeoutGuard {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let watcher = done.clone();
        std::thread::spawn(move || {
            let (lock, cvar) = &*watcher;
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            let (finished, _) = cvar
                .wait_timeout_while(guard, limit, |finished| !*finished)
                .unwrap_or_else(|e| e.into_inner());
            if !*finished {
                eprintln!("test {name} exceeded its {limit:?} limit; aborting");
                // Abort runs no destructor: kill what this test started first.
                leftovers::kill_marked(&leftovers::owner_mark());
                std::process::abort();
            }
        });
        TimeoutGuard { done }
    }
}

impl Drop for TimeoutGuard {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.done;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
    }
}

/// Log lines collected from a child's stdout (JSON records) and stderr (raw text).
#[derive(Clone, Default)]
pub struct Logs {
    inner: Arc<(Mutex<LogBuf>, Condvar)>,
}

#[derive(Default)]
struct LogBuf {
    records: Vec<Value>,
    raw: Vec<String>,
    closed: bool,
}

impl Logs {
    fn push(&self, line: String, json: bool) {
        let (lock, cvar) = &*self.inner;
        let mut buf = lock.lock().unwrap_or_else(|e| e.into_inner());
        if json && let Ok(v) = serde_json::from_str::<Value>(&line) {
            buf.records.push(v);
        }
        buf.raw.push(line);
        cvar.notify_all();
    }

    fn close(&self) {
        let (lock, cvar) = &*self.inner;
        lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        cvar.notify_all();
    }

    pub fn records(&self) -> Vec<Value> {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .records
            .clone()
    }

    pub fn raw(&self) -> String {
        self.inner
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .raw
            .join("\n")
    }

    /// Records matching `pred`, in order.
    pub fn matching(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.records().into_iter().filter(|r| pred(r)).collect()
    }

    /// Waits until at least `n` records match `pred`; panics with the log on timeout.
    pub fn wait_for_n(
        &self,
        n: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.inner;
        let mut buf = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let found: Vec<Value> = buf.records.iter().filter(|r| pred(r)).cloned().collect();
            if found.len() >= n {
                return found;
            }
            let now = Instant::now();
            if now >= deadline || buf.closed {
                let raw = buf.raw.join("\n");
                drop(buf);
                panic!("timed out after {timeout:?} waiting for {n} x {what}; log:\n{raw}");
            }
            buf = cvar
                .wait_timeout(buf, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn wait_for(&self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_n(1, timeout, what, pred).remove(0)
    }
}

/// Record predicate: `msg` equals `text`.
pub fn msg(text: &'static str) -> impl Fn(&Value) -> bool {
    move |r| r["msg"] == text
}

/// How long a dropped [`Proc`] has to exit after SIGTERM before it is SIGKILLed: an agent
/// drains its workers first, and tests keep `drain-timeout` short.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// A child process with collected output, stopped on drop with SIGTERM, then after
/// [`STOP_GRACE`] SIGKILL (and then whatever it left, found by its mark, too).
pub struct Proc {
    pub child: Child,
    pub logs: Logs,
    /// The environment mark this process and its descendants carry.
    mark: String,
}

impl Proc {
    /// Spawns `command` with stdout/stderr collected, a parent-death signal and the
    /// test's mark in its environment.
    pub fn spawn(mut command: Command) -> Proc {
        let mark = leftovers::proc_mark();
        command
            .env(leftovers::MARK_ENV, &mark)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn child process");
        let logs = Logs::default();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (l1, l2) = (logs.clone(), logs.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l1.push(line, true);
            }
            l1.close();
        });
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l2.push(line, false);
            }
        });
        Proc { child, logs, mark }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        try_poll(timeout, || self.child.try_wait().ok().flatten())
    }

    /// Stops the process as an operator would: SIGTERM, up to `grace` for it to exit (an
    /// agent drains and stops its workers), then SIGKILL and a sweep of every process
    /// carrying this one's mark, since an agent killed outright leaves its workers
    /// behind. A process that had already exited is only reaped: what it left is the
    /// suite's final check's to find.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        if let Some(status) = self.wait_exit(grace) {
            return Some(status);
        }
        eprintln!(
            "pid {} did not stop within {grace:?} of SIGTERM; killing it and what it started",
            self.pid()
        );
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        leftovers::kill_marked(&self.mark);
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// A temporary directory holding a config file.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// Starts `heapwarden run -c <config>`; `config` gets `state-dir` prepended and,
    /// unless it has an `[admin]` section, a free admin port (tests run in parallel).
    pub fn agent(&self, config: &str) -> Proc {
        let state = self.dir.path().join("state");
        let text = format!("state-dir = {:?}\n{config}", state.display().to_string());
        let path = self.write("heapwarden.toml", &text);
        let mut command = Command::new(heapwarden());
        command
            .arg("run")
            .arg("-c")
            .arg(path)
            .current_dir(self.dir.path());
        if !config.contains("[admin]") {
            command.env(
                "HEAPWARDEN_ADMIN_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            );
        }
        Proc::spawn(command)
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

/// True while /proc/PID exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Polls until `pid` is gone; false on timeout.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    try_poll(timeout, || (!alive(pid)).then_some(())).is_some()
}

/// Calls `check` every 20 ms until it returns a value, or gives up after `timeout`: the
/// one deadline loop of the harness (every other wait is built on it or on a log event).
pub fn try_poll<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Calls `check` until it returns a value; panics naming `what` after `timeout`.
pub fn poll<T>(timeout: Duration, what: &str, check: impl FnMut() -> Option<T>) -> T {
    try_poll(timeout, check)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// [`poll`] for a condition.
pub fn poll_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    poll(timeout, what, || done().then_some(()))
}

/// Waits until `GET path` answers 200 (e.g. the agent's `/readyz`); on timeout the
/// panic shows the process's log.
pub fn wait_until_ok(addr: SocketAddr, path: &str, timeout: Duration, logs: &Logs) {
    let ok = || matches!(http_get(addr, path, Duration::from_secs(2)), Ok((200, _)));
    if try_poll(timeout, || ok().then_some(())).is_none() {
        panic!("{path} not 200 after {timeout:?}; log:\n{}", logs.raw());
    }
}

/// Pids of the workers the agent started, in order (its "A worker started." records).
pub fn worker_pids(logs: &Logs) -> Vec<i32> {
    logs.matching(msg("A worker started."))
        .iter()
        .filter_map(|r| r["pid"].as_i64())
        .map(|p| p as i32)
        .collect()
}

/// A plain (probe-less) HTTP worker in Python: serves `hello from worker N` on the
/// inherited fd 3, reports READY=1 over NOTIFY_SOCKET, and on SIGTERM stops accepting,
/// finishes the request in hand and exits 0.
pub const PY_HTTP_WORKER: &str = r#"
import os, signal, socket
listener = socket.socket(fileno=3)
listener.settimeout(0.05)
slot = os.environ.get("HEAPWARDEN_WORKER_SLOT", "?")
stopping = False
def on_term(*_):
    global stopping
    stopping = True
signal.signal(signal.SIGTERM, on_term)
addr = os.environ.get("NOTIFY_SOCKET", "")
if addr:
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.sendto(b"READY=1", "\0" + addr[1:] if addr.startswith("@") else addr)
print("python worker ready", flush=True)
while not stopping:
    try:
        conn, _ = listener.accept()
    except (socket.timeout, BlockingIOError, InterruptedError):
        continue
    conn.settimeout(5)
    try:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        body = ("hello from worker %s pid %d\n" % (slot, os.getpid())).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    finally:
        conn.close()
print("python worker drained", flush=True)
"#;

/// `workers` Python workers ([`PY_HTTP_WORKER`]).
pub fn py_worker_config(workers: usize) -> AgentConfig {
    AgentConfig::new(workers, &["python3", "-c", PY_HTTP_WORKER])
}
