//! The admin HTTP server (axum, loopback by default): `/metrics` (the agent's recorder
//! merged with every worker's reported families), `/healthz`, `/readyz`, and a place for
//! the authenticated `/api/v1/*` routes. It runs on its own thread and runtime
//! ([`server`]) with connection limits, and only reads: the pool view and heartbeat from
//! the supervisor, the workers' metrics text from [`exposition`]'s fetching task (which
//! runs on the agent's runtime).

pub mod api;
pub mod auth;
pub mod exposition;
pub mod health;
pub mod page;
pub mod recorder;
pub mod server;

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use tokio::sync::watch;

pub use auth::{AdminToken, AuthError, load_or_create_token, require_token};
pub use exposition::{
    Exposition, ExpositionReader, Reject, WorkerPage, WorkerPart, exposition_channel,
    merge_workers, run_worker_metrics,
};
pub use page::WorkerPageCache;
pub use recorder::{RecorderError, install_recorder, spawn_upkeep};
pub use server::{AdminServer, Limits, connection_budget, raise_fd_limit};

use crate::metric_names::MetricsHandle;
use crate::supervisor::PoolView;
use crate::watchdog::SuspectView;

/// Request bodies beyond this are refused (413); the API takes small JSON only.
pub const BODY_LIMIT: usize = 64 * 1024;
/// A sensible `AdminState::heartbeat_max_age` for a control loop ticking every second.
pub const DEFAULT_HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(5);
/// Prometheus text format 0.0.4.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything the handlers read; cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: MetricsHandle,
    pub exposition: ExpositionReader,
    pub pool: watch::Receiver<PoolView>,
    /// The supervisor sends `Instant::now()` on every control-loop tick.
    pub heartbeat: watch::Receiver<Instant>,
    /// `/healthz` fails once the last tick is older than this.
    pub heartbeat_max_age: Duration,
    pub token: AdminToken,
    /// Serve `/metrics`, `/healthz`, `/readyz` without the token.
    pub open_metrics: bool,
    pub worker_page: WorkerPageCache,
    /// Each slot's leak suspect (`heapwarden_leak_suspect_info`), from the watchdog.
    pub suspects: watch::Receiver<SuspectView>,
}

/// The admin routes without an API.
pub fn router(state: AdminState) -> Router {
    router_with_api(state, Router::new())
}

/// The admin routes, with `api` (already given its state) nested under `/api/v1` behind
/// the bearer token.
pub fn router_with_api(state: AdminState, api: Router) -> Router {
    let token = state.token.clone();
    let mut probes = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state.clone());
    if !state.open_metrics {
        probes = probes.layer(middleware::from_fn_with_state(token.clone(), require_token));
    }
    let api = api.layer(middleware::from_fn_with_state(token, require_token));
    probes
        .nest("/api/v1", api)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Also for handlers that never read their body: refused up front, not drained.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(BODY_LIMIT))
}

/// Bytes of metrics text kept per worker; families beyond it are dropped and counted
/// (`reason="too_large"`).
pub const WORKER_METRICS_BUDGET: usize = 2 * 1024 * 1024;

/// Every worker's families merged, checked and capped.
pub fn render_workers(snapshot: &Exposition) -> WorkerPage {
    let parts: Vec<WorkerPart<'_>> = snapshot
        .workers
        .iter()
        .map(|(slot, text)| WorkerPart {
            slot: *slot,
            text: &text.text,
        })
        .collect();
    merge_workers(&parts, WORKER_METRICS_BUDGET)
}

/// The whole page: the recorder's families, then the workers'. The two never share a
/// family: worker families under the agent's `heapwarden_` prefix are refused.
pub fn render_metrics(agent: &str, workers: &Exposition) -> String {
    let mut page = String::from(agent);
    if !page.is_empty() && !page.ends_with('\n') {
        page.push('\n');
    }
    page.push_str(&render_workers(workers).text);
    page
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let ready: Vec<u64> = state
        .pool
        .borrow()
        .slots
        .iter()
        .filter_map(|s| s.worker.as_ref())
        .filter(|w| w.ready && w.probe && w.link.is_some())
        .map(|w| w.worker_id)
        .collect();
    let snapshot = state.exposition.scrape_fresh(&ready).await;
    let workers = state.worker_page.get(snapshot).await;
    // Rendered after the worker text, so this page already counts its rejected lines.
    let mut agent = state.metrics.render();
    if !agent.is_empty() && !agent.ends_with('\n') {
        agent.push('\n');
    }
    let suspects = Bytes::from(crate::watchdog::suspect::render(&state.suspects.borrow()));
    // The renders' scratch is freed into this thread's malloc arena, which would keep its
    // pages resident until the next scrape (~11 KiB per worker, internals/performance.md).
    crate::resident::trim_heap();
    let body = Body::new(page::Chunks::new([Bytes::from(agent), suspects, workers]));
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body)
}

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
