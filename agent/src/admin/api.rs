//! The on-call API under `/api/v1` (behind the bearer token): workers, heap profiles on
//! demand, profile download and diffs, manual restart and rolling reload. Handlers only
//! read snapshots and send requests; the supervisor, the watchdog and the profile store
//! own their state.

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use slog::Logger;
use tokio::sync::{mpsc, oneshot, watch};

use crate::api_types::{ErrorReply, KeyError, ReloadReply, RestartReply, WorkerRow};
use crate::log::causes;
use crate::profiles::retainers::{self, RetainersDiff};
use crate::profiles::{
    CaptureError, CaptureRequest, ProfileId, ProfileKind, ProfileStoreHandle, SnapshotError,
    StoreError, Trigger, take_profile, take_snapshot,
};
use crate::supervisor::{PoolView, ReloadOutcome, Request, RestartReason, WorkerView};
use crate::watchdog::FiguresView;

/// Growing holders a retainers diff lists.
const RETAINERS_SHOWN: usize = 15;
/// `Retry-After` of a refused manual dump: a dump takes well under a second.
const RETRY_DUMP_AFTER_SECONDS: &str = "1";
/// A reload answers once the file is read and validated, which takes milliseconds; a
/// config on a hung network filesystem must not hold the admin connection forever.
const RELOAD_ANSWER: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
pub struct ApiState {
    pub pool: watch::Receiver<PoolView>,
    pub figures: watch::Receiver<FiguresView>,
    pub requests: mpsc::Sender<Request>,
    pub store: ProfileStoreHandle,
    /// `profiles.snapshot-headroom`.
    pub snapshot_headroom: f64,
    pub log: Logger,
}

pub fn api_router(state: ApiState) -> Router {
    Router::new()
        .route("/workers", get(workers))
        .route("/workers/{slot}/profile", post(profile_now))
        .route("/workers/{slot}/restart", post(restart))
        .route("/reload", post(reload))
        .route("/profiles", get(profiles))
        .route("/profiles/{id}", get(download))
        .route("/profiles/{id}/diff", get(diff))
        .route("/profiles/{id}/retainers", get(retainers))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API route") })
        .with_state(state)
}

/// A JSON error body: `{"error": "..."}`.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorReply {
                error: self.message,
                errors: Vec::new(),
            }),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let status = match e {
            StoreError::UnknownId(_) | StoreError::NoBaseline { .. } => StatusCode::NOT_FOUND,
            StoreError::NotAProfile { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, causes(&e))
    }
}

async fn workers(State(state): State<ApiState>) -> Json<Vec<WorkerRow>> {
    let figures = state.figures.borrow().clone();
    let view = state.pool.borrow().clone();
    let rows = view
        .slots
        .iter()
        .map(|s| WorkerRow {
            slot: s.slot,
            pid: s.worker.as_ref().map(|w| w.pid),
            state: s.state.as_str().to_string(),
            ready: s.worker.as_ref().is_some_and(|w| w.ready),
            probe: s.worker.as_ref().is_some_and(|w| w.probe),
            uptime_seconds: s
                .worker
                .as_ref()
                .map(|w| w.started_at.elapsed().as_secs_f64()),
            restarts: s.restarts,
            budget_exhausted: s.budget_exhausted,
            figures: figures.get(&s.slot).cloned().unwrap_or_default(),
        })
        .collect();
    Json(rows)
}

/// Slots are small decimal numbers; anything else is a client error.
fn parse_slot(raw: &str, view: &PoolView) -> Result<usize, ApiError> {
    let slot: usize = raw.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{raw:?} is not a worker slot number"),
        )
    })?;
    if slot >= view.slots.len() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("there is no worker slot {slot}"),
        ));
    }
    Ok(slot)
}

/// The slot named by `raw` and the worker serving it; 409 when it has none (the slot is
/// starting again on its own).
fn serving(state: &ApiState, raw: &str) -> Result<(usize, WorkerView), ApiError> {
    let view = state.pool.borrow().clone();
    let slot = parse_slot(raw, &view)?;
    let worker = view.slots[slot].worker.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            format!("worker slot {slot} has no running worker"),
        )
    })?;
    Ok((slot, worker))
}

fn parse_id(raw: &str) -> Result<u64, ApiError> {
    ProfileId::parse(raw).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
}

#[derive(Deserialize)]
struct ProfileQuery {
    /// `profile` (default) or `snapshot`.
    kind: Option<String>,
}

