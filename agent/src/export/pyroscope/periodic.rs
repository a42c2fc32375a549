//! `[export.pyroscope] every`: a periodic profile of each ready, probe-linked worker, so
//! Pyroscope shows the heap over time and not only at leaks. Taken one worker after the
//! other through the same capture path as manual dumps (a slot already dumping is
//! skipped, never waited for), stored like manual ones (evicted first) and pushed by the
//! exporter like any other profile.

use slog::{Logger, debug};
use tokio::sync::watch;

use crate::config::Config;
use crate::config::types::Toggle;
use crate::log::Causes;
use crate::profiles::{CaptureRequest, ProfileFigures, ProfileStoreHandle, Trigger, take_profile};
use crate::supervisor::view::PoolView;

/// While `every` is off or export is off, the task only waits for a reload.
pub async fn run_periodic(
    mut config: watch::Receiver<Config>,
    pool: watch::Receiver<PoolView>,
    store: ProfileStoreHandle,
    log: Logger,
) {
    loop {
        let every = {
            let c = config.borrow_and_update();
            match (c.export.pyroscope.enabled(), c.export.pyroscope.every) {
                (true, Toggle::On(every)) => Some(every.0),
                _ => None,
            }
        };
        let Some(every) = every else {
            if config.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            changed = config.changed() => {
                if changed.is_err() { return }
                continue;
            }
        }
        let workers: Vec<_> = pool
            .borrow()
            .slots
            .iter()
            .filter_map(|s| s.worker.clone().map(|w| (s.slot, w)))
            .filter(|(_, w)| w.ready && w.probe && w.link.is_some())
            .collect();
        for (slot, worker) in workers {
            let request = CaptureRequest::of_worker(
                slot,
                &worker,
                Trigger::Periodic,
                ProfileFigures::default(),
                None,
            );
            if let Err(e) = take_profile(&store, request, &log).await {
                debug!(log, "A periodic profile was not taken."; "worker" => slot, "error" => %Causes(&e));
            }
        }
    }
}
