//! Installs the agent's `metrics` recorder once per process (built from the metric
//! catalog: every histogram's buckets, every family's HELP) and keeps its histograms
//! tidy.

use std::time::Duration;

use metrics_exporter_prometheus::BuildError;

use crate::metric_names::{MetricsHandle, build_recorder, describe_all};
use crate::ticks::Grid;

/// How often `MetricsHandle::run_upkeep` should run (histogram housekeeping).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("the metrics recorder could not be built")]
    Build(#[from] BuildError),
    #[error("a global metrics recorder is already installed")]
    AlreadyInstalled,
}

/// Installs the recorder process-wide and returns the handle `/metrics` renders from.
pub fn install_recorder() -> Result<MetricsHandle, RecorderError> {
    let recorder = build_recorder()?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| RecorderError::AlreadyInstalled)?;
    describe_all();
    Ok(handle)
}

/// Runs histogram upkeep, on the agent's timer grid, until the returned task is aborted or
/// the runtime stops.
pub fn spawn_upkeep(handle: MetricsHandle, grid: Grid) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = grid.interval(UPKEEP_INTERVAL);
        loop {
            ticker.tick().await;
            handle.run_upkeep();
        }
    })
}
