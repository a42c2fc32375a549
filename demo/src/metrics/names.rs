//! The demo's metric names and label values, typed once (the dashboards and alerts use
//! these names; DESIGN.md lists them). Every series whose labels come from a small enum
//! here is registered at 0 by [`register_zero_series`], so `rate()` sees the first event
//! and no outcome is forgotten. The HTTP families are labelled by the fixed route, method
//! and status tables below and created on first use: zero-filling their product would
//! put hundreds of never-used series on every scrape. Only the answers of the service's
//! own routes ([`ZERO_REQUESTS`]) start at zero, so the dashboard's request and latency
//! panels have their series from the first scrape. Every family has its HELP text
//! ([`describe`]): `promtool check metrics` lints a family without one.

use axum::http::Method;

pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";
pub const CACHE_LOOKUPS_TOTAL: &str = "demo_cache_lookups_total";
pub const CACHE_INVALIDATIONS_TOTAL: &str = "demo_cache_invalidations_total";
pub const JOBS_TOTAL: &str = "demo_jobs_total";
pub const DB_POOL_CONNECTIONS: &str = "demo_db_pool_connections";

/// Route templates of the router (`routes::router`), hottest first. A route missing here
/// is still counted, through the slow path.
pub const ROUTES: &[&str] = &[
    "/items/{id}",
    "/items/export",
    "/compute",
    "/jobs",
    "/jobs/{id}",
    "/debug/leak",
    "/healthz",
    "/readyz",
    "/metrics",
];
/// The route label of requests no route matched.
pub const UNMATCHED: &str = "unmatched";
pub const METHODS: &[Method] = &[
    Method::GET,
    Method::PUT,
    Method::DELETE,
    Method::POST,
    Method::HEAD,
];
pub const STATUSES: &[(u16, &str)] = &[
    (200, "200"),
    (202, "202"),
    (204, "204"),
    (400, "400"),
    (404, "404"),
    (405, "405"),
    (413, "413"),
    (415, "415"),
    (503, "503"),
];

/// The requests whose series exist from the first scrape: each service route with the
/// method and status of its ordinary answer (`http_requests_total`), and its latency
/// histogram (`http_request_duration_seconds`).
pub const ZERO_REQUESTS: &[(Method, &str, &str)] = &[
    (Method::GET, "/items/{id}", "200"),
    (Method::GET, "/items/export", "200"),
    (Method::POST, "/compute", "200"),
    (Method::POST, "/jobs", "202"),
    (Method::GET, "/jobs/{id}", "200"),
];

/// Which layer answered a read (`demo_cache_lookups_total{layer}`); `Miss`: none had it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    L1,
    L2,
    Db,
    Miss,
}

impl Lookup {
    pub const ALL: [Lookup; 4] = [Lookup::L1, Lookup::L2, Lookup::Db, Lookup::Miss];

    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::L1 => "l1",
            Lookup::L2 => "l2",
            Lookup::Db => "db",
            Lookup::Miss => "miss",
        }
    }
}

/// How a job attempt ended (`demo_jobs_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Completed,
    Retried,
    Failed,
}

impl JobOutcome {
    pub const ALL: [JobOutcome; 3] = [
        JobOutcome::Completed,
        JobOutcome::Retried,
        JobOutcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Completed => "completed",
            JobOutcome::Retried => "retried",
            JobOutcome::Failed => "failed",
        }
    }
}

/// Connections of the SQL pool (`demo_db_pool_connections{state}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolState {
    Idle,
    InUse,
}

impl PoolState {
    pub const ALL: [PoolState; 2] = [PoolState::Idle, PoolState::InUse];

    pub fn as_str(self) -> &'static str {
        match self {
            PoolState::Idle => "idle",
            PoolState::InUse => "in_use",
        }
    }
}

/// HELP text of every family. Call once, after the recorder is installed.
pub fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests answered, by route template, method and status."
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time from a request's arrival to its answer, by route template and method."
    );
    metrics::describe_counter!(
        CACHE_LOOKUPS_TOTAL,
        "Item reads, by the cache layer that answered (miss: found nowhere)."
    );
    metrics::describe_counter!(
        CACHE_INVALIDATIONS_TOTAL,
        "Cache entries dropped because another worker changed the item."
    );
    metrics::describe_counter!(JOBS_TOTAL, "Background job attempts, by how they ended.");
    metrics::describe_gauge!(
        DB_POOL_CONNECTIONS,
        "Connections of the SQL pool, idle or in use."
    );
}

/// Registers every enum-labelled series, and the requests of [`ZERO_REQUESTS`], at 0.
/// Call once, after the recorder is installed.
pub fn register_zero_series() {
    describe();
    for (method, route, status) in ZERO_REQUESTS {
        let method = method.as_str().to_string();
        metrics::counter!(HTTP_REQUESTS_TOTAL,
            "method" => method.clone(), "route" => *route, "status" => *status)
        .increment(0);
        let _ = metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS,
            "method" => method, "route" => *route);
    }
    for lookup in Lookup::ALL {
        metrics::counter!(CACHE_LOOKUPS_TOTAL, "layer" => lookup.as_str()).increment(0);
    }
    metrics::counter!(CACHE_INVALIDATIONS_TOTAL).increment(0);
    for outcome in JobOutcome::ALL {
        metrics::counter!(JOBS_TOTAL, "outcome" => outcome.as_str()).increment(0);
    }
    for state in PoolState::ALL {
        metrics::gauge!(DB_POOL_CONNECTIONS, "state" => state.as_str()).set(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Handles` index their counters by discriminant.
    #[test]
    fn all_lists_every_value_in_discriminant_order() {
        for (i, lookup) in Lookup::ALL.iter().enumerate() {
            assert_eq!(*lookup as usize, i);
        }
        let labels: Vec<&str> = Lookup::ALL.iter().map(|l| l.as_str()).collect();
        assert_eq!(labels, ["l1", "l2", "db", "miss"]);
        let outcomes: Vec<&str> = JobOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(outcomes, ["completed", "retried", "failed"]);
    }

    /// The zero series are the ones the request path's fast handles later count into.
    #[test]
    fn zero_requests_are_in_the_fixed_tables() {
        for (method, route, status) in ZERO_REQUESTS {
            assert!(METHODS.contains(method), "{method}");
            assert!(ROUTES.contains(route), "{route}");
            assert!(STATUSES.iter().any(|(_, s)| s == status), "{status}");
        }
    }
}
