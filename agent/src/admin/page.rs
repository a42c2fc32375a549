//! The `/metrics` page. Worker text is merged once per snapshot of it, off the admin
//! runtime's thread (on its blocking pool), and concurrent scrapes of the same snapshot
//! share that one render (single flight); the counts of rejected lines are recorded
//! once per render. The page goes out as shared chunks, so eight scrapers of a big page
//! do not hold eight copies of it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OnceCell;

use super::{Exposition, render_workers};

type Render = Arc<OnceCell<Bytes>>;
/// The snapshot last rendered (compared by pointer) and its render.
type Latest = Option<(Arc<Exposition>, Render)>;

/// The merged worker text of the latest snapshot a scrape asked for.
#[derive(Clone, Default)]
pub struct WorkerPageCache {
    latest: Arc<Mutex<Latest>>,
}

impl WorkerPageCache {
    pub async fn get(&self, snapshot: Arc<Exposition>) -> Bytes {
        if snapshot.workers.is_empty() {
            return Bytes::new();
        }
        let render = {
            let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
            match &*latest {
                Some((seen, render)) if Arc::ptr_eq(seen, &snapshot) => render.clone(),
                _ => {
                    let render = Render::default();
                    *latest = Some((snapshot.clone(), render.clone()));
                    render
                }
            }
        };
        render
            .get_or_init(|| async move {
                tokio::task::spawn_blocking(move || render_and_count(&snapshot))
                    .await
                    .unwrap_or_default()
            })
            .await
            .clone()
    }
}

fn render_and_count(snapshot: &Exposition) -> Bytes {
    let page = render_workers(snapshot);
    for ((slot, reason), n) in &page.rejected {
        metrics::counter!(crate::metric_names::WORKER_METRICS_REJECTED.name,
            "worker" => slot.to_string(), "reason" => reason.as_str())
        .increment(*n);
    }
    Bytes::from(page.text)
}

/// A body of shared chunks with a known length (so the answer has a Content-Length).
pub struct Chunks(VecDeque<Bytes>);

impl Chunks {
    pub fn new(chunks: impl IntoIterator<Item = Bytes>) -> Chunks {
        Chunks(chunks.into_iter().filter(|c| !c.is_empty()).collect())
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.iter().map(|c| c.len() as u64).sum())
    }
}
