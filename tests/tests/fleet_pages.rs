//! The page names the leaking function, through the pipeline a team runs: three agents
//! on one machine (a Rust demo pool leaking in `leak_on_purpose_for_heap_profile`, a Node
//! pool leaking in `leakInNamedFunction` in one slot and Buffers in the other — its page
//! says `kind="external"` and names no function — and a healthy Node pool with a GC-like
//! sawtooth), one real Prometheus loading `dashboards/alerts.yml`, one real Alertmanager, and a
//! webhook. From the webhook bodies: each leaking pool is paged within 60 s of its trip,
//! once (Prometheus is reloaded mid-incident), with annotations naming the function and
//! a profile id `heapwarden diff` accepts on that agent (and, on the agent with a
//! Pyroscope `link-base`, the leak profile's link); the healthy pool never is; each
//! page resolves once its suspect expired; every dashboard expression evaluates.
//!
//! `cargo test -p heapwarden-tests --test fleet_pages -- --ignored --nocapture` runs the
//! bench: trip → webhook latency over many trips (p50/p99) and the series per slot.

mod fleet_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleet_support::*;
use heapwarden_tests::*;
use serde_json::Value;

const RUST_LEAK_FN: &str = "leak_on_purpose_for_heap_profile";
const JS_LEAK_FN: &str = "leakInNamedFunction";
const PAGE_WITHIN: Duration = Duration::from_secs(60);
/// The Rust agent's `[export.pyroscope] link-base` (the Node agents have none).
const LINK_BASE: &str = "https://grafana.example/a/grafana-pyroscope-app/explore";

/// A Node pool running fleet.js in `mode`, `env` more `[pool.env]` lines.
fn node_pool(mode: &str, env: &str) -> String {
    format!(
        "command = [\"node\", \"--expose-gc\", \"fleet.js\"]\n[pool.env]\nMODE = \"{mode}\"\nLEAK_BYTES = \"300000\"\n{env}{RULES}"
    )
}

fn is_page(alert: &Value, instance: &str, worker: u64, status: &str) -> bool {
    alert["labels"]["alertname"] == "WorkerLeaking"
        && alert["labels"]["instance"] == instance
        && alert["labels"]["worker"].as_str() == Some(worker.to_string().as_str())
        && alert["status"] == status
}

/// POSTs to the demo's leak endpoint ten times a second until `stop`.
fn drive_rust_leak(service: std::net::SocketAddr, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let client = heapwarden_tests::http::client(SECS(5));
        let url = format!("http://{service}/debug/leak?bytes=600000");
        let mut pace = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let _ = heapwarden_tests::http::fetch(&client, "POST", &url, &[], Some(b""));
            pace += Duration::from_millis(100);
            // Pacing the load, not waiting for an event.
            std::thread::sleep(pace.saturating_duration_since(std::time::Instant::now()));
        }
    });
}

/// The trip of `agent`'s slot `worker` and the page's arrival: seconds between them.
fn trip_to_page(agent: &FleetAgent, worker: u64, page: &Delivery) -> f64 {
    let trip = agent
        .trips()
        .into_iter()
        .filter(|(w, _)| *w == worker)
        .map(|(_, at)| at)
        .min()
        .unwrap_or_else(|| panic!("{}: no trip of worker {worker}", agent.name));
    page.at
        .duration_since(trip)
        .unwrap_or_else(|_| panic!("{}: a page before its trip", agent.name))
        .as_secs_f64()
}

fn check_page(agent: &FleetAgent, alert: &Value, function: &str) -> u64 {
    let notes = &alert["annotations"];
    assert_eq!(notes["kind"], "heap", "{alert:#}");
    assert!(
        notes["function"]
            .as_str()
            .is_some_and(|f| f.contains(function)),
        "{}: the page names {function}: {alert:#}",
        agent.name
    );
    assert!(
        notes["summary"]
            .as_str()
            .is_some_and(|s| s.contains(function)),
        "{alert:#}"
    );
    let id: u64 = notes["profile_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a profile id in {alert:#}"));
    assert_eq!(
        notes["command"],
        format!("heapwarden diff {id}"),
        "{alert:#}"
    );
    let diff = agent
        .cli(&["diff", &id.to_string()])
        .unwrap_or_else(|e| panic!("{}: heapwarden diff {id} refused: {e}", agent.name));
    // The page names the function with its file:line when the profile has one.
    let top = diff["top"][0]["function"].as_str().unwrap_or_default();
    assert!(
        !top.is_empty()
            && notes["function"]
                .as_str()
                .is_some_and(|f| f.starts_with(top)),
        "{}: the diff leads with the page's function ({top}): {alert:#}",
        agent.name
    );
    id
}

