//! Serving: the listening socket (the one the agent shares, taken through the probe's
//! socket-activation helper, or bound here when run alone), `/healthz`, `/readyz`, and
//! the one shutdown path (agent drain, SIGTERM or SIGINT → stop accepting, finish
//! in-flight requests up to the drain deadline).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use slog::{Logger, info, warn};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::App;

/// Runtime lag beyond which `/healthz` reports the worker stalled.
const STALL_THRESHOLD: Duration = Duration::from_secs(1);
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    Inherited(#[from] heapwarden_probes::ProbeError),
    #[error("cannot use the inherited listening socket")]
    Adopt(#[source] std::io::Error),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The service socket: the agent's when it passed one (true), else bound to `listen`.
pub fn service_listener(
    listen: SocketAddr,
) -> Result<(tokio::net::TcpListener, bool), ListenError> {
    if let Some(listener) = heapwarden_probes::take_listen_socket()? {
        listener.set_nonblocking(true).map_err(ListenError::Adopt)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(ListenError::Adopt)?;
        return Ok((listener, true));
    }
    let bind = |source| ListenError::Bind {
        addr: listen,
        source,
    };
    let socket = match listen {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(bind)?;
    socket.set_reuseaddr(true).map_err(bind)?;
    socket.bind(listen).map_err(bind)?;
    Ok((socket.listen(1024).map_err(bind)?, false))
}

/// Resolves the token on the first of: agent drain, SIGTERM, SIGINT.
pub async fn watch_for_shutdown(app: Arc<App>, stop: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let probe = app.probe.clone();
    let drained = async move {
        match probe {
            Some(probe) => probe.drained().await,
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        () = drained => "the agent asked to drain",
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        () = stop.cancelled() => return Ok(()),
    };
    app.draining.store(true, Ordering::SeqCst);
    info!(app.log, "Draining: no new connections, finishing in-flight requests."; "reason" => reason);
    stop.cancel();
    Ok(())
}

/// Waits for in-flight requests after `stop`, at most the agent's deadline (or `fallback`).
pub async fn drain_deadline(app: &App, stop: &CancellationToken, fallback: Duration, log: &Logger) {
    stop.cancelled().await;
    let deadline = app
        .probe
        .as_ref()
        .and_then(|p| p.drain_deadline())
        .unwrap_or(fallback);
    tokio::time::sleep(deadline).await;
    warn!(log, "The drain deadline passed with requests still in flight."; "deadline_ms" => deadline.as_millis() as u64);
}

pub async fn healthz(State(app): State<Arc<App>>) -> Response {
    let lag = app.lag.lag_seconds();
    let stalled = app.lag.is_stalled(STALL_THRESHOLD);
    let status = if stalled {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body =
        json!({"status": if stalled { "stalled" } else { "ok" }, "runtime_lag_seconds": lag});
    (status, Json(body)).into_response()
}

pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.draining.load(Ordering::SeqCst) {
        let body = json!({"status": "draining"});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let database = match tokio::time::timeout(READY_CHECK_TIMEOUT, app.db.ping()).await {
        Ok(Ok(())) => "up",
        _ => "down",
    };
    // Redis is an optional cache: its loss degrades the worker but keeps it ready.
    let redis = match &app.l2 {
        None => "off",
        Some(l2) if l2.is_up() => "up",
        Some(_) => "degraded",
    };
    let ready = database == "up";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if !ready { "not-ready" } else if redis == "degraded" { "degraded" } else { "ready" },
        "database": database,
        "redis": redis,
    });
    (status, Json(body)).into_response()
}
