//! End to end with real packages from PyPI and real pre-fork servers, under
//! `probe = "native"`: gunicorn + Flask and uvicorn + FastAPI serving the agent's socket,
//! a module-level leak (`remember_order` in `tests/python/shop.py`) in a forked child
//! trips the rules on the worker's tree, the leak profile is the child's (and so is a
//! manual one: the child that grew) and names `remember_order` with its file and line
//! (in the diff and in `go tool pprof`), the replacement drops no request; a steady app
//! never trips; `max-memory` applies to the tree. The packages live in a venv outside
//! the repo (`HEAPWARDEN_TEST_PYVENV`, default `/var/tmp/heapwarden-pyvenv`), created
//! here when missing (`scripts/test` does it first).

mod native_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use heapwarden_tests::tools::repo_root;
use heapwarden_tests::{Sandbox, TimeoutGuard, heapwarden, http_get, msg, poll};
use native_support::*;
use serde_json::Value;

const VENV_ENV: &str = "HEAPWARDEN_TEST_PYVENV";
const PACKAGES: &[&str] = &["flask", "gunicorn", "uvicorn", "fastapi"];
/// Every test's rules: a short warm-up, and growth well above a steady app's noise (the
/// summed heap of an arbiter and its children moves by a few MiB as requests come).
const RULES: &str = r#"
[watchdog]
warmup = "2s"
growth = "24MiB"
strikes = 3
trend-window = "20s"
"#;

