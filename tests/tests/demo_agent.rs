//! The demo under the agent (`heapwarden run`): four workers with their own L1 caches
//! against real Redis and PostgreSQL never serve a version older than an acknowledged
//! write, and the NDJSON export streams 200k rows without growing the worker's heap.
#![forbid(unsafe_code)]

mod demo_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use demo_support::*;
use heapwarden_tests::{Proc, Sandbox, TimeoutGuard, free_port, heapwarden, msg};

const KEYS: usize = 5;

struct Agent {
    /// Kept for its kill-on-drop.
    _proc: Proc,
    service: SocketAddr,
    admin: SocketAddr,
}

fn start_agent(sandbox: &Sandbox, workers: usize, sampling: &str, demo_toml: &str) -> Agent {
    let service: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let token = sandbox.write("token", "demo-test-token\n");
    let mut perms = std::fs::metadata(&token).expect("token").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&token, perms).expect("chmod token");
    let config = format!(
        "[admin]\nlisten = \"{admin}\"\ntoken-file = {:?}\nopen-metrics = true\n\
         [pool]\nworkers = {workers}\nlisten = \"{service}\"\n\
         [sampling]\n{sampling}\n[demo]\n{demo_toml}\n",
        token.display().to_string()
    );
    // Workers inherit HEAPWARDEN_CONFIG, so they read the same file as the agent.
    let state = sandbox.path().join("state");
    let text = format!("state-dir = {:?}\n{config}", state.display().to_string());
    let path = sandbox.write("heapwarden.toml", &text);
    let mut command = std::process::Command::new(heapwarden());
    command
        .arg("run")
        .env("HEAPWARDEN_CONFIG", path)
        .current_dir(sandbox.path());
    let proc = Proc::spawn(command);
    proc.logs.wait_for(
        START_TIMEOUT * 2,
        "every worker ready",
        msg("Every worker is ready."),
    );
    Agent {
        _proc: proc,
        service,
        admin,
    }
}

