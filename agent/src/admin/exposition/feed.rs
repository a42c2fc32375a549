//! Each worker's latest metrics text, from the task that fetches it
//! ([`super::fetch::run_worker_metrics`], the writer) to the `/metrics` handler (the
//! reader), over a tokio `watch`.
//!
//! Freshness: workers are asked for their text only when a scrape needs it. A scrape
//! whose snapshot is older than one sampling interval, or misses a ready worker, asks for
//! a fetch and waits for it (up to [`MAX_SCRAPE_WAIT`]); scrapes within an interval of a
//! fetch share it. An agent nobody scrapes costs the workers nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

/// A scrape waits at most this long for a fetch.
pub const MAX_SCRAPE_WAIT: Duration = Duration::from_secs(3);

/// One worker's reported exposition text.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerText {
    pub worker_id: u64,
    pub text: Arc<str>,
}

/// The workers' text for one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// By slot.
    pub workers: BTreeMap<usize, WorkerText>,
    /// Start of the last fetch.
    pub metrics_asked_at: Option<Instant>,
    /// Workers that were ready when that fetch asked.
    pub metrics_asked: Vec<u64>,
}

impl Exposition {
    /// Whether worker text is at most `max_age` old and covers every worker in
    /// `ready_workers` (trivially so when no worker is ready).
    pub fn fresh_for(&self, ready_workers: &[u64], max_age: Duration, now: Instant) -> bool {
        ready_workers.is_empty()
            || self
                .metrics_asked_at
                .is_some_and(|at| now.saturating_duration_since(at) <= max_age)
                && ready_workers.iter().all(|w| self.metrics_asked.contains(w))
    }
}

/// The fetching task's end.
#[derive(Debug)]
pub struct ExpositionWriter {
    tx: watch::Sender<Arc<Exposition>>,
    fetch: Arc<Notify>,
}

/// The admin server's end; cheap to clone.
#[derive(Debug, Clone)]
pub struct ExpositionReader {
    rx: watch::Receiver<Arc<Exposition>>,
    fetch: Arc<Notify>,
    interval: Duration,
}

/// `interval`: the sampling interval, the most a scrape's worker text may be old.
pub fn exposition_channel(interval: Duration) -> (ExpositionWriter, ExpositionReader) {
    let (tx, rx) = watch::channel(Arc::new(Exposition::default()));
    let fetch = Arc::new(Notify::new());
    (
        ExpositionWriter {
            tx,
            fetch: fetch.clone(),
        },
        ExpositionReader {
            rx,
            fetch,
            interval,
        },
    )
}

impl ExpositionWriter {
    /// Resolves when a scrape asked for fresh worker text.
    pub async fn fetch_requested(&self) {
        self.fetch.notified().await;
    }

    pub fn current(&self) -> Arc<Exposition> {
        self.tx.borrow().clone()
    }

    pub fn publish(&self, exposition: Exposition) {
        self.tx.send_replace(Arc::new(exposition));
    }
}

impl ExpositionReader {
    /// A snapshot whose worker text is at most one sampling interval old and covers
    /// `ready_workers`; asks for a fetch when needed and waits for it up to
    /// [`MAX_SCRAPE_WAIT`], then settles for the latest.
    pub async fn scrape_fresh(&self, ready_workers: &[u64]) -> Arc<Exposition> {
        let deadline = tokio::time::Instant::now() + MAX_SCRAPE_WAIT;
        let mut rx = self.rx.clone();
        let mut asked = false;
        loop {
            let snapshot = rx.borrow_and_update().clone();
            if snapshot.fresh_for(ready_workers, self.interval, Instant::now()) {
                return snapshot;
            }
            if !asked {
                self.fetch.notify_one();
                asked = true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return rx.borrow().clone(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_needs_a_recent_fetch_that_asked_every_ready_worker() {
        let now = Instant::now();
        let snapshot = Exposition {
            metrics_asked_at: Some(now),
            metrics_asked: vec![7],
            ..Exposition::default()
        };
        let second = Duration::from_secs(1);
        assert!(snapshot.fresh_for(&[7], second, now + second));
        assert!(!snapshot.fresh_for(&[7], second, now + second * 2));
        assert!(!snapshot.fresh_for(&[7, 8], second, now));
        assert!(!Exposition::default().fresh_for(&[7], second, now));
        assert!(Exposition::default().fresh_for(&[], second, now));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_scrape_waits_for_the_next_fetch() {
        let (writer, reader) = exposition_channel(Duration::from_secs(1));
        let waiting = tokio::spawn(async move { reader.scrape_fresh(&[3]).await });
        writer.fetch_requested().await;
        writer.publish(Exposition {
            metrics_asked_at: Some(Instant::now()),
            metrics_asked: vec![3],
            ..Exposition::default()
        });
        let got = waiting.await.expect("scrape task");
        assert_eq!(got.metrics_asked, [3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_scrape_settles_for_the_latest_after_its_bound() {
        let (_writer, reader) = exposition_channel(Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        let got = reader.scrape_fresh(&[3]).await;
        assert_eq!(*got, Exposition::default());
        assert_eq!(started.elapsed(), MAX_SCRAPE_WAIT);
    }
}
