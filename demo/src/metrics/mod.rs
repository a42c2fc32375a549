//! Worker metrics: the process-wide Prometheus recorder and the handles the request path
//! records through. Names and label values live in `names`.
//!
//! The recorder carries the `worker="<slot>"` label on every series; its rendering is what
//! the probe hands the agent (and what `GET /metrics` serves when run alone). The request
//! path never builds a label set: `metrics::counter!` with owned labels allocates the
//! labels, hashes them and looks the series up in the registry on every call, which cost
//! more than serving an L1 hit. Handles are created once per (route, method, status) on
//! first use and kept here; a combination outside the fixed tables (an unusual method or
//! status) takes the slow path through the macro.

pub mod names;

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::Method;
use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use super::App;
use super::items::Layer;
use names::{
    CACHE_INVALIDATIONS_TOTAL, CACHE_LOOKUPS_TOTAL, DB_POOL_CONNECTIONS,
    HTTP_REQUEST_DURATION_SECONDS, HTTP_REQUESTS_TOTAL, Lookup, METHODS, PoolState, ROUTES,
    STATUSES, UNMATCHED,
};

const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot build the Prometheus recorder: {0}")]
    Build(#[from] BuildError),
    #[error("a global metrics recorder is already installed in this process")]
    AlreadyInstalled,
}

/// Installs the process-wide recorder and registers the zero series; call once per
/// worker process.
pub fn install(slot: usize) -> Result<PrometheusHandle, MetricsError> {
    let recorder = recorder(slot)?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| MetricsError::AlreadyInstalled)?;
    names::register_zero_series();
    Ok(handle)
}

/// The worker's recorder: `worker="<slot>"` on every series, the latency buckets.
fn recorder(slot: usize) -> Result<PrometheusRecorder, MetricsError> {
    Ok(PrometheusBuilder::new()
        .add_global_label("worker", slot.to_string())
        .set_buckets_for_metric(
            Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.into()),
            DURATION_BUCKETS,
        )?
        .build_recorder())
}

/// Prometheus text with the pool gauges refreshed first.
pub fn render(app: &App) -> String {
    let (idle, in_use) = app.db.pool_connections();
    for (state, count) in [(PoolState::Idle, idle), (PoolState::InUse, in_use)] {
        metrics::gauge!(DB_POOL_CONNECTIONS, "state" => state.as_str()).set(count as f64);
    }
    app.metrics.render()
}

/// Handles of every series the request path touches. Build after `install`.
pub struct Handles {
    /// By `Lookup::ALL`.
    lookups: [Counter; Lookup::ALL.len()],
    invalidations: Counter,
    /// `ROUTES` then `UNMATCHED`, each by method of `METHODS`.
    routes: Box<[[RouteMethod; METHODS.len()]]>,
}

#[derive(Default)]
struct RouteMethod {
    duration: OnceLock<Histogram>,
    by_status: [OnceLock<Counter>; STATUSES.len()],
}

/// A route as the request path knows it: its index in `ROUTES` (or unmatched).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteIndex(usize);

impl RouteIndex {
    /// The index of `template`, or None for a route not in `ROUTES`.
    pub fn of(template: Option<&str>) -> Option<RouteIndex> {
        match template {
            None => Some(RouteIndex(ROUTES.len())),
            Some(t) => ROUTES.iter().position(|r| *r == t).map(RouteIndex),
        }
    }

    pub fn label(self) -> &'static str {
        ROUTES.get(self.0).copied().unwrap_or(UNMATCHED)
    }
}

impl Handles {
    pub fn new() -> Handles {
        Handles {
            lookups: Lookup::ALL
                .map(|l| metrics::counter!(CACHE_LOOKUPS_TOTAL, "layer" => l.as_str())),
            invalidations: metrics::counter!(CACHE_INVALIDATIONS_TOTAL),
            routes: (0..=ROUTES.len()).map(|_| Default::default()).collect(),
        }
    }

    /// Counts a read answered by `layer` (None: found nowhere).
    pub fn count_lookup(&self, layer: Option<Layer>) {
        let lookup = match layer {
            Some(Layer::L1) => Lookup::L1,
            Some(Layer::L2) => Lookup::L2,
            Some(Layer::Db) => Lookup::Db,
            None => Lookup::Miss,
        };
        self.lookups[lookup as usize].increment(1);
    }

    pub fn count_invalidation(&self) {
        self.invalidations.increment(1);
    }

    /// `http_requests_total` and `http_request_duration_seconds` for one request.
    /// `route` is the matched template (None: no route matched).
    pub fn record_request(
        &self,
        route: Option<&str>,
        method: &Method,
        status: u16,
        elapsed: Duration,
    ) {
        let seconds = elapsed.as_secs_f64();
        let known = RouteIndex::of(route)
            .zip(METHODS.iter().position(|m| m == method))
            .zip(STATUSES.iter().position(|(s, _)| *s == status));
        let Some(((route, m), s)) = known else {
            let route = route.unwrap_or(UNMATCHED).to_string();
            let method = method.as_str().to_string();
            metrics::counter!(HTTP_REQUESTS_TOTAL,
                "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
            .increment(1);
            metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "method" => method, "route" => route)
                .record(seconds);
            return;
        };
        let (method, route_label) = (METHODS[m].as_str(), route.label());
        let slot = &self.routes[route.0][m];
        slot.by_status[s]
            .get_or_init(|| {
                metrics::counter!(HTTP_REQUESTS_TOTAL,
                    "method" => method, "route" => route_label, "status" => STATUSES[s].1)
            })
            .increment(1);
        slot.duration
            .get_or_init(|| {
                metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS,
                    "method" => method, "route" => route_label)
            })
            .record(seconds);
    }
}

impl Default for Handles {
    fn default() -> Self {
        Handles::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page a fresh worker renders before it has served anything.
    fn first_page() -> String {
        let recorder = recorder(0).expect("recorder");
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, names::register_zero_series);
        handle.render()
    }

    /// Defect: every `demo_*` family lacked HELP text (promtool: "no help text"), and the
    /// request series the dashboard reads appeared only after the first request.
    /// (`tests/tests/demo_metrics.rs` runs promtool on the agent's page.)
    #[test]
    fn a_fresh_worker_describes_every_family_and_has_the_dashboards_series() {
        let page = first_page();
        for line in page.lines().filter(|l| l.starts_with("# TYPE ")) {
            let family = line.split(' ').nth(2).expect("family name");
            assert!(
                page.contains(&format!("# HELP {family} ")),
                "{family} has no HELP:\n{page}"
            );
        }
        for (method, route, status) in names::ZERO_REQUESTS {
            let counter = format!(
                "http_requests_total{{worker=\"0\",method=\"{method}\",route=\"{route}\",status=\"{status}\"}} 0"
            );
            assert!(page.contains(&counter), "{counter} missing:\n{page}");
            let count = format!(
                "http_request_duration_seconds_count{{worker=\"0\",method=\"{method}\",route=\"{route}\"}} 0"
            );
            assert!(page.contains(&count), "{count} missing:\n{page}");
        }
        for family in [
            names::CACHE_LOOKUPS_TOTAL,
            names::CACHE_INVALIDATIONS_TOTAL,
            names::JOBS_TOTAL,
            names::DB_POOL_CONNECTIONS,
        ] {
            assert!(page.contains(&format!("# HELP {family} ")), "{page}");
        }
    }
}
