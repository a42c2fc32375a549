//! The agent's `/metrics` with demo workers passes `promtool check metrics` without a
//! single lint (every family has HELP text), and the request series the dashboards read
//! are there, at zero, from the first scrape that carries the workers' metrics — before
//! any request was served.
#![forbid(unsafe_code)]

use std::time::Duration;

use heapwarden_tests::tools::promtool_check_metrics;
use heapwarden_tests::{AgentConfig, Sandbox, TimeoutGuard, http_get, poll, wait_until_ok};

const SECS: fn(u64) -> Duration = Duration::from_secs;

#[test]
fn demo_metrics_lint_clean_and_request_series_exist_from_the_first_scrape() {
    let _guard = TimeoutGuard::new("demo_metrics_lint", SECS(120));
    let sandbox = Sandbox::new();
    let config = AgentConfig::new(2, &[]).set("sampling", "interval", "1s");
    let agent = sandbox.agent(&config.to_string());
    wait_until_ok(config.admin, "/readyz", SECS(60), &agent.logs);
    // The first page on which both workers' own families appear.
    let page = poll(SECS(30), "the workers' metrics on /metrics", || {
        let (status, body) = http_get(config.admin, "/metrics", SECS(10)).ok()?;
        (status == 200
            && body.contains("demo_cache_lookups_total{worker=\"0\"")
            && body.contains("demo_cache_lookups_total{worker=\"1\""))
        .then_some(body)
    });
    for worker in ["0", "1"] {
        let served = format!(
            "http_requests_total{{worker=\"{worker}\",method=\"GET\",route=\"/items/{{id}}\",status=\"200\"}} 0"
        );
        assert!(page.contains(&served), "{served} missing:\n{page}");
        let latency = format!(
            "http_request_duration_seconds_count{{worker=\"{worker}\",method=\"GET\",route=\"/items/{{id}}\"}} 0"
        );
        assert!(page.contains(&latency), "{latency} missing:\n{page}");
    }
    let (code, report) = promtool_check_metrics(&page);
    assert!(
        code == Some(0) && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
}
