//! Worker metrics and the request log.
//!
//! The Prometheus recorder is installed globally in the worker process with the
//! `worker="<slot>"` label on every series; its rendering is what the probe hands the
//! agent (and what `GET /metrics` serves when run alone). The `observe` middleware
//! times every request, counts it under its route *template* and writes one log record
//! with the request id (propagated from `x-request-id` or generated).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use slog::info;

use super::App;
use crate::log::RedactedJson;

const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
const REQUEST_ID: &str = "x-request-id";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot build the Prometheus recorder: {0}")]
    Build(#[from] BuildError),
    #[error("a global metrics recorder is already installed in this process")]
    AlreadyInstalled,
}

/// Installs the process-wide recorder; call once per worker process.
pub fn install(slot: usize) -> Result<PrometheusHandle, MetricsError> {
    let recorder = PrometheusBuilder::new()
        .add_global_label("worker", slot.to_string())
        .set_buckets_for_metric(
            Matcher::Full("http_request_duration_seconds".into()),
            DURATION_BUCKETS,
        )?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| MetricsError::AlreadyInstalled)?;
    Ok(handle)
}

/// Prometheus text with the pool gauges refreshed first.
pub fn render(app: &App) -> String {
    let (idle, in_use) = app.db.pool_connections();
    metrics::gauge!("demo_db_pool_connections", "state" => "idle").set(idle as f64);
    metrics::gauge!("demo_db_pool_connections", "state" => "in_use").set(in_use as f64);
    app.metrics.render()
}

pub fn count_lookup(layer: &'static str) {
    metrics::counter!("demo_cache_lookups_total", "layer" => layer).increment(1);
}

/// The request id a handler can log with.
#[derive(Clone, Debug)]
pub struct RequestId(pub Arc<str>);

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

fn request_id(headers: &HeaderMap) -> Arc<str> {
    let given = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()));
    match given {
        Some(id) => Arc::from(id),
        None => {
            let n = NEXT_REQUEST.fetch_add(1, Ordering::Relaxed);
            Arc::from(format!(
                "{:x}-{:x}-{n:x}",
                std::process::id(),
                crate::demo::db::now_ms()
            ))
        }
    }
}

fn headers_json(headers: &HeaderMap) -> serde_json::Value {
    let map = headers
        .iter()
        .map(|(name, value)| {
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_string(), serde_json::Value::String(text))
        })
        .collect();
    serde_json::Value::Object(map)
}

pub async fn observe(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_string();
    let route: String = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let id = request_id(request.headers());
    let headers = app.log_requests.then(|| headers_json(request.headers()));
    let path = request.uri().path().to_string();
    request.extensions_mut().insert(RequestId(id.clone()));

    let mut response = next.run(request).await;

    let elapsed = started.elapsed();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
        .headers_mut()
        .insert("x-worker", app.worker_header.clone());
    let status = response.status().as_u16();
    metrics::counter!("http_requests_total",
        "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
    .increment(1);
    metrics::histogram!("http_request_duration_seconds",
        "method" => method.clone(), "route" => route.clone())
    .record(elapsed.as_secs_f64());
    if let Some(headers) = headers {
        info!(app.log, "Served a request.";
            "method" => method, "route" => route, "path" => path, "status" => status,
            "latency_ms" => elapsed.as_secs_f64() * 1000.0, "request_id" => &*id,
            "headers" => RedactedJson(headers));
    }
    response
}
