//! Retainers of the store's snapshots, summarised out of the agent: each snapshot in a
//! short-lived `heapwarden __summarize-snapshot` child of this executable (the agent's
//! helper, as for conversions — the agent never holds a snapshot in memory, and a summary
//! that overruns its time is killed), and two of them matched by retaining path. One
//! implementation for the detection record, `GET /api/v1/profiles/{id}/retainers` and so
//! `heapwarden diff SNAP --retainers`.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{HolderGrowth, RetainerSummary, growth};
use crate::profiles::{ProfileKind, ProfileMeta, ProfileStoreHandle, StoreError, Trigger};

/// Holders down to 256 KiB, so one that was small in the base still matches its path.
const MATCH_MIN_BYTES: u64 = 256 << 10;
/// Holders read from each snapshot for the matching.
const MATCH_TOP: usize = 200;

/// A snapshot's holders by growth since a base snapshot (none: growth is all it holds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetainersDiff {
    pub profile_id: u64,
    pub base_id: Option<u64>,
    /// `baseline` when the base is the worker's warm-up snapshot (`leak-snapshot`).
    pub base_trigger: Option<Trigger>,
    pub total_delta_bytes: i64,
    pub holders: Vec<HolderGrowth>,
}

#[derive(Debug, thiserror::Error)]
pub enum RetainersDiffError {
    /// Unknown id, or the store is gone.
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "profile {0} is not a heap snapshot: --retainers reads snapshots (heapwarden dump SLOT --snapshot)"
    )]
    NotASnapshot(u64),
    #[error("snapshot {id} could not be summarised: {reason}")]
    Summary { id: u64, reason: String },
}

/// Summarises a snapshot file in the helper; `min_bytes`: the smallest holder listed.
pub async fn summarize_in_helper(
    snapshot: &Path,
    top: usize,
    min_bytes: u64,
    timeout: Duration,
) -> Result<RetainerSummary, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no executable path: {e}"))?;
    let child = tokio::process::Command::new(&exe)
        .arg("__summarize-snapshot")
        .arg("--top")
        .arg(top.to_string())
        .arg("--min-bytes")
        .arg(min_bytes.to_string())
        .arg(snapshot)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("no summary within {}s", timeout.as_secs()))?
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(stderr.trim().chars().take(500).collect());
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("unreadable summary: {e}"))
}

/// The default base of a snapshot: the same worker's warm-up snapshot, else its newest
/// earlier one, else the slot's newest earlier one (an index without worker ids).
fn base_of<'a>(all: &'a [ProfileMeta], leak: &ProfileMeta) -> Option<&'a ProfileMeta> {
    let earlier = || {
        all.iter()
            .rev()
            .filter(|p| p.kind == ProfileKind::Snapshot && p.id < leak.id && p.slot == leak.slot)
    };
    let same_worker = |p: &&ProfileMeta| leak.worker_id.is_some() && p.worker_id == leak.worker_id;
    earlier()
        .filter(same_worker)
        .find(|p| p.trigger == Trigger::Baseline)
        .or_else(|| earlier().find(same_worker))
        .or_else(|| earlier().next())
}

/// Stored snapshot `id` against `base` (default: [`base_of`]), top `top` growing holders.
pub async fn diff_stored(
    store: &ProfileStoreHandle,
    id: u64,
    base: Option<u64>,
    top: usize,
    timeout: Duration,
) -> Result<RetainersDiff, RetainersDiffError> {
    let (leak, leak_path) = store.get(id).await?;
    if leak.kind != ProfileKind::Snapshot {
        return Err(RetainersDiffError::NotASnapshot(id));
    }
    let base = match base {
        Some(b) => Some(store.get(b).await?.0),
        None => base_of(&store.list().await?, &leak).cloned(),
    };
    if let Some(b) = &base
        && b.kind != ProfileKind::Snapshot
    {
        return Err(RetainersDiffError::NotASnapshot(b.id));
    }
    let summarize = |id: u64, path: std::path::PathBuf| async move {
        summarize_in_helper(&path, MATCH_TOP, MATCH_MIN_BYTES, timeout)
            .await
            .map_err(|reason| RetainersDiffError::Summary { id, reason })
    };
    let leak_summary = summarize(id, leak_path).await?;
    let base_summary = match &base {
        Some(b) => summarize(b.id, store.get(b.id).await?.1).await?,
        None => RetainerSummary {
            total_bytes: 0,
            objects: 0,
            holders: Vec::new(),
        },
    };
    Ok(RetainersDiff {
        profile_id: id,
        base_id: base.as_ref().map(|b| b.id),
        base_trigger: base.as_ref().map(|b| b.trigger),
        total_delta_bytes: leak_summary.total_bytes as i64 - base_summary.total_bytes as i64,
        holders: growth(&base_summary, &leak_summary, top),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::{ProfileFigures, ProfileId};

    fn meta(id: u64, slot: usize, worker: u64, trigger: Trigger, kind: ProfileKind) -> ProfileMeta {
        ProfileMeta {
            id,
            stored_seq: id,
            slot,
            worker_id: Some(worker),
            pid: 7,
            trigger,
            kind,
            created_unix_ms: id,
            bytes: 10,
            figures: ProfileFigures::default(),
            rule: None,
            file: ProfileId::file_name(id),
            runtime: None,
            export: None,
            child_of: None,
        }
    }

    /// The worker's warm-up snapshot beats its later manual one; another worker's and
    /// a pprof profile never count; without either, the slot's previous snapshot.
    #[test]
    fn the_base_is_the_workers_warm_up_snapshot() {
        use ProfileKind::{Profile, Snapshot};
        use Trigger::{Baseline, Leak, Manual};
        let all = [
            meta(1, 0, 1, Baseline, Snapshot),
            meta(2, 0, 2, Baseline, Profile),
            meta(3, 0, 2, Baseline, Snapshot),
            meta(4, 0, 2, Manual, Snapshot),
            meta(5, 1, 9, Manual, Snapshot),
            meta(6, 0, 2, Leak, Snapshot),
            meta(7, 0, 5, Leak, Snapshot),
        ];
        let base = |leak: usize| base_of(&all, &all[leak]).map(|p| p.id);
        assert_eq!(base(5), Some(3), "worker 2's warm-up snapshot");
        assert_eq!(base(3), Some(3), "worker 2's previous snapshot");
        assert_eq!(
            base(6),
            Some(6),
            "no snapshot of worker 5: the slot's previous one"
        );
        assert_eq!(base(0), None);
    }
}
