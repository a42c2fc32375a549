//! End-to-end tests of socket passing: one `SO_REUSEPORT` socket per slot taken in turn
//! (`pool.balance = "round-robin"`, the default) and, after a scale-down, only by the
//! slots that serve; the shared listening socket served by every worker; rolling reload
//! under a client loop; and a socket passed by systemd (shared, whatever the balance).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use heapwarden_tests::*;
use nix::sys::signal::Signal;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn python_config(workers: usize) -> AgentConfig {
    py_worker_config(workers)
        .set("pool", "min-uptime", "10s")
        .set("pool", "drain-timeout", "5s")
        .set("pool", "kill-timeout", "2s")
}

fn python_pool(sandbox: &Sandbox, workers: usize) -> (Proc, SocketAddr) {
    let config = python_config(workers);
    (sandbox.agent(&config.to_string()), config.listen)
}

/// Which slot answered each of `n` requests, each on a fresh connection.
fn slots_answering(addr: SocketAddr, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        let (status, body) = http_get(addr, "/", SECS(5)).expect("request");
        assert_eq!(status, 200);
        let slot = body.split_whitespace().nth(3).unwrap_or("?").to_string();
        *counts.entry(slot).or_default() += 1;
    }
    counts
}

/// The agent balances round-robin: it needs CAP_BPF, without which it shares one socket.
fn require_round_robin(agent: &Proc) {
    let started = agent.logs.wait_for(SECS(15), "agent start", |r| {
        r["msg"] == "The agent is starting."
    });
    // Not a skip: without CAP_BPF (not root) the agent falls back to one shared socket,
    // and these tests would prove nothing.
    assert_eq!(
        started["balance"], "round-robin",
        "round-robin needs CAP_BPF (run the tests as root): {started}"
    );
}

#[test]
fn round_robin_gives_every_slot_its_turn() {
    let _guard = TimeoutGuard::new("round_robin", SECS(60));
    let sandbox = Sandbox::new();
    let (agent, addr) = python_pool(&sandbox, 3);
    require_round_robin(&agent);
    agent
        .logs
        .wait_for(SECS(8), "all ready", msg("Every worker is ready."));
    // The shared socket's accept race gives these to whichever worker wakes first.
    let counts = slots_answering(addr, 30);
    let expected: std::collections::BTreeMap<String, usize> = ["0", "1", "2"]
        .iter()
        .map(|s| (s.to_string(), 10))
        .collect();
    assert_eq!(counts, expected, "30 connections, 10 to each slot");
}

#[test]
fn after_a_scale_down_connections_go_only_to_the_serving_slots() {
    let _guard = TimeoutGuard::new("round_robin_scale_down", SECS(90));
    let sandbox = Sandbox::new();
    let config = python_config(3);
    let addr = config.listen;
    let agent = sandbox.agent(&config.to_string());
    require_round_robin(&agent);
    agent
        .logs
        .wait_for(SECS(8), "all ready", msg("Every worker is ready."));
    let state = sandbox.path().join("state");
    let two = config.set("pool", "workers", "2").to_string();
    sandbox.write(
        "heapwarden.toml",
        &format!("state-dir = {:?}\n{two}", state.display().to_string()),
    );
    agent.signal(Signal::SIGHUP);
    // The rolling reload replaces slots 0 and 1; slot 2 drains and is dropped.
    agent
        .logs
        .wait_for_n(2, SECS(30), "both slots reloaded", |r| {
            r["msg"] == "A worker slot restarted." && r["reason"] == "reload"
        });
    agent.logs.wait_for_n(
        3,
        SECS(15),
        "the two replaced workers and slot 2's drained",
        msg("A drained worker has exited."),
    );
    // A retired slot's socket left the group: no connection waits in it for nobody
    // (each request would time out), and the two slots share the rest evenly.
    let counts = slots_answering(addr, 20);
    let expected: std::collections::BTreeMap<String, usize> =
        ["0", "1"].iter().map(|s| (s.to_string(), 10)).collect();
    assert_eq!(counts, expected, "20 connections, 10 to each serving slot");
}

#[test]
fn a_paused_slot_takes_no_connections() {
    let _guard = TimeoutGuard::new("round_robin_paused_slot", SECS(60));
    let sandbox = Sandbox::new();
    // Slot 1 exits at once, every time; slot 0 serves.
    let config = python_config(2)
        .command(&[
            "sh",
            "-c",
            "[ \"$HEAPWARDEN_WORKER_SLOT\" = 1 ] && exit 3; exec python3 -c \"$0\"",
            PY_HTTP_WORKER,
        ])
        .set("pool.restart", "initial-delay", "50ms")
        .set("pool.restart", "max-restarts", "2");
    let agent = sandbox.agent(&config.to_string());
    require_round_robin(&agent);
    agent.logs.wait_for(
        SECS(20),
        "slot 1 paused",
        msg("A worker slot keeps failing; it is paused before the next try."),
    );
    // Its socket was closed with it: every connection reaches slot 0 rather than half
    // of them waiting for a worker that comes back in minutes.
    let counts = slots_answering(config.listen, 10);
    let expected: std::collections::BTreeMap<String, usize> = [("0".to_string(), 10)].into();
    assert_eq!(counts, expected, "slot 0 answers all 10");
}