/// The venv with the packages, created (once, under a lock) when missing.
fn venv() -> PathBuf {
    let dir = std::env::var_os(VENV_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/heapwarden-pyvenv"));
    let ready = || {
        Command::new(dir.join("bin/python"))
            .args(["-c", &format!("import {}", PACKAGES.join(", "))])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready() {
        return dir;
    }
    let lock = std::fs::File::create(dir.with_extension("lock")).expect("venv lock file");
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the venv");
    if !ready() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("python3 -m venv");
        assert!(made.success(), "python3 -m venv {} failed", dir.display());
        let installed = Command::new(dir.join("bin/pip"))
            .args(["install", "-q"])
            .args(PACKAGES)
            .status()
            .expect("pip install");
        assert!(installed.success(), "pip install {PACKAGES:?} failed");
    }
    assert!(ready(), "{PACKAGES:?} not importable in {}", dir.display());
    dir
}

fn app_dir() -> String {
    repo_root().join("tests/python").display().to_string()
}

/// gunicorn serving `shop:app` with `workers` sync children; no `bind`: it adopts the
/// agent's socket from `LISTEN_FDS`.
fn gunicorn(workers: usize, extra: &[&str]) -> String {
    let bin = venv().join("bin/gunicorn").display().to_string();
    let mut argv = vec![
        bin,
        "--workers".into(),
        workers.to_string(),
        "--chdir".into(),
        app_dir(),
        // gunicorn ≥ 24 opens ~/.gunicorn/gunicorn.ctl: one per arbiter would collide.
        "--no-control-socket".into(),
        "--graceful-timeout".into(),
        "4".into(),
        // The app imported once, in the arbiter, before it says READY=1: the baseline
        // then comes after the import, and the children start alike.
        "--preload".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv.push("shop:app".into());
    serde_json::to_string(&argv).unwrap()
}

/// The agent on a gunicorn command, ready when gunicorn says `READY=1`.
fn start_gunicorn(workers: usize, command: &str, extra: &str) -> NativeAgent {
    start_native_ready_after(Sandbox::new(), workers, command, "60s", extra)
}

fn service_addr(native: &NativeAgent) -> SocketAddr {
    // `start_native` writes the admin's `listen` first, the pool's second.
    let text = std::fs::read_to_string(&native.config).unwrap();
    let ports: Vec<u16> = text
        .lines()
        .filter_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
        .filter_map(|rest| rest.trim_end_matches('"').parse().ok())
        .collect();
    format!("127.0.0.1:{}", ports[1]).parse().unwrap()
}

/// Waits for every slot to serve `/health`.
fn wait_serving(native: &NativeAgent) {
    let addr = service_addr(native);
    poll(SECS(90), "the app answers", || {
        http_get(addr, "/health", SECS(2))
            .ok()
            .filter(|(status, _)| *status == 200)
    });
}

/// GETs on fresh connections from `threads` threads until stopped; each failure is
/// kept with the wall-clock time it happened, to set against the agent's log.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, threads: usize, path: fn(usize) -> String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut n = t;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let sent = std::time::SystemTime::now();
                        match http_get(addr, &path(n), SECS(10)) {
                            Ok((200, _)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                let at = sent
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .unwrap_or_default()
                                    .as_secs_f64();
                                failed
                                    .lock()
                                    .unwrap()
                                    .push(format!("sent at {at:.3}: {other:?}"));
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed)
    }
}

/// The stored profile `id`'s metadata.
fn profile(native: &NativeAgent, id: u64) -> Value {
    let all = native.cli(&["profiles"]);
    let list = all
        .as_array()
        .cloned()
        .or_else(|| all["profiles"].as_array().cloned())
        .unwrap_or_default();
    list.into_iter()
        .find(|p| p["id"].as_u64() == Some(id))
        .unwrap_or_else(|| panic!("no profile {id} in {all}"))
}

/// The leak: trip, a profile from a forked child (not the worker), a diff that grew by
/// more than the rule, and no request lost while the worker was replaced.
struct Caught {
    detection: Value,
    profile: Value,
    seconds: f64,
    failures: Vec<String>,
    ok: u64,
}

fn catch_leak(native: &NativeAgent, threads: usize) -> Caught {
    wait_serving(native);
    let logs = &native.agent.logs;
    // Generous waits: on a loaded 2-core machine a preloaded gunicorn took 24 s to start.
    logs.wait_for(SECS(60), "a baseline profile", |r| {
        r["msg"] == "A heap profile was written." && r["trigger"] == "baseline"
    });
    let started = Instant::now();
    let load = Load::start(service_addr(native), threads, |_| "/order".into());
    let detection = logs.wait_for(
        SECS(40),
        "a leak detection",
        msg("A memory leak was detected."),
    );
    let seconds = started.elapsed().as_secs_f64();
    logs.wait_for(
        SECS(30),
        "the old worker drained",
        msg("A drained worker has exited."),
    );
    let (ok, failures) = load.finish();
    let id = detection["profile_id"].as_u64().expect("leak profile id");
    let profile = profile(native, id);
    Caught {
        detection,
        profile,
        seconds,
        failures,
        ok,
    }
}

fn assert_no_failures(native: &NativeAgent, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{failures:?}\nagent log:\n{}",
        native.agent.logs.raw()
    );
}

fn assert_child_profile(caught: &Caught, worker_pids: &[i64]) {
    let pid = caught.profile["pid"].as_i64().expect("profile pid");
    assert!(
        !worker_pids.contains(&pid),
        "the leak profile is the arbiter's ({pid}), not a child's: {}",
        caught.profile
    );
    let growth = caught.detection["growth_bytes"].as_i64().unwrap_or(0);
    assert!(
        growth > 8 << 20,
        "diff growth {growth}: {}",
        caught.detection
    );
    assert_python_site(&caught.detection, "shop.py", 28);
}

/// The diff's top growing site is the Python function that builds the leaked string,
/// with its file and line (the native probe's Python frames, above the C ones).
fn assert_python_site(detection: &Value, file: &str, line: i64) {
    let top = &detection["top_growing_sites"][0];
    assert_eq!(top["function"], "remember_order", "{detection}");
    assert!(
        top["file"].as_str().is_some_and(|f| f.ends_with(file)),
        "{detection}"
    );
    assert_eq!(top["line"].as_i64(), Some(line), "{detection}");
}