#[test]
fn pages_name_the_leaking_function_through_prometheus_and_alertmanager() {
    let _guard = TimeoutGuard::new("fleet pages", SECS(175));
    let webhook = Webhook::start();
    let alertmanager = Alertmanager::start(&webhook);
    let rust = FleetAgent::start(
        "rust-leaky",
        1,
        "",
        &format!(
            "{RULES}[demo]\nleak-endpoint = true\nseed-rows = 20\n\
             [export.pyroscope]\nlink-base = \"{LINK_BASE}\"\n"
        ),
    );
    // Slot 0 leaks JS objects, slot 1 Buffers (outside the JS heap).
    let node_leaks = node_pool("leak-once", "LEAK_KINDS = \"named,buffer\"\n");
    let node = FleetAgent::start("node-leaky", 2, &node_leaks, "");
    let healthy = FleetAgent::start("healthy", 2, &node_pool("sawtooth", ""), "");
    let prometheus = Prometheus::start(
        &[
            (rust.admin, rust.name, "r1"),
            (node.admin, node.name, "r2"),
            (healthy.admin, healthy.name, "r2"),
        ],
        alertmanager.addr,
    );
    let stop = Arc::new(AtomicBool::new(false));
    drive_rust_leak(rust.service, stop.clone());

    rust.proc.logs.wait_for(
        SECS(90),
        "the Rust pool's trip",
        msg("A leak rule tripped."),
    );
    stop.store(true, Ordering::Relaxed);
    let (rust_page, rust_alert) = webhook.wait_for(PAGE_WITHIN + SECS(30), "the Rust page", |a| {
        is_page(a, "rust-leaky", 0, "firing")
    });
    let (node_page, node_alert) = webhook.wait_for(SECS(90), "the Node page", |a| {
        is_page(a, "node-leaky", 0, "firing")
    });
    let (buffer_page, buffer_alert) = webhook.wait_for(SECS(90), "the Node Buffer page", |a| {
        is_page(a, "node-leaky", 1, "firing")
    });
    let rust_latency = trip_to_page(&rust, 0, &rust_page);
    let node_latency = trip_to_page(&node, 0, &node_page);
    let buffer_latency = trip_to_page(&node, 1, &buffer_page);
    eprintln!(
        "trip -> webhook: rust {rust_latency:.1}s, node {node_latency:.1}s, node buffers {buffer_latency:.1}s"
    );
    for latency in [rust_latency, node_latency, buffer_latency] {
        assert!(latency <= PAGE_WITHIN.as_secs_f64(), "{latency}s");
    }
    check_page(&rust, &rust_alert, RUST_LEAK_FN);
    check_page(&node, &node_alert, JS_LEAK_FN);
    // The agent with a link base puts the leak profile's link on the page, the very
    // link of its detection record; the others say "(none)".
    let detection = rust
        .proc
        .logs
        .wait_for(SECS(5), "the Rust detection record", |r| {
            r["msg"] == "A memory leak was detected." && r["worker"] == 0
        });
    let link = rust_alert["annotations"]["profile_link"]
        .as_str()
        .unwrap_or_default();
    assert!(
        link.starts_with(LINK_BASE) && link.contains("var-filters=worker%7C%3D%7C0"),
        "the page opens the leak profile: {rust_alert:#}"
    );
    assert_eq!(link, detection["profile_link"], "{detection}");
    for alert in [&node_alert, &buffer_alert] {
        assert_eq!(alert["annotations"]["profile_link"], "(none)", "{alert:#}");
    }
    // Buffers grew, the JS heap did not: the page names no function.
    let notes = &buffer_alert["annotations"];
    assert_eq!(notes["kind"], "external", "{buffer_alert:#}");
    assert_eq!(notes["function"], "(none)", "{buffer_alert:#}");
    assert!(
        notes["summary"]
            .as_str()
            .is_some_and(|s| s.contains("outside the JS heap") && !s.contains(" in ")),
        "{buffer_alert:#}"
    );
    for alert in [&rust_alert, &node_alert, &buffer_alert] {
        let mut labels: Vec<&String> = alert["labels"].as_object().unwrap().keys().collect();
        labels.sort();
        assert_eq!(
            labels,
            ["alertname", "instance", "rule", "severity", "worker"],
            "the alert's identity is stable: {alert:#}"
        );
    }

    // Mid-incident: a reload re-reads the rules; it must not page again.
    prometheus.reload();
    let suspects = prometheus.query("heapwarden_leak_suspect_info");
    let rows = suspects["data"]["result"].as_array().map_or(0, Vec::len);
    assert!(rows >= 3, "the three suspects in Prometheus: {suspects:#}");
    let queries = dashboard_queries();
    let mut with_data = 0;
    for expr in &queries {
        let answer = prometheus.query(expr);
        assert_eq!(answer["status"], "success", "{expr}: {answer:#}");
        with_data += usize::from(
            answer["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty()),
        );
    }
    eprintln!(
        "dashboard: {} expressions evaluate, {with_data} with data",
        queries.len()
    );
    let fleet_table = queries
        .iter()
        .find(|e| {
            e.starts_with(
                "max by (instance, release, worker, rule, function, kind, profile_id, profile_link)",
            )
        })
        .expect("the fleet suspect table");
    let table = prometheus.query(fleet_table);
    let rows = table["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(rows.len() >= 3, "{table:#}");
    // The table's link column opens the Rust agent's leak profile, as its page does.
    assert!(
        rows.iter().any(|r| r["metric"]["instance"] == "rust-leaky"
            && r["metric"]["profile_link"].as_str() == Some(link)),
        "{table:#}"
    );

    // The leaking workers were replaced; their suspects expire, and the pages resolve.
    let leaking = [("rust-leaky", 0), ("node-leaky", 0), ("node-leaky", 1)];
    for (instance, worker) in leaking {
        webhook.wait_for(SECS(60), &format!("{instance} {worker} resolved"), |a| {
            is_page(a, instance, worker, "resolved")
        });
    }
    let deliveries = webhook.all();
    for (instance, worker) in leaking {
        let firing = deliveries
            .iter()
            .filter(|d| {
                d.alerts()
                    .iter()
                    .any(|a| is_page(a, instance, worker, "firing"))
            })
            .count();
        assert_eq!(firing, 1, "{instance} {worker} paged once: {deliveries:#?}");
    }
    let healthy_pages: Vec<&Delivery> = deliveries
        .iter()
        .filter(|d| {
            d.alerts()
                .iter()
                .any(|a| a["labels"]["instance"] == "healthy")
        })
        .collect();
    assert!(
        healthy_pages.is_empty(),
        "the sawtooth pool was paged: {healthy_pages:#?}"
    );
    assert!(healthy.trips().is_empty(), "the sawtooth pool tripped");
    // And it was a sawtooth, not a flat line: each worker's heap swung by megabytes.
    let swing = prometheus.query(
        "max_over_time(heapwarden_worker_heap_allocated_bytes{instance=\"healthy\"}[20s]) - min_over_time(heapwarden_worker_heap_allocated_bytes{instance=\"healthy\"}[20s])",
    );
    let swings: Vec<f64> = swing["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["value"][1].as_str()?.parse().ok())
        .collect();
    assert!(
        swings.len() == 2 && swings.iter().all(|s| *s > 4.0 * 1048576.0),
        "the healthy pool's sawtooth: {swing:#}"
    );
}

/// The bench: one Node pool of `FLEET_BENCH_SLOTS` (default 10) workers, each leaking
/// once, through the same Prometheus → Alertmanager → webhook pipeline; prints trip →
/// webhook p50/p99 and the suspect series per slot.
#[test]
#[ignore = "bench: run with --ignored --nocapture"]
fn bench_trip_to_page_latency() {
    let slots: u64 = std::env::var("FLEET_BENCH_SLOTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let _guard = TimeoutGuard::new("fleet bench", SECS(600));
    let webhook = Webhook::start();
    let alertmanager = Alertmanager::start(&webhook);
    let pool = FleetAgent::start("bench", slots as usize, &node_pool("leak-once", ""), "");
    let _prometheus = Prometheus::start(&[(pool.admin, pool.name, "bench")], alertmanager.addr);
    // A slot whose first worker was replaced before it tripped (unhealthy under load)
    // never leaks again (the marker file): it is counted, not measured.
    let deadline = std::time::Instant::now() + SECS(240);
    let mut latencies = Vec::new();
    let mut never_tripped = 0;
    for worker in 0..slots {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let tripped = try_poll(left, || {
            pool.trips().iter().any(|(w, _)| *w == worker).then_some(())
        });
        if tripped.is_none() {
            never_tripped += 1;
            continue;
        }
        let (page, _) = webhook.wait_for(SECS(90), &format!("the page of worker {worker}"), |a| {
            is_page(a, "bench", worker, "firing")
        });
        latencies.push(trip_to_page(&pool, worker, &page));
    }
    let unhealthy = pool
        .proc
        .logs
        .matching(msg(
            "A worker stopped answering; asking for its replacement.",
        ))
        .len();
    assert!(
        latencies.len() >= 10,
        "only {} of {slots} slots tripped ({unhealthy} unhealthy replacements)",
        latencies.len()
    );
    let (_, body) = http_get(pool.admin, "/metrics", SECS(5)).expect("scrape");
    let series = body
        .lines()
        .filter(|l| l.starts_with("heapwarden_leak_suspect_info{"))
        .count();
    println!("| trips | trip->webhook p50 | p99 | max | suspect series | slots | not tripped |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.1} s | {:.1} s | {:.1} s | {series} | {slots} | {never_tripped} |",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0),
    );
    assert!(
        series as u64 <= slots,
        "one suspect series per slot at most"
    );
}
