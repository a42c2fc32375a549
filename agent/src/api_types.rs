//! The admin API's response bodies (`/api/v1/*`), typed once: the handlers in `admin/`
//! serialize them and the on-call CLI in `cli/` reads them back, so a renamed field is a
//! compile error on both sides rather than a `-` in a table. Profiles and diffs are the
//! store's own types ([`ProfileMeta`], [`DiffReport`]).

use serde::{Deserialize, Serialize};

pub use crate::profiles::retainers::{HolderGrowth, RetainersDiff};
pub use crate::profiles::{
    DiffEntry, DiffReport, DiffView, ProfileFigures, ProfileKind, ProfileMeta,
};
pub use crate::watchdog::SlotFigures;

/// One row of `GET /api/v1/workers` (`heapwarden ps`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRow {
    pub slot: usize,
    pub pid: Option<u32>,
    /// The slot state (`heapwarden_worker_state`'s `state` label).
    pub state: String,
    pub ready: bool,
    pub probe: bool,
    pub uptime_seconds: Option<f64>,
    pub restarts: u64,
    pub budget_exhausted: bool,
    #[serde(flatten)]
    pub figures: SlotFigures,
}

/// `POST /api/v1/workers/{slot}/restart` (202): the worker being replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartReply {
    pub replacing: usize,
    pub worker_id: u64,
    pub pid: u32,
}

/// `POST /api/v1/reload` (202): the new config runs; these keys wait for a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    pub reloading: bool,
    pub needs_restart: Vec<String>,
    /// False when only the agent's own settings changed (`[watchdog]`, `[sampling]`,
    /// the log level): the workers keep running.
    #[serde(default = "replaces_by_default")]
    pub replaces_workers: bool,
}

/// An agent from before `replaces_workers` replaced every worker on a reload.
fn replaces_by_default() -> bool {
    true
}

/// Every error answer: a sentence, and for a refused config (422) each key's error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<KeyError>,
}

/// One refused key of a reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyError {
    pub key: String,
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the handlers write is what the CLI reads, field for field.
    #[test]
    fn replies_round_trip_through_json() {
        let row = WorkerRow {
            slot: 1,
            pid: Some(42),
            state: "ready".into(),
            ready: true,
            probe: true,
            uptime_seconds: Some(3.5),
            restarts: 2,
            budget_exhausted: false,
            figures: SlotFigures {
                rss_bytes: Some(10),
                watched: Some("heap_allocated".into()),
                ..Default::default()
            },
        };
        let json = serde_json::to_value(&row).expect("serializes");
        assert_eq!(json["rss_bytes"], 10, "figures are flattened: {json}");
        assert_eq!(
            serde_json::from_value::<WorkerRow>(json).expect("reads"),
            row
        );
        let refused = ErrorReply {
            error: "refused".into(),
            errors: vec![KeyError {
                key: "pool.workers".into(),
                error: "must be at least 1".into(),
            }],
        };
        let text = serde_json::to_string(&refused).expect("serializes");
        assert_eq!(
            serde_json::from_str::<ErrorReply>(&text).expect("reads"),
            refused
        );
        let plain: ErrorReply = serde_json::from_str(r#"{"error":"no"}"#).expect("reads");
        assert!(plain.errors.is_empty());
    }
}