/// `go tool pprof -top` of the stored profile `id` names `function` first.
fn assert_pprof_top(native: &NativeAgent, id: u64, function: &str) {
    let out = native.sandbox.path().join(format!("{id}.pb.gz"));
    let out_text = out.display().to_string();
    native.cli(&["pull", &id.to_string(), "-o", &out_text]);
    let table = go_pprof(native.sandbox.path(), &["-top", &out_text]);
    assert_eq!(top_entry(&table), function, "{table}");
}

/// Waits for the leaking child's "shop leaker pid N" line and returns N. The gunicorn
/// processes share one stderr pipe, so another's output may follow the digits on the
/// relayed line; the record is in the panic when there are none.
fn leaker_pid(native: &NativeAgent) -> u64 {
    const PREFIX: &str = "shop leaker pid ";
    let record = native
        .agent
        .logs
        .wait_for(SECS(40), "the leaking child", |r| {
            r["msg"].as_str().is_some_and(|m| m.starts_with(PREFIX))
        });
    let text = record["msg"].as_str().unwrap_or_default();
    let digits: String = text
        .trim_start_matches(PREFIX)
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|e| panic!("no pid in the leaker's line ({e}): {record}"))
}

fn worker_pids(native: &NativeAgent) -> Vec<i64> {
    native
        .agent
        .logs
        .matching(msg("A worker started."))
        .iter()
        .filter_map(|r| r["pid"].as_i64())
        .collect()
}

#[test]
fn gunicorn_flask_leak_in_a_forked_child_is_caught_and_replaced_without_a_lost_request() {
    let _guard = TimeoutGuard::new("python_gunicorn_leak", SECS(240));
    let extra = format!("[pool.env]\nSHOP_LEAK = \"1\"\nSHOP_ORDER_BYTES = \"262144\"\n{RULES}");
    let native = start_gunicorn(2, &gunicorn(1, &[]), &extra);
    let caught = catch_leak(&native, 2);
    println!(
        "gunicorn 2x1: leak caught {:.1} s after the load started, {} requests ok, {} failed",
        caught.seconds,
        caught.ok,
        caught.failures.len()
    );
    assert_no_failures(&native, &caught.failures);
    assert_child_profile(&caught, &worker_pids(&native));
    let id = caught.profile["id"].as_u64().unwrap();
    assert_pprof_top(&native, id, "remember_order");
    let children = native.agent.logs.matching(msg(
        "A forked child of the worker reports on its own heapwarden channel.",
    ));
    assert!(children.len() >= 2, "{children:?}");
}

#[test]
fn gunicorn_with_three_children_profiles_the_one_that_leaks() {
    let _guard = TimeoutGuard::new("python_gunicorn_three", SECS(240));
    let config = format!("{}/gunicorn_leak_one.py", app_dir());
    let native = start_gunicorn(
        1,
        &gunicorn(3, &["--config", &config]),
        &format!("[pool.env]\nSHOP_ORDER_BYTES = \"262144\"\n{RULES}"),
    );
    let leaker = leaker_pid(&native) as i64;
    let caught = catch_leak(&native, 3);
    println!(
        "gunicorn 1x3, one child leaking: caught {:.1} s after the load started, {} ok, {} failed",
        caught.seconds,
        caught.ok,
        caught.failures.len()
    );
    assert_no_failures(&native, &caught.failures);
    assert_eq!(
        caught.profile["pid"].as_i64(),
        Some(leaker),
        "{}\nagent log:\n{}",
        caught.profile,
        native.agent.logs.raw()
    );
    assert_child_profile(&caught, &worker_pids(&native));
}