#[test]
fn the_shared_socket_is_served_by_every_worker() {
    let _guard = TimeoutGuard::new("shared_socket", SECS(60));
    let sandbox = Sandbox::new();
    let config = python_config(3).set("pool", "balance", "shared");
    let (agent, addr) = (sandbox.agent(&config.to_string()), config.listen);
    // Ready comes from READY=1 on each worker's NOTIFY_SOCKET (min-uptime is 10s).
    agent.logs.wait_for(
        SECS(8),
        "all ready via sd_notify",
        msg("Every worker is ready."),
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let (status, body) = http_get(addr, "/", SECS(5)).expect("request");
        assert_eq!(status, 200);
        let slot = body.split_whitespace().nth(3).unwrap_or("?").to_string();
        seen.insert(slot);
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        3,
        "every worker accepted on the shared socket: {seen:?}"
    );
}

#[test]
fn rolling_reload_under_load_drops_no_request() {
    let _guard = TimeoutGuard::new("reload_under_load", SECS(90));
    let sandbox = Sandbox::new();
    let (agent, addr) = python_pool(&sandbox, 2);
    agent
        .logs
        .wait_for(SECS(8), "all ready", msg("Every worker is ready."));
    let old_pids = worker_pids(&agent.logs);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match http_get(addr, "/", SECS(5)) {
                        Ok((200, _)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failed.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            })
        })
        .collect();
    let before = ok.load(Ordering::Relaxed);
    agent.signal(Signal::SIGHUP);
    agent
        .logs
        .wait_for_n(2, SECS(30), "both slots reloaded", |r| {
            r["msg"] == "A worker slot restarted." && r["reason"] == "reload"
        });
    for pid in &old_pids {
        assert!(
            wait_gone(*pid, SECS(10)),
            "old worker {pid} drained and exited"
        );
    }
    // Keep the load on the new workers for a moment.
    let after_reload = ok.load(Ordering::Relaxed);
    poll_until(SECS(30), "200 more answers after the reload", || {
        ok.load(Ordering::Relaxed) >= after_reload + 200
    });
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failed.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > before + 200,
        "the client loop made progress"
    );
    let new_pids = worker_pids(&agent.logs);
    assert_eq!(new_pids.len(), 4, "two new workers started");
}

#[test]
fn a_socket_passed_by_systemd_is_handed_to_the_workers() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let _guard = TimeoutGuard::new("socket_activation", SECS(60));
    let sandbox = Sandbox::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let unused = py_worker_config(2).set("pool", "min-uptime", "10s");
    let text = format!(
        "state-dir = {:?}\n{unused}",
        sandbox.path().join("state").display().to_string()
    );
    let config = sandbox.write("heapwarden.toml", &text);
    // As systemd does: the socket on fd 3, LISTEN_FDS=1, LISTEN_PID = the agent's pid
    // (the shell's, which `exec` keeps).
    let fd = listener.as_raw_fd();
    let mut command = std::process::Command::new("sh");
    command
        .args([
            "-c",
            "LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web exec \"$0\" run -c \"$1\"",
        ])
        .arg(heapwarden())
        .arg(&config);
    // SAFETY: dup2 and fcntl are async-signal-safe; `fd` stays open in the parent until spawn returns.
    unsafe {
        command.pre_exec(move || {
            // dup2(3, 3) would be a no-op that keeps close-on-exec set.
            let ok = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0) >= 0
            } else {
                libc::dup2(fd, 3) >= 0
            };
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let agent = Proc::spawn(command);
    let started = agent.logs.wait_for(SECS(15), "agent start", |r| {
        r["msg"] == "The agent is starting."
    });
    assert_eq!(started["socket_activated"], true, "{started}");
    assert_eq!(
        started["balance"], "shared",
        "systemd's one socket is shared"
    );
    assert_eq!(started["listen"], addr.to_string());
    agent
        .logs
        .wait_for(SECS(15), "all ready", msg("Every worker is ready."));
    drop(listener);
    let (status, body) = http_get(addr, "/", SECS(5)).expect("served on the passed socket");
    assert_eq!(status, 200);
    assert!(body.starts_with("hello from worker"), "{body}");
    assert!(
        http_get(unused.listen, "/", SECS(1)).is_err(),
        "pool.listen was not bound"
    );
}
