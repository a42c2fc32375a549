//! CPU work off the request path: a fixed pool of OS threads (one per core by default)
//! fed through a bounded queue. When the queue is full the caller gets `Busy` at once
//! (the route answers 503 + Retry-After) instead of piling work onto the async runtime.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

type Task = Box<dyn FnOnce() + Send>;

#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    #[error("every compute thread is busy and the queue of {queue} is full")]
    Busy { queue: usize },
    #[error("the compute pool stopped")]
    Stopped,
    #[error("cannot start compute thread {index}")]
    Spawn {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

pub struct ComputePool {
    queue: SyncSender<Task>,
    capacity: usize,
    threads: usize,
}

impl ComputePool {
    /// `threads` = 0 means one per core.
    pub fn start(threads: usize, queue: usize) -> Result<ComputePool, ComputeError> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let (tx, rx) = sync_channel::<Task>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for index in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("demo-compute-{index}"))
                .spawn(move || run_thread(&rx))
                .map_err(|source| ComputeError::Spawn { index, source })?;
        }
        Ok(ComputePool {
            queue: tx,
            capacity: queue,
            threads,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Queues `work`, or fails at once when the queue is full.
    pub fn try_run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, ComputeError> {
        let (done, result) = oneshot::channel();
        let task: Task = Box::new(move || {
            let _ = done.send(work());
        });
        match self.queue.try_send(task) {
            Ok(()) => Ok(result),
            Err(TrySendError::Full(_)) => Err(ComputeError::Busy {
                queue: self.capacity,
            }),
            Err(TrySendError::Disconnected(_)) => Err(ComputeError::Stopped),
        }
    }
}

fn run_thread(queue: &Mutex<Receiver<Task>>) {
    loop {
        let next = match queue.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match next {
            Ok(task) => task(),
            Err(_) => return, // the pool was dropped
        }
    }
}

/// A deliberately slow, tunable password-stretching loop: `rounds` iterations of a 64-bit
/// mixer over the input. Demo CPU load, not a real key-derivation function.
pub fn stretch_password(password: &str, rounds: u64) -> String {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for byte in password.bytes() {
        state = mix(state ^ u64::from(byte));
    }
    for round in 0..rounds {
        state = mix(state ^ round);
    }
    format!("{state:016x}")
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_is_refused_not_queued() {
        let pool = ComputePool::start(1, 1).expect("pool");
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel::<()>();
        let _running = pool
            .try_run(move || {
                let _ = started_tx.send(());
                let _ = hold.recv();
            })
            .expect("first runs");
        started.recv().expect("the thread took the first task");
        let _queued = pool.try_run(|| ()).expect("second waits in the queue");
        assert!(matches!(
            pool.try_run(|| ()),
            Err(ComputeError::Busy { queue: 1 })
        ));
        drop(release);
    }

    #[test]
    fn stretching_is_deterministic_and_depends_on_rounds() {
        assert_eq!(stretch_password("pw", 10), stretch_password("pw", 10));
        assert_ne!(stretch_password("pw", 10), stretch_password("pw", 11));
    }
}