#[test]
fn uvicorn_fastapi_on_fd_3_leak_is_caught() {
    let _guard = TimeoutGuard::new("python_uvicorn", SECS(240));
    let bin = venv().join("bin/uvicorn").display().to_string();
    let argv = [
        bin.as_str(),
        "--fd",
        "3",
        "--app-dir",
        &app_dir(),
        "--no-access-log",
        "fastapi_shop:app",
    ];
    // uvicorn says no READY=1: ready after min-uptime, so a warm-up that outlasts its
    // import of FastAPI on a loaded machine.
    let rules = RULES.replace("warmup = \"2s\"", "warmup = \"10s\"");
    let extra = format!("[pool.env]\nSHOP_LEAK = \"1\"\nSHOP_ORDER_BYTES = \"262144\"\n{rules}");
    let native = start_native(
        Sandbox::new(),
        1,
        &serde_json::to_string(&argv).unwrap(),
        &extra,
    );
    let caught = catch_leak(&native, 2);
    println!(
        "uvicorn --fd 3: caught {:.1} s after the load started, {} ok, {} failed",
        caught.seconds,
        caught.ok,
        caught.failures.len()
    );
    // uvicorn's own graceful shutdown closes a connection it accepted but has not read
    // yet (Kludex/uvicorn#2757; its fix was not merged): under load the replacement can
    // reset one request. An answer with a status, or a second reset, still fails.
    let resets = caught.failures.iter().all(|f| f.contains(": Err("));
    assert!(
        caught.failures.len() <= 1 && resets,
        "{:?}\nagent log:\n{}",
        caught.failures,
        native.agent.logs.raw()
    );
    let growth = caught.detection["growth_bytes"].as_i64().unwrap_or(0);
    assert!(growth > 8 << 20, "{}", caught.detection);
    assert_python_site(&caught.detection, "fastapi_shop.py", 14);
}

