//! The dashboard against a running agent: every metric name its expressions use is
//! exported by a real `heapwarden run` with demo workers that have served requests, run a
//! job, leaked, been profiled and been replaced.

use std::net::SocketAddr;
use std::time::Duration;

use heapwarden_tests::promql::dashboard_metric_names;
use heapwarden_tests::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Names the dashboard may use that come from Prometheus itself, not from the agent.
const FROM_PROMETHEUS: &[&str] = &["up"];

fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> u16 {
    http_request(addr, method, path, None, body.as_bytes(), SECS(10))
        .map_or(0, |(status, _)| status)
}

#[test]
fn every_dashboard_metric_is_exported_by_a_running_agent() {
    let _guard = TimeoutGuard::new("dashboard_live", SECS(120));
    let sandbox = Sandbox::new();
    let config = AgentConfig::new(2, &[])
        .set("pool", "min-uptime", "1s")
        .set("pool", "drain-timeout", "3s")
        .set("sampling", "interval", "250ms")
        .set("sampling", "pss-every", "2")
        .set("watchdog", "warmup", "2s")
        .set("watchdog", "growth", "off")
        .set("watchdog", "trend-window", "5s")
        .set("watchdog", "trend-min-rate", "1MiB/s")
        // One leak replacement, then the budget holds the slot still for the traffic below.
        .set("watchdog", "max-leak-restarts-per-hour", "1")
        .set("log", "level", "warn")
        .set("demo", "seed-rows", "50")
        .set("demo", "leak-rate", "6MiB")
        .set("demo", "leak-slots", "[1]");
    let agent = sandbox.agent(&config.to_string());
    let (service, admin) = (config.listen, config.admin);
    wait_until_ok(admin, "/readyz", SECS(60), &agent.logs);
    // A leak replacement first: detections, profiles, restarts{reason="leak"}, a drain.
    agent.logs.wait_for(SECS(60), "a leak replacement", |r| {
        r["msg"] == "A memory leak was detected." && r["worker"] == 1 && r["action"] == "restart"
    });
    let has = |body: &str, prefix: &str, nonzero: bool| {
        body.lines()
            .any(|l| l.starts_with(prefix) && !(nonzero && l.ends_with(" 0")))
    };
    let scrape = || {
        http_get(admin, "/metrics", SECS(5))
            .expect("scrape /metrics")
            .1
    };
    poll_until(SECS(30), "a drain in /metrics", || {
        has(&scrape(), "heapwarden_drain_duration_seconds_count", true)
    });
    // Then traffic for the demo's families: reads (l1/db), a write (invalidation), a job.
    for id in 1..=20 {
        assert_eq!(request(service, "GET", &format!("/items/{id}"), ""), 200);
        assert_eq!(request(service, "GET", &format!("/items/{id}"), ""), 200);
    }
    assert_eq!(
        request(service, "PUT", "/items/3", r#"{"name":"x","value":1}"#),
        200
    );
    assert!(matches!(
        request(
            service,
            "POST",
            "/jobs",
            r#"{"password":"p","rounds":1000}"#
        ),
        200..=202
    ));
    let families = [
        "http_requests_total",
        "demo_jobs_total",
        "demo_cache_invalidations_total",
        "demo_cache_lookups_total",
    ];
    let body = poll(SECS(30), "the demo's metric families", || {
        let body = scrape();
        families
            .iter()
            .all(|f| has(&body, f, false))
            .then_some(body)
    });
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dashboards/heapwarden.json"
    ))
    .expect("dashboard JSON");
    let names = dashboard_metric_names(&dashboard);
    assert!(
        names.len() > 20,
        "the dashboard uses many metrics: {names:?}"
    );
    let exported = |name: &str| {
        body.lines().any(|l| {
            l.starts_with(&format!("# TYPE {name} "))
                || l.starts_with(&format!("{name}{{"))
                || l.starts_with(&format!("{name} "))
        })
    };
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !FROM_PROMETHEUS.contains(&n.as_str()) && !exported(n))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard metrics the agent does not export: {missing:?}"
    );
}
