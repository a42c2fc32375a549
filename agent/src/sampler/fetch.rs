//! Fetching workers' metrics text for a scrape: a separate request per probe-linked
//! worker (`Sample` with `metrics: true`), apart from the sampling round's, so a worker
//! slow to render its metrics is never counted as a missed sample, and a round never
//! waits for metrics. Run as its own task; the sampler applies the result.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use heapwarden_protocol::{AgentMsg, WorkerMsg};

use crate::supervisor::{ControlLink, PoolView};

/// A worker asked for its text.
#[derive(Debug, Clone)]
pub struct FetchTarget {
    pub slot: usize,
    pub worker_id: u64,
    pub ready: bool,
    pub link: ControlLink,
}

/// What one fetch brought back.
#[derive(Debug, Default)]
pub struct Fetched {
    pub asked_at: Option<Instant>,
    /// Workers that were ready when asked.
    pub asked: Vec<u64>,
    /// (slot, worker id, text when it answered with one).
    pub texts: Vec<(usize, u64, Option<String>)>,
}

/// Every probe-linked worker in `view`.
pub fn fetch_targets(view: &PoolView) -> Vec<FetchTarget> {
    view.slots
        .iter()
        .filter_map(|s| {
            let w = s.worker.as_ref().filter(|w| w.probe)?;
            Some(FetchTarget {
                slot: s.slot,
                worker_id: w.worker_id,
                ready: w.ready,
                link: w.link.clone()?,
            })
        })
        .collect()
}

pub async fn fetch_metrics(targets: Vec<FetchTarget>, timeout: Duration) -> Fetched {
    let asked_at = Instant::now();
    let asked = targets
        .iter()
        .filter(|t| t.ready)
        .map(|t| t.worker_id)
        .collect();
    let replies = join_all(targets.iter().map(|t| {
        t.link
            .request(|seq| AgentMsg::Sample { seq, metrics: true }, timeout)
    }))
    .await;
    let texts = targets
        .iter()
        .zip(replies)
        .map(|(t, reply)| {
            let text = match reply {
                Ok(WorkerMsg::Stats { metrics, .. }) => metrics,
                _ => None,
            };
            (t.slot, t.worker_id, text)
        })
        .collect();
    Fetched {
        asked_at: Some(asked_at),
        asked,
        texts,
    }
}