#[test]
fn a_steady_gunicorn_app_never_trips() {
    let _guard = TimeoutGuard::new("python_gunicorn_steady", SECS(240));
    let native = start_gunicorn(1, &gunicorn(2, &[]), RULES);
    wait_serving(&native);
    let logs = &native.agent.logs;
    logs.wait_for(SECS(60), "a baseline", |r| {
        r["msg"] == "A heap profile was written." && r["trigger"] == "baseline"
    });
    let load = Load::start(service_addr(&native), 2, |_| "/order".into());
    // 15 s of requests: 150 samples of the tree's heap, summed over three processes.
    let deadline = Instant::now() + SECS(15);
    let mut heaps = Vec::new();
    while Instant::now() < deadline {
        if let Some(h) = native.heap_of_every_slot() {
            heaps.push(h[0]);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (ok, failures) = load.finish();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(ok > 100, "only {ok} requests");
    let tripped = logs.matching(msg("A leak rule tripped."));
    assert!(tripped.is_empty(), "{tripped:?}");
    let (lo, hi) = (heaps.iter().min().unwrap(), heaps.iter().max().unwrap());
    println!("steady gunicorn 1x2: {ok} requests, tree heap {lo}..{hi} bytes");
}

#[test]
fn max_memory_applies_to_the_tree_whose_children_grow_while_the_arbiter_is_flat() {
    let _guard = TimeoutGuard::new("python_gunicorn_max_memory", SECS(240));
    let rules = r#"
[pool.env]
SHOP_LEAK = "1"
SHOP_ORDER_BYTES = "262144"
[watchdog]
warmup = "2s"
growth = "off"
trend-min-rate = "off"
max-memory = "160MiB"
"#;
    let native = start_gunicorn(1, &gunicorn(2, &[]), rules);
    let caught = catch_leak(&native, 2);
    let tripped = native
        .agent
        .logs
        .wait_for(SECS(5), "the trip", msg("A leak rule tripped."));
    // The limit applies to the tree either way: at the crossing (`max_memory`) or ahead
    // of it (`predicted`, on by default with max-memory), whichever the leak's pace and
    // the machine's load make come first.
    let rule = tripped["rule"].as_str().unwrap_or_default();
    assert!(["max_memory", "predicted"].contains(&rule), "{tripped}");
    assert_eq!(tripped["figure"], "heap_allocated", "{tripped}");
    assert_no_failures(&native, &caught.failures);
    assert_child_profile(&caught, &worker_pids(&native));
}

#[test]
fn check_config_warns_when_gunicorn_is_told_to_bind_fd_3() {
    let sandbox = Sandbox::new();
    let config = sandbox.write(
        "heapwarden.toml",
        &format!(
            "state-dir = {:?}\n[pool]\ncommand = [{:?}, \"--bind\", \"fd://3\", \"app:app\"]\nprobe = \"native\"\n",
            sandbox.path().join("state").display().to_string(),
            venv().join("bin/gunicorn").display().to_string()
        ),
    );
    let out = Command::new(heapwarden())
        .args(["check-config", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning, not an error: {stderr}");
    assert!(
        stderr.contains("gunicorn is told to bind fd://3"),
        "{stderr}"
    );
}

#[test]
fn a_tree_growing_outside_the_heap_switches_the_rules_to_pss_once() {
    let _guard = TimeoutGuard::new("python_gunicorn_pss_fallback", SECS(240));
    let extra = format!(
        "[pool.env]\nSHOP_LEAK = \"1\"\nSHOP_LEAK_KIND = \"mmap\"\nSHOP_ORDER_BYTES = \"262144\"\n{RULES}"
    );
    let native = start_gunicorn(1, &gunicorn(2, &[]), &extra);
    let caught = catch_leak(&native, 2);
    let logs = &native.agent.logs;
    let switched = logs.matching(msg(
        "The worker's process tree grows in PSS while its probed heap stays flat; its leak rules watch the tree's PSS from now on.",
    ));
    assert_eq!(switched.len(), 1, "said once: {switched:?}");
    let tripped = logs.wait_for(SECS(5), "the trip", msg("A leak rule tripped."));
    assert_eq!(tripped["figure"], "pss", "{tripped}");
    assert_no_failures(&native, &caught.failures);
    let (status, metrics) = http_get(native.admin, "/metrics", SECS(5)).expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("heapwarden_worker_watch_fallbacks_total{worker=\"0\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("fallbacks"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "PSS fallback: {} after the load started ({:.1} s to the trip)",
        switched[0]["ts"], caught.seconds
    );
}

#[test]
fn a_manual_dump_of_a_pre_fork_worker_profiles_the_child_that_grew() {
    let _guard = TimeoutGuard::new("python_gunicorn_manual_dump", SECS(240));
    let config = format!("{}/gunicorn_leak_one.py", app_dir());
    // No rule trips: the leak goes on until the on-call engineer asks for a profile.
    let rules = r#"
[pool.env]
SHOP_ORDER_BYTES = "262144"
[watchdog]
warmup = "2s"
growth = "off"
trend-min-rate = "off"
"#;
    let native = start_gunicorn(1, &gunicorn(3, &["--config", &config]), rules);
    let logs = &native.agent.logs;
    let leaker = leaker_pid(&native);
    wait_serving(&native);
    logs.wait_for(SECS(60), "a baseline profile", |r| {
        r["msg"] == "A heap profile was written." && r["trigger"] == "baseline"
    });
    let before = poll(SECS(20), "a heap figure", || native.heap_of_every_slot())[0];
    let load = Load::start(service_addr(&native), 3, |_| "/order".into());
    poll(SECS(60), "the tree's heap grown by 32 MiB", || {
        native
            .heap_of_every_slot()
            .filter(|h| h[0] > before + (32 << 20))
    });
    let (_, failures) = load.finish();
    assert_no_failures(&native, &failures);

    let meta = native.cli(&["dump", "0"]);
    let arbiter = worker_pids(&native)[0] as u64;
    assert_eq!(
        meta["pid"].as_u64(),
        Some(leaker),
        "the manual profile is the leaking child's: {meta}\nagent log:\n{}",
        logs.raw()
    );
    assert_eq!(meta["child_of"].as_u64(), Some(arbiter), "{meta}");
    assert_eq!(meta["trigger"], "manual", "{meta}");
    // It diffs against the worker's baseline (a child's too) and shows the leak.
    let id = meta["id"].as_u64().unwrap().to_string();
    let diff = native.cli(&["diff", &id]);
    let delta = diff["total_delta_bytes"].as_i64().unwrap_or(0);
    assert!(delta > 16 << 20, "growth {delta}: {diff}");
    assert_eq!(diff["top"][0]["function"], "remember_order", "{diff}");
}
