//! Serving: the listening socket (inherited from the agent as fd 3 by the systemd
//! socket-activation convention, or bound here when run alone), `/healthz`, `/readyz`,
//! and the one shutdown path (agent drain, SIGTERM or SIGINT → stop accepting, finish
//! in-flight requests up to the drain deadline).

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
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

/// The first descriptor passed under the socket-activation convention.
const LISTEN_FDS_START: i32 = 3;
/// Runtime lag beyond which `/healthz` reports the worker stalled.
const STALL_THRESHOLD: Duration = Duration::from_secs(1);
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// True when the environment hands us exactly one listening socket meant for this process.
fn socket_activated() -> bool {
    let fds = std::env::var("LISTEN_FDS").ok();
    let pid = std::env::var("LISTEN_PID").ok();
    fds.as_deref() == Some("1") && pid.is_none_or(|p| p.trim() == std::process::id().to_string())
}

#[allow(unsafe_code)]
fn adopt_listen_fd() -> OwnedFd {
    // SAFETY: under the socket-activation convention (checked by `socket_activated`:
    // LISTEN_FDS=1 and LISTEN_PID absent or ours) fd 3 is open, was inherited for this
    // process alone, and nothing else in the process owns or closes it; it is taken once,
    // at start, before anything else could open a descriptor numbered 3 and own it.
    unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) }
}

/// The service socket: inherited when the agent passed one, else bound to `listen`.
pub fn service_listener(listen: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, bool)> {
    if socket_activated() {
        let listener = std::net::TcpListener::from(adopt_listen_fd());
        // Fails with ENOTSOCK/EINVAL when fd 3 is not a bound socket.
        listener.local_addr()?;
        listener.set_nonblocking(true)?;
        return Ok((tokio::net::TcpListener::from_std(listener)?, true));
    }
    let socket = match listen {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    Ok((socket.listen(1024)?, false))
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
