//! How many heap profiles are taken at once: one per slot, and at most
//! [`MAX_CONCURRENT_DUMPS`] in all (each conversion runs a helper process of ~50 MiB). A
//! manual dump that would exceed either is refused at once (the API answers 429 with
//! `Retry-After`); baseline and leak dumps wait for their turn instead, so they are never
//! lost to on-call clicking. A permit is released when dropped, whatever happened.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Profiles being taken at once, across all slots.
pub const MAX_CONCURRENT_DUMPS: usize = 2;

/// Why a manual dump was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DumpBusy {
    #[error("a heap profile of worker {slot} is already being taken")]
    Slot { slot: usize },
    #[error("{limit} heap profiles are already being taken")]
    Global { limit: usize },
}

#[derive(Debug)]
pub struct DumpLimiter {
    limit: usize,
    global: Arc<Semaphore>,
    slots: Mutex<HashMap<usize, Arc<Semaphore>>>,
}

/// The right to take one profile; released on drop.
#[derive(Debug)]
pub struct DumpPermit {
    _slot: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

impl Default for DumpLimiter {
    fn default() -> Self {
        DumpLimiter::new(MAX_CONCURRENT_DUMPS)
    }
}

impl DumpLimiter {
    pub fn new(global: usize) -> DumpLimiter {
        DumpLimiter {
            limit: global.max(1),
            global: Arc::new(Semaphore::new(global.max(1))),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, slot: usize) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry(slot)
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone()
    }

    /// For manual dumps: a permit now, or why not.
    pub fn try_acquire(&self, slot: usize) -> Result<DumpPermit, DumpBusy> {
        let slot_permit = self
            .slot(slot)
            .try_acquire_owned()
            .map_err(|_| DumpBusy::Slot { slot })?;
        let global = self
            .global
            .clone()
            .try_acquire_owned()
            .map_err(|_| DumpBusy::Global { limit: self.limit })?;
        Ok(DumpPermit {
            _slot: slot_permit,
            _global: global,
        })
    }

    /// For baseline and leak dumps: waits until the slot and a global place are free.
    pub async fn acquire(&self, slot: usize) -> DumpPermit {
        let slot_permit = self.slot(slot).acquire_owned().await;
        let global = self.global.clone().acquire_owned().await;
        match (slot_permit, global) {
            (Ok(slot), Ok(global)) => DumpPermit {
                _slot: slot,
                _global: global,
            },
            // The semaphores are never closed.
            _ => unreachable!("dump semaphores are never closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_per_slot_and_a_global_limit() {
        let limiter = DumpLimiter::new(2);
        let a = limiter.try_acquire(0).expect("first");
        assert_eq!(
            limiter.try_acquire(0).unwrap_err(),
            DumpBusy::Slot { slot: 0 }
        );
        let _b = limiter.try_acquire(1).expect("second slot");
        assert!(matches!(
            limiter.try_acquire(2),
            Err(DumpBusy::Global { .. })
        ));
        drop(a);
        let _c = limiter.try_acquire(2).expect("a place was freed");
    }

    #[tokio::test]
    async fn automatic_dumps_wait_for_their_turn() {
        let limiter = Arc::new(DumpLimiter::new(2));
        let manual = limiter.try_acquire(0).expect("manual");
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire(0).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "waits behind the manual dump");
        drop(manual);
        let _leak = waiting.await.expect("leak dump got its permit");
    }
}
