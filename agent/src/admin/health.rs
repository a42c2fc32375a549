//! `/healthz` (the supervisor's control loop is ticking) and `/readyz` (every slot has a
//! ready worker and the agent is not shutting down), with the reason in JSON when not.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AdminState;
use crate::supervisor::PoolView;

/// Why the pool is not ready, one clause per slot; `None` when it is.
pub fn not_ready_reason(view: &PoolView) -> Option<String> {
    if view.stopping {
        return Some("shutting down".to_string());
    }
    if view.slots.is_empty() {
        return Some("no worker slots yet".to_string());
    }
    let mut clauses = Vec::new();
    for slot in &view.slots {
        match &slot.worker {
            Some(w) if w.ready => {}
            Some(_) => clauses.push(format!("slot {} is {}", slot.slot, slot.state.as_str())),
            None => clauses.push(format!(
                "slot {} has no worker ({})",
                slot.slot,
                slot.state.as_str()
            )),
        }
        if slot.budget_exhausted {
            clauses.push(budget_clause(slot.slot));
        }
    }
    // A spent budget alone does not make the pool unready (`PoolView::all_ready`).
    if view.all_ready() {
        return None;
    }
    Some(clauses.join("; "))
}

fn budget_clause(slot: usize) -> String {
    format!("slot {slot} leak-restart budget spent (it serves; leaks no longer replace it)")
}

/// Slots whose leak-restart budget (`max-leak-restarts-per-hour`) is spent. They keep
/// serving, so the pool stays ready, but `/readyz` says so in its body.
pub fn budget_spent(view: &PoolView) -> Vec<usize> {
    view.slots
        .iter()
        .filter(|s| s.budget_exhausted)
        .map(|s| s.slot)
        .collect()
}

/// Whether the last heartbeat is recent enough.
pub fn control_loop_alive(last_tick: Instant, now: Instant, max_age: Duration) -> bool {
    now.saturating_duration_since(last_tick) <= max_age
}

pub async fn readyz(State(state): State<AdminState>) -> Response {
    let (reason, spent) = {
        let view = state.pool.borrow();
        (not_ready_reason(&view), budget_spent(&view))
    };
    match reason {
        None if spent.is_empty() => (StatusCode::OK, Json(json!({"ready": true}))).into_response(),
        None => {
            let clauses: Vec<String> = spent.iter().map(|&s| budget_clause(s)).collect();
            let body = json!({
                "ready": true,
                "leak_budget_spent": spent,
                "reason": clauses.join("; "),
            });
            (StatusCode::OK, Json(body)).into_response()
        }
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}

pub async fn healthz(State(state): State<AdminState>) -> Response {
    let last_tick = *state.heartbeat.borrow();
    let age = Instant::now().saturating_duration_since(last_tick);
    if control_loop_alive(last_tick, Instant::now(), state.heartbeat_max_age) {
        (StatusCode::OK, Json(json!({"alive": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "alive": false,
                "reason": format!("the control loop last ticked {:.1}s ago", age.as_secs_f64()),
            })),
        )
            .into_response()
    }
}
