//! Control-channel messages the workers send on their own: hello and ready become
//! events; a cache invalidation is fanned out to every other worker, and the writer is
//! told once all of them dropped the key, so its write can be acknowledged.

use std::time::Duration;

use heapwarden_protocol::channel::{AgentMsg, WorkerMsg};
use slog::{info, warn};

use super::super::link::{ControlLink, LinkEvent};
use super::super::state::{Event, WorkerId};
use super::Supervisor;
use crate::log::Causes;

/// How long the relay waits for each worker to drop an invalidated key.
const INVALIDATE_TIMEOUT: Duration = Duration::from_secs(2);

impl Supervisor {
    pub(super) fn on_link_event(&mut self, event: LinkEvent) -> Option<Event> {
        match event {
            LinkEvent::Closed { .. } => None,
            LinkEvent::Message { worker_id, msg } => match msg {
                WorkerMsg::Hello { pid, runtime, .. } => {
                    if let Some(rt) = self.runtimes.get_mut(&worker_id) {
                        let message = if rt.runtime.is_some() {
                            "A new process claimed a worker's control channel."
                        } else {
                            "A worker's probe claimed its control channel."
                        };
                        info!(self.log, "{}", message; "worker_id" => worker_id,
                            "worker_pid" => rt.pid, "claimant_pid" => pid, "runtime" => runtime.as_str());
                        rt.runtime = Some(runtime);
                    }
                    Some(Event::Hello { worker: worker_id })
                }
                WorkerMsg::Ready => Some(Event::Ready { worker: worker_id }),
                WorkerMsg::Invalidate { seq, key, version } => {
                    self.relay_invalidation(worker_id, seq, key, version);
                    None
                }
                _ => None,
            },
        }
    }

    /// Fans a worker's invalidation out to every other probe-linked worker and tells
    /// the writer once all of them dropped the key, so its write can be acknowledged.
    fn relay_invalidation(&self, origin: WorkerId, seq: u64, key: String, version: i64) {
        let Some(origin_link) = self.runtimes.get(&origin).map(|r| r.link.clone()) else {
            return;
        };
        let peers: Vec<ControlLink> = self
            .runtimes
            .iter()
            .filter(|(id, _)| **id != origin && self.pool.worker(**id).is_some_and(|w| w.probe))
            .map(|(_, r)| r.link.clone())
            .collect();
        let log = self.log.clone();
        tokio::spawn(async move {
            let asks = peers.iter().map(|link| {
                let key = key.clone();
                link.request(
                    move |seq| AgentMsg::Invalidate { seq, key, version },
                    INVALIDATE_TIMEOUT,
                )
            });
            for result in futures_util::future::join_all(asks).await {
                if let Err(e) = result {
                    warn!(log, "A worker did not confirm a cache invalidation."; "error" => %Causes(&e));
                }
            }
            let _ = origin_link.send(AgentMsg::InvalidateDone { seq });
        });
    }
}
