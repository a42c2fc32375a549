//! The agent's `metrics` recorder: Prometheus text with real histogram buckets for the
//! three duration histograms in DESIGN.md, installed once per process.

use std::time::Duration;

use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// One sampling round: 50 µs (procfs only, few workers) to 1 s (a probe timing out).
pub const SAMPLE_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Dump + conversion + symbolisation of one heap profile.
pub const PROFILE_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Draining one worker, up to the default 30 s drain deadline and beyond.
pub const DRAIN_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0];

/// How often `PrometheusHandle::run_upkeep` should run (histogram housekeeping).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A recorder with heapwarden's buckets; not installed (tests use it locally).
pub fn build_recorder() -> Result<PrometheusRecorder, BuildError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(crate::sampler::SAMPLE_DURATION.to_string()),
            SAMPLE_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("heapwarden_heap_profile_duration_seconds".to_string()),
            PROFILE_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("heapwarden_drain_duration_seconds".to_string()),
            DRAIN_BUCKETS,
        )?
        .build_recorder())
}

#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("the metrics recorder could not be built: {0}")]
    Build(#[from] BuildError),
    #[error("a global metrics recorder is already installed")]
    AlreadyInstalled,
}

/// Installs the recorder process-wide and returns the handle `/metrics` renders from.
pub fn install_recorder() -> Result<PrometheusHandle, RecorderError> {
    let recorder = build_recorder()?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| RecorderError::AlreadyInstalled)?;
    super::describe::describe_metrics();
    Ok(handle)
}

/// Runs histogram upkeep until the returned task is aborted or the runtime stops.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(UPKEEP_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            handle.run_upkeep();
        }
    })
}