/// Once a PUT was acknowledged, no read that starts afterwards, on any worker, may
/// return an older version.
#[test]
fn no_worker_serves_a_version_older_than_an_acknowledged_write() {
    let _timeout = TimeoutGuard::new("stale_reads", Duration::from_secs(180));
    let (Some(redis_url), Some(pg_url)) = (
        service_env("HEAPWARDEN_TEST_REDIS_URL"),
        service_env("HEAPWARDEN_TEST_DATABASE_URL"),
    ) else {
        eprintln!("skipped: HEAPWARDEN_TEST_REDIS_URL and HEAPWARDEN_TEST_DATABASE_URL are needed");
        return;
    };
    let database_url = pg_schema(&pg_url, "stale");
    let prefix = format!("hwtest:stale:{}:{}:", std::process::id(), free_port());
    let sandbox = Sandbox::new();
    let demo_toml = format!(
        "database-url = \"{database_url}\"\nredis-url = \"{redis_url}\"\nredis-key-prefix = \"{prefix}\"\n\
         seed-rows = {KEYS}\nl1-ttl = \"60s\""
    );
    let agent = start_agent(&sandbox, 4, "interval = \"1s\"", &demo_toml);
    let base = format!("http://{}", agent.service);

    let acked: Arc<Vec<AtomicI64>> = Arc::new((0..KEYS).map(|_| AtomicI64::new(1)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let l1_hits = Arc::new(AtomicU64::new(0));
    let workers_seen = Arc::new(Mutex::new(BTreeSet::new()));
    let violations = Arc::new(Mutex::new(Vec::new()));

    let readers: Vec<_> = (0..6)
        .map(|reader| {
            let (acked, stop, reads, l1_hits) = (acked.clone(), stop.clone(), reads.clone(), l1_hits.clone());
            let (workers_seen, violations, base) = (workers_seen.clone(), violations.clone(), base.clone());
            std::thread::spawn(move || {
                let mut n = reader;
                let mut agent = client(Duration::from_secs(10));
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    if n % 25 == 0 {
                        agent = client(Duration::from_secs(10)); // new connection: maybe another worker
                    }
                    let key = n % KEYS;
                    let floor = acked[key].load(Ordering::SeqCst);
                    let Ok(mut response) = agent.get(&format!("{base}/items/{}", key + 1)).call() else {
                        continue;
                    };
                    let worker = response.headers().get("x-worker").and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
                    let layer = response.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("?").to_string();
                    let status = response.status().as_u16();
                    let body = response.body_mut().read_to_string().unwrap_or_default();
                    assert_eq!(status, 200, "read failed: {body}");
                    let version = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["version"].as_i64())
                        .unwrap_or(0);
                    reads.fetch_add(1, Ordering::Relaxed);
                    if layer == "l1" {
                        l1_hits.fetch_add(1, Ordering::Relaxed);
                    }
                    workers_seen.lock().expect("set").insert(worker.clone());
                    if version < floor {
                        violations.lock().expect("list").push(format!(
                            "key {} version {version} < acknowledged {floor} from worker {worker} ({layer})",
                            key + 1
                        ));
                    }
                }
            })
        })
        .collect();

    // Writes: each acknowledged version becomes the floor for every later read.
    let writer = client(Duration::from_secs(10));
    let started = Instant::now();
    let mut writes = 0;
    while started.elapsed() < Duration::from_secs(15) {
        for key in 0..KEYS {
            let body = format!(r#"{{"name":"w{writes}","value":{writes}}}"#);
            let mut response = writer
                .put(&format!("{base}/items/{}", key + 1))
                .send(body.as_str())
                .expect("PUT");
            let text = response.body_mut().read_to_string().unwrap_or_default();
            assert_eq!(response.status().as_u16(), 200, "write failed: {text}");
            let version =
                serde_json::from_str::<serde_json::Value>(&text).expect("json")["version"]
                    .as_i64()
                    .expect("version");
            acked[key].fetch_max(version, Ordering::SeqCst);
            writes += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.join().expect("reader thread");
    }
    let violations = violations.lock().expect("list");
    let seen = workers_seen.lock().expect("set");
    let (reads, l1_hits) = (
        reads.load(Ordering::Relaxed),
        l1_hits.load(Ordering::Relaxed),
    );
    eprintln!("{writes} writes, {reads} reads ({l1_hits} from L1), workers {seen:?}");
    assert!(
        violations.is_empty(),
        "{} stale reads, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    assert!(
        writes > 50 && reads > 500,
        "too little traffic to mean anything"
    );
    assert!(l1_hits > 100, "reads must exercise the L1 caches");
    assert_eq!(seen.len(), 4, "reads must reach every worker: {seen:?}");
    drop(agent);
}

fn heap_allocated(admin: SocketAddr) -> Option<f64> {
    let reply = try_call("GET", &format!("http://{admin}/metrics"), &[], None).ok()?;
    metric(
        &reply.body,
        "heapwarden_worker_heap_allocated_bytes",
        &[("worker", "0")],
    )
}

#[test]
fn exporting_200k_rows_keeps_the_worker_heap_flat() {
    let _timeout = TimeoutGuard::new("export_heap", Duration::from_secs(240));
    let sandbox = Sandbox::new();
    let agent = start_agent(&sandbox, 1, "interval = \"100ms\"", "seed-rows = 200000");
    let baseline = poll(
        Duration::from_secs(20),
        "heap figures from the probe",
        || heap_allocated(agent.admin),
    );

    let peak = Arc::new(Mutex::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, admin) = (peak.clone(), done.clone(), agent.admin);
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Some(now) = heap_allocated(admin) {
                    let mut peak = peak.lock().expect("peak");
                    *peak = peak.max(now);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let rows = count_ndjson(&format!("http://{}/items/export", agent.service));
    done.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler");
    assert_eq!(rows, 200_000);
    let growth = *peak.lock().expect("peak") - baseline;
    eprintln!("heap_allocated baseline {baseline} bytes, growth during export {growth} bytes");
    assert!(
        growth < 16.0 * 1024.0 * 1024.0,
        "the export grew the heap by {growth} bytes"
    );
}
