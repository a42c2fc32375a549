//! Fetching workers' metrics text, and the one task that owns it between scrapes
//! ([`run_worker_metrics`]). A scrape that finds the text stale asks for a fetch
//! ([`super::feed`]); the task then asks every probe-linked worker (`Sample` with
//! `metrics: true`) on a request of its own, apart from the sampler's rounds, so a worker
//! slow to render its metrics is never counted as a missed sample, and a round never
//! waits for metrics. A worker that did not answer keeps its last text; a worker that
//! left the pool loses it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use heapwarden_protocol::{AgentMsg, WorkerMsg};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::feed::{Exposition, ExpositionWriter, WorkerText};
use crate::config::Config;
use crate::supervisor::{ControlLink, PoolView};

/// Bounds of the time a worker has to hand over its metrics text for a scrape (one
/// sampling interval, within them).
const FETCH_TIMEOUT_MIN: Duration = Duration::from_millis(500);
const FETCH_TIMEOUT_MAX: Duration = Duration::from_secs(2);

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

/// Fetches whenever a scrape asks, until the supervisor drops its end of `pool`. The
/// sampling interval in `settings` is how old a fetch may be and still serve a scrape.
pub async fn run_worker_metrics(
    mut settings: watch::Receiver<Config>,
    mut pool: watch::Receiver<PoolView>,
    feed: ExpositionWriter,
) {
    let mut texts = Exposition::default();
    let mut interval = settings.borrow_and_update().sampling.interval;
    let mut fetching: Option<JoinHandle<Fetched>> = None;
    loop {
        tokio::select! {
            changed = pool.changed() => {
                if changed.is_err() { break }
                if forget_departed(&mut texts, &pool.borrow_and_update()) {
                    feed.publish(texts.clone());
                }
            }
            Ok(()) = settings.changed() => {
                interval = settings.borrow_and_update().sampling.interval;
            }
            () = feed.fetch_requested(), if fetching.is_none() => {
                let targets = fetch_targets(&pool.borrow());
                let ready: Vec<u64> = targets.iter().filter(|t| t.ready).map(|t| t.worker_id).collect();
                // Scrapes that asked while the last fetch ran were answered by it.
                if !texts.fresh_for(&ready, interval, Instant::now()) {
                    let timeout = interval.clamp(FETCH_TIMEOUT_MIN, FETCH_TIMEOUT_MAX);
                    fetching = Some(tokio::spawn(fetch_metrics(targets, timeout)));
                }
            }
            fetched = async { fetching.as_mut().expect("guarded").await }, if fetching.is_some() => {
                fetching = None;
                if let Ok(fetched) = fetched {
                    apply_fetch(&mut texts, fetched);
                    feed.publish(texts.clone());
                }
            }
        }
    }
    if let Some(fetching) = fetching {
        fetching.abort();
    }
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

/// Takes a fetch's texts; a worker that did not answer keeps its last text.
pub fn apply_fetch(texts: &mut Exposition, fetched: Fetched) {
    texts.metrics_asked_at = fetched.asked_at;
    texts.metrics_asked = fetched.asked;
    for (slot, worker_id, text) in fetched.texts {
        if let Some(text) = text {
            let text = Arc::from(text);
            texts.workers.insert(slot, WorkerText { worker_id, text });
        }
    }
}

/// Drops the text of every worker no longer in `view`; true when there was some.
pub fn forget_departed(texts: &mut Exposition, view: &PoolView) -> bool {
    let live: HashSet<u64> = view
        .slots
        .iter()
        .filter_map(|s| s.worker.as_ref().map(|w| w.worker_id))
        .collect();
    let before = texts.workers.len();
    texts.workers.retain(|_, t| live.contains(&t.worker_id));
    texts.workers.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::round_tests::{link, slot};

    /// The fetch the sampler's rounds used to carry, now apart from them: the ready
    /// probe-linked workers are asked, a silent one gets no text, a text stays until its
    /// worker leaves the pool.
    #[tokio::test]
    async fn a_fetch_asks_the_probe_linked_workers_and_keeps_text_until_they_leave() {
        let mut view = PoolView {
            slots: vec![
                slot(0, 10, Some(link(100, true))),
                slot(1, 20, Some(link(101, false))),
                slot(2, 30, None),
            ],
            stopping: false,
        };
        let fetched = tokio::time::timeout(
            Duration::from_secs(10),
            fetch_metrics(fetch_targets(&view), Duration::from_millis(100)),
        )
        .await
        .expect("the fetch ends on its timeout");
        assert_eq!(fetched.asked, [100, 101], "the ready probe-linked workers");
        let mut texts = Exposition::default();
        apply_fetch(&mut texts, fetched);
        let text = &texts.workers.get(&0).expect("worker 0 text").text;
        assert!(text.contains("demo_jobs_total"), "{text}");
        assert!(
            !texts.workers.contains_key(&1),
            "the silent worker has none"
        );
        assert!(texts.fresh_for(&[100, 101], Duration::from_secs(1), Instant::now()));

        assert!(
            !forget_departed(&mut texts, &view),
            "text kept while its worker runs"
        );
        view.slots[0].worker = None;
        assert!(forget_departed(&mut texts, &view));
        assert!(texts.workers.is_empty());
    }
}
