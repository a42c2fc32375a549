//! Zero-initialisation: every labelled counter exists at 0 from the start, for every
//! combination of its label types, and every histogram is exported (empty) from the first
//! scrape — so dashboards and `rate()`/`increase()` see the first event instead of a
//! series appearing out of nowhere, and no outcome is missing from a legend. Gauges of
//! measured figures appear with their first measurement: a 0 there would be a false
//! reading.

use metrics::{counter, gauge, histogram};

use super::labels::{
    self, ConnectionClose, ExportOutcome, MetricsReject, ProfileOutcome, RestartReason, Rule,
    SnapshotOutcome, Trigger, worker_states,
};
use super::{
    ADMIN_CONNECTIONS_CLOSED, ADMIN_CONNECTIONS_OPEN, DRAIN_DURATION, HEAP_PROFILE_DURATION,
    HEAP_PROFILES, HEAP_SNAPSHOTS, LEAK_DETECTIONS, PROFILE_EXPORT_LAG, PROFILE_EXPORT_PENDING,
    PROFILE_EXPORTS, PROFILE_PUSH_DURATION, SAMPLE_DURATION, WORKER_FAILED,
    WORKER_LOG_LINES_TRUNCATED, WORKER_METRICS_REJECTED, WORKER_PROBE_DROPPED,
    WORKER_PROBE_SAMPLING_RESTARTS, WORKER_RESTARTS, WORKER_STATE, WORKER_UP,
    WORKER_WATCH_FALLBACKS,
};

/// The agent-wide series; each slot's come from [`register_slot`], called by the
/// supervisor for the slots it has (a reload can add some).
pub fn register_zero_series() {
    for reason in ConnectionClose::ALL {
        counter!(ADMIN_CONNECTIONS_CLOSED.name, "reason" => reason.as_str()).increment(0);
    }
    gauge!(ADMIN_CONNECTIONS_OPEN.name).set(0.0);
    for trigger in Trigger::ALL {
        for outcome in ProfileOutcome::ALL {
            counter!(HEAP_PROFILES.name, "trigger" => trigger.as_str(), "outcome" => outcome.as_str())
                .increment(0);
        }
        for outcome in SnapshotOutcome::ALL {
            counter!(HEAP_SNAPSHOTS.name, "trigger" => trigger.as_str(), "outcome" => outcome.as_str())
                .increment(0);
        }
    }
    for outcome in ExportOutcome::ALL {
        counter!(PROFILE_EXPORTS.name, "outcome" => outcome.as_str()).increment(0);
    }
    // Nothing waits until the exporter says otherwise: these are counts, not readings.
    gauge!(PROFILE_EXPORT_LAG.name).set(0.0);
    gauge!(PROFILE_EXPORT_PENDING.name).set(0.0);
    for m in [
        HEAP_PROFILE_DURATION,
        DRAIN_DURATION,
        SAMPLE_DURATION,
        PROFILE_PUSH_DURATION,
    ] {
        // Registering is enough: the exporter renders an empty histogram with its buckets.
        let _ = histogram!(m.name);
    }
}

/// One slot's series (for a slot added later, e.g. when the pool grows).
pub fn register_slot(slot: usize) {
    let worker = labels::worker(slot);
    for reason in RestartReason::ALL {
        counter!(WORKER_RESTARTS.name, "worker" => worker.clone(), "reason" => reason.as_str())
            .increment(0);
    }
    for rule in Rule::ALL {
        counter!(LEAK_DETECTIONS.name, "worker" => worker.clone(), "rule" => rule.as_str())
            .increment(0);
    }
    counter!(WORKER_FAILED.name, "worker" => worker.clone()).increment(0);
    counter!(WORKER_WATCH_FALLBACKS.name, "worker" => worker.clone()).increment(0);
    counter!(WORKER_PROBE_DROPPED.name, "worker" => worker.clone()).increment(0);
    counter!(WORKER_PROBE_SAMPLING_RESTARTS.name, "worker" => worker.clone()).increment(0);
    counter!(WORKER_LOG_LINES_TRUNCATED.name, "worker" => worker.clone()).increment(0);
    for reason in MetricsReject::ALL {
        counter!(WORKER_METRICS_REJECTED.name, "worker" => worker.clone(), "reason" => reason.as_str())
            .increment(0);
    }
    // Down and in no state until the first sampling round says otherwise.
    gauge!(WORKER_UP.name, "worker" => worker.clone()).set(0.0);
    for state in worker_states() {
        gauge!(WORKER_STATE.name, "worker" => worker.clone(), "state" => state).set(0.0);
    }
}