async fn profile_now(
    State(state): State<ApiState>,
    Path(slot): Path<String>,
    Query(query): Query<ProfileQuery>,
) -> Result<Response, ApiError> {
    let snapshot = match query.kind.as_deref() {
        None | Some("profile") => false,
        Some("snapshot") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("kind {other:?} is neither profile nor snapshot"),
            ));
        }
    };
    let (slot, worker) = serving(&state, &slot)?;
    let figures = state
        .figures
        .borrow()
        .get(&slot)
        .cloned()
        .unwrap_or_default();
    let children = figures.heap_children;
    let figures = figures.for_profile();
    if snapshot {
        let mut request = CaptureRequest::of_worker(slot, &worker, Trigger::Manual, figures, None)
            .into_snapshot(state.snapshot_headroom);
        request.replace = Some(state.requests.clone());
        return match take_snapshot(&state.store, request, &state.log).await {
            Ok(meta) => Ok((StatusCode::CREATED, Json(meta)).into_response()),
            Err(e) if e.is_refusal() => Err(ApiError::new(StatusCode::CONFLICT, causes(&e))),
            Err(e @ SnapshotError::Skipped(_)) => {
                Err(ApiError::new(StatusCode::INSUFFICIENT_STORAGE, causes(&e)))
            }
            Err(e) => Err(ApiError::new(StatusCode::BAD_GATEWAY, causes(&e))),
        };
    }
    // A pre-fork server's memory is in its children: the one that grew most, else the
    // largest, as the watchdog's leak profiles.
    let request = CaptureRequest::of_worker(slot, &worker, Trigger::Manual, figures, None)
        .in_forked_child(&worker, children);
    // Its own task: a client that hangs up does not cut a dump off half-way.
    let (store, log) = (state.store.clone(), state.log.clone());
    let capture = tokio::spawn(async move { take_profile(&store, request, &log).await });
    let result = capture.await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the dump task failed: {e}"),
        )
    })?;
    match result {
        Ok(meta) => Ok((StatusCode::CREATED, Json(meta)).into_response()),
        Err(e @ CaptureError::Busy(_)) => {
            let mut response =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, causes(&e)).into_response();
            response.headers_mut().insert(
                header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_DUMP_AFTER_SECONDS),
            );
            Ok(response)
        }
        Err(e @ CaptureError::NoProbe { .. }) => {
            Err(ApiError::new(StatusCode::CONFLICT, causes(&e)))
        }
        Err(e @ CaptureError::Skipped(_)) => {
            Err(ApiError::new(StatusCode::INSUFFICIENT_STORAGE, causes(&e)))
        }
        Err(e) => Err(ApiError::new(StatusCode::BAD_GATEWAY, causes(&e))),
    }
}

async fn restart(
    State(state): State<ApiState>,
    Path(slot): Path<String>,
) -> Result<Response, ApiError> {
    let (slot, worker) = serving(&state, &slot)?;
    let (worker_id, pid) = (worker.worker_id, worker.pid);
    send(
        &state,
        Request::Replace {
            slot,
            worker: worker_id,
            reason: RestartReason::Manual,
        },
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RestartReply {
            replacing: slot,
            worker_id,
            pid,
        }),
    )
        .into_response())
}

/// Answers once the supervisor has read and validated the file: 202 when the new config
/// runs (the rolling replacement goes on after the answer), 422 with every error when the
/// file was refused and the running config stays.
async fn reload(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let (reply, outcome) = oneshot::channel();
    send(&state, Request::Reload { reply: Some(reply) }).await?;
    let outcome = tokio::time::timeout(RELOAD_ANSWER, outcome)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "the config was not read in time; the agent's log tells the outcome",
            )
        })?
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the agent is stopping"))?;
    Ok(match outcome {
        ReloadOutcome::Applied {
            needs_restart,
            replaces_workers,
        } => (
            StatusCode::ACCEPTED,
            Json(ReloadReply {
                reloading: true,
                needs_restart: needs_restart.iter().map(|k| k.to_string()).collect(),
                replaces_workers,
            }),
        )
            .into_response(),
        ReloadOutcome::Refused { errors } => {
            let listed: Vec<String> = errors.iter().map(|(k, e)| format!("{k}: {e}")).collect();
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(ErrorReply {
                    error: format!(
                        "the config was refused, the running config stays ({})",
                        listed.join("; ")
                    ),
                    errors: errors
                        .into_iter()
                        .map(|(key, error)| KeyError { key, error })
                        .collect(),
                }),
            )
                .into_response()
        }
    })
}

async fn send(state: &ApiState, request: Request) -> Result<(), ApiError> {
    state.requests.send(request).await.map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the supervisor is shutting down",
        )
    })
}

async fn profiles(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(Json(state.store.list().await?).into_response())
}

async fn download(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let (meta, path) = state.store.get(id).await?;
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("profile {id} is indexed but unreadable: {e}"),
        )
    })?;
    let extension = match meta.kind {
        ProfileKind::Profile => "pb.gz",
        ProfileKind::Snapshot => "heapsnapshot",
    };
    let disposition = format!(
        "attachment; filename=\"heapwarden-{}-worker{}-{}.{extension}\"",
        meta.id,
        meta.slot,
        meta.trigger.as_str()
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Deserialize)]
struct DiffQuery {
    base: Option<String>,
    /// `svg`: the difference as a differential flame graph instead of JSON.
    format: Option<String>,
}

async fn diff(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<DiffQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let base = query.base.as_deref().map(parse_id).transpose()?;
    match query.format.as_deref() {
        None | Some("json") => Ok(Json(state.store.diff(id, base).await?).into_response()),
        Some("svg") => {
            let svg = state.store.diff_svg(id, base).await?;
            Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
        }
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("format must be json or svg, got {other:?}"),
        )),
    }
}

#[derive(Debug, Deserialize)]
struct RetainersQuery {
    base: Option<String>,
}

/// Holders of a stored snapshot by growth since its base, summarised in the helper.
async fn retainers(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(query): Query<RetainersQuery>,
) -> Result<Json<RetainersDiff>, ApiError> {
    use crate::profiles::retainers::RetainersDiffError as E;
    let id = parse_id(&id)?;
    let base = query.base.as_deref().map(parse_id).transpose()?;
    let diff = retainers::diff_stored(
        &state.store,
        id,
        base,
        RETAINERS_SHOWN,
        crate::profiles::HELPER_TIMEOUT,
    )
    .await;
    diff.map(Json).map_err(|e| match e {
        E::Store(e) => e.into(),
        E::NotASnapshot(_) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
        E::Summary { .. } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    })
}
