//! The HTTP surface: the router and its handlers. Handlers validate input into
//! `ApiError`s (JSON, 4xx) and leave caching to `items`, CPU work to `compute`, jobs to
//! `jobs`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use slog::info;
use tokio_stream::wrappers::ReceiverStream;

use super::App;
use super::compute::stretch_password;
use super::error::{ApiError, TimedBytes, parse_id, parse_json};
use super::items;
use super::jobs::JobSpec;
use super::leak::{MAX_LEAK_PER_REQUEST, leak_on_purpose_for_heap_profile};
use super::observe::{ObserveLayer, RequestId};

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

pub fn router(app: Arc<App>) -> Router {
    let max_body = usize::try_from(app.config.max_body.bytes()).unwrap_or(usize::MAX);
    Router::new()
        .route("/items/export", get(export_items))
        .route(
            "/items/{id}",
            get(get_item).put(put_item).delete(delete_item),
        )
        .route("/compute", post(compute))
        .route("/jobs", post(create_job))
        .route("/jobs/{id}", get(job_status))
        .route("/debug/leak", post(leak))
        .route("/healthz", get(super::server::healthz))
        .route("/readyz", get(super::server::readyz))
        .route("/metrics", get(metrics))
        .fallback(unknown_route)
        .layer(ObserveLayer::new(app.clone()))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(app)
}

async fn unknown_route() -> ApiError {
    ApiError::not_found("no such route")
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = super::metrics::render(&app);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn get_item(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    match items::read(&app, id).await? {
        Some((body, layer)) => Ok(item_response(body, layer)),
        None => Err(ApiError::not_found(format!("no item {id}"))),
    }
}

/// The answer to `GET /items/{id}`: the cached JSON body as is.
pub fn item_response(body: Bytes, layer: items::Layer) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, JSON);
    headers.insert(X_CACHE, HeaderValue::from_static(layer.as_str()));
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemBody {
    name: String,
    value: i64,
}

async fn put_item(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
    TimedBytes(body): TimedBytes,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let body: ItemBody = parse_json(body)?;
    if body.name.len() > 1024 {
        return Err(ApiError::bad_request("name is longer than 1024 bytes"));
    }
    let version = app.db.put_item(id, &body.name, body.value).await?;
    items::invalidate_everywhere(&app, id, version).await?;
    let item = json!({"id": id, "name": body.name, "value": body.value, "version": version});
    Ok(Json(item).into_response())
}

async fn delete_item(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let Some(version) = app.db.delete_item(id).await? else {
        return Err(ApiError::not_found(format!("no item {id}")));
    };
    items::invalidate_everywhere(&app, id, version).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Rows in flight between the cursor and the socket: 16 chunks of ~32 KiB.
const EXPORT_CHUNKS_IN_FLIGHT: usize = 16;

async fn export_items(State(app): State<Arc<App>>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_CHUNKS_IN_FLIGHT);
    let db = app.db.clone();
    tokio::spawn(async move { db.export_items(tx).await });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ComputeBody {
    password: String,
    rounds: u64,
}

async fn compute(
    State(app): State<Arc<App>>,
    TimedBytes(body): TimedBytes,
) -> Result<Response, ApiError> {
    let body: ComputeBody = parse_json(body)?;
    let max = app.config.compute_max_rounds;
    if body.rounds == 0 || body.rounds > max {
        return Err(ApiError::bad_request(format!(
            "rounds must be between 1 and {max}"
        )));
    }
    let rounds = body.rounds;
    let started = Instant::now();
    let done = app
        .compute
        .try_run(move || stretch_password(&body.password, rounds))?;
    let digest = done
        .await
        .map_err(|_| ApiError::unavailable("the compute pool stopped", 1))?;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    Ok(Json(json!({"digest": digest, "rounds": rounds, "micros": micros})).into_response())
}

async fn create_job(
    State(app): State<Arc<App>>,
    request_id: RequestId,
    TimedBytes(body): TimedBytes,
) -> Result<Response, ApiError> {
    let spec: JobSpec = parse_json(body)?;
    if spec.rounds > app.config.compute_max_rounds {
        return Err(ApiError::bad_request("rounds exceeds compute-max-rounds"));
    }
    let payload = serde_json::to_string(&spec)
        .map_err(|e| ApiError::bad_request(format!("unstorable job: {e}")))?;
    let id = app
        .db
        .enqueue_job(&payload, app.config.job_max_attempts)
        .await?;
    info!(app.log, "Queued a job."; "job" => id, "request_id" => request_id.as_str(),
        "payload" => app.redactor.json(serde_json::to_value(&spec).unwrap_or_default()));
    app.jobs.wake.notify_one();
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "state": "queued"})),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/jobs/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn job_status(
    State(app): State<Arc<App>>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    match app.db.job_status(id).await? {
        Some(status) => Ok(Json(status).into_response()),
        None => Err(ApiError::not_found(format!("no job {id}"))),
    }
}

#[derive(Deserialize)]
struct LeakQuery {
    bytes: Option<String>,
}

async fn leak(
    State(app): State<Arc<App>>,
    query: Result<Query<LeakQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    if !app.config.leak_endpoint {
        return Err(ApiError::not_found(
            "the leak endpoint is off (demo.leak-endpoint)",
        ));
    }
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let raw = query.bytes.unwrap_or_default();
    let bytes: u64 = raw.parse().map_err(|_| {
        ApiError::bad_request(format!("bytes must be a non-negative integer, got {raw:?}"))
    })?;
    if bytes > MAX_LEAK_PER_REQUEST {
        return Err(ApiError::bad_request(format!(
            "bytes must be at most {MAX_LEAK_PER_REQUEST}"
        )));
    }
    let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    let total = leak_on_purpose_for_heap_profile(bytes);
    Ok(Json(json!({"leaked": bytes, "leaked_total": total})).into_response())
}
