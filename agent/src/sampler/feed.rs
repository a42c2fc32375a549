//! What the sampler hands the `/metrics` handler besides the recorder: each worker's
//! latest metrics text, and the float CPU counters the `metrics` crate cannot hold
//! (its counters are integers). The sampler owns the writer and publishes a fresh
//! snapshot each round (tokio `watch`); the admin server only reads.
//!
//! Workers are asked for their metrics text only when somebody scraped since the last
//! round, so an unscraped agent costs the workers nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// One worker's reported exposition text.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerText {
    pub worker_id: u64,
    pub text: Arc<str>,
}

/// A snapshot for one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// By slot.
    pub workers: BTreeMap<usize, WorkerText>,
    /// Prometheus text the sampler renders itself (CPU seconds as float counters).
    pub sampler: String,
}

/// The sampler's end.
#[derive(Debug)]
pub struct ExpositionWriter {
    tx: watch::Sender<Arc<Exposition>>,
    scraped: Arc<AtomicBool>,
}

/// The admin server's end; cheap to clone.
#[derive(Debug, Clone)]
pub struct ExpositionReader {
    rx: watch::Receiver<Arc<Exposition>>,
    scraped: Arc<AtomicBool>,
}

pub fn exposition_channel() -> (ExpositionWriter, ExpositionReader) {
    let (tx, rx) = watch::channel(Arc::new(Exposition::default()));
    // The first round fetches metrics so the first scrape is not empty.
    let scraped = Arc::new(AtomicBool::new(true));
    (
        ExpositionWriter {
            tx,
            scraped: scraped.clone(),
        },
        ExpositionReader { rx, scraped },
    )
}

impl ExpositionWriter {
    /// Whether a scrape happened since the last call.
    pub fn take_scrape_request(&self) -> bool {
        self.scraped.swap(false, Ordering::Relaxed)
    }

    pub fn current(&self) -> Arc<Exposition> {
        self.tx.borrow().clone()
    }

    pub fn publish(&self, exposition: Exposition) {
        self.tx.send_replace(Arc::new(exposition));
    }
}

impl ExpositionReader {
    /// The latest snapshot; marks that a scrape happened.
    pub fn scrape(&self) -> Arc<Exposition> {
        self.scraped.store(true, Ordering::Relaxed);
        self.rx.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_is_seen_once_by_the_writer() {
        let (writer, reader) = exposition_channel();
        assert!(writer.take_scrape_request(), "first round fetches");
        assert!(!writer.take_scrape_request());
        let next = Exposition {
            sampler: "x 1\n".into(),
            ..Exposition::default()
        };
        writer.publish(next.clone());
        assert_eq!(*reader.scrape(), next);
        assert!(writer.take_scrape_request());
        assert!(!writer.take_scrape_request());
    }
}
