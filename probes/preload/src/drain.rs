//! The agent's `Drain` for a program that knows nothing of the channel: SIGTERM to the
//! worker, which is what any Unix service already handles, unless the program registered
//! its own handler. One of the modules allowed `unsafe`: it calls a C function pointer
//! and `kill(2)`.
//!
//! C interface (optional; resolve it weakly or with `dlsym` so the program still runs
//! without the preload):
//! ```c
//! void heapwarden_set_drain_handler(void (*handler)(uint64_t deadline_ms));
//! ```
//! The handler runs on the probe's thread; it should tell the program to stop accepting
//! and return. `NULL` restores the default (SIGTERM).

use std::sync::atomic::{AtomicUsize, Ordering};

use heapwarden_probes::Probe;

use crate::no_unwind;

type DrainHandler = extern "C" fn(deadline_ms: u64);

/// The registered handler as an address; 0 for the default.
static HANDLER: AtomicUsize = AtomicUsize::new(0);

/// Registers the program's drain handler (or `NULL` for SIGTERM).
#[unsafe(no_mangle)]
pub extern "C" fn heapwarden_set_drain_handler(handler: Option<DrainHandler>) {
    no_unwind((), || {
        HANDLER.store(handler.map_or(0, |h| h as usize), Ordering::SeqCst);
    });
}

pub(crate) fn install(probe: &Probe) {
    probe.on_drain(|deadline| {
        let deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        match HANDLER.load(Ordering::SeqCst) {
            0 => {
                // SAFETY: kill(2) on our own pid with a valid signal number.
                unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
            }
            address => {
                // SAFETY: only `heapwarden_set_drain_handler` stores non-zero values, and
                // it stores the address of a `DrainHandler` the program gave it.
                let handler: DrainHandler = unsafe { std::mem::transmute(address) };
                handler(deadline_ms);
            }
        }
    });
}
