//! Make-before-break replacement of leaking Node workers under a client loop: the
//! probe reports ready when the app listens on the inherited socket, and on drain stops
//! accepting, lets in-flight requests finish and closes idle connections, so 20 leak
//! replacements drop no request.

mod node_support;

use std::sync::atomic::Ordering;

use heapwarden_tests::*;
use node_support::*;

#[test]
fn twenty_leak_replacements_of_node_workers_fail_no_request() {
    let _guard = TimeoutGuard::new("node replacements", SECS(300));
    // Buffer leaks are cheap to make: each worker crosses max-memory a few seconds in.
    let setup = start(
        r#"["node", "app.js"]"#,
        2,
        r#"[pool.env]
LEAK = "buffer"
LEAK_BYTES = "1500000"
[sampling]
interval = "250ms"
[watchdog]
warmup = "1s"
max-memory = "48MiB"
growth = "off"
trend-min-rate = "off"
max-leak-restarts-per-hour = 1000
[log]
level = "warn"
"#,
    );
    let clients = ClientLoop::start(setup.service, 4, |_| "/".to_string());
    let restarts = || -> u64 {
        setup
            .workers()
            .iter()
            .map(|w| w["restarts"].as_u64().unwrap_or(0))
            .sum()
    };
    poll_until(SECS(240), "20 leak replacements", || restarts() >= 20);
    // The last replacement finishes draining under load too.
    let served = clients.ok.load(Ordering::Relaxed);
    poll_until(SECS(30), "traffic after the last replacement", || {
        clients.ok.load(Ordering::Relaxed) > served + 200
    });
    let (ok, failed) = clients.finish();
    let metrics = http_get(setup.admin, "/metrics", SECS(5)).unwrap().1;
    let leak_restarts: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("heapwarden_worker_restarts_total{") && l.contains("reason=\"leak\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        leak_restarts >= 20.0,
        "{leak_restarts} leak restarts:\n{metrics}"
    );
    assert!(ok > 1000, "only {ok} requests served");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        ok,
        &failed[..failed.len().min(5)]
    );
}
