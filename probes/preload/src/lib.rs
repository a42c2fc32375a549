//! `heapwarden-preload`: the native probe. Put in a worker's `LD_PRELOAD` by the agent
//! (`[pool] probe = "native"`), it gives any dynamically linked program (C, C++, CPython,
//! Ruby…) the loop a Rust worker gets from `heapwarden-probes`, without recompiling it.
//!
//! It owns three things, each in its own module:
//! - the allocator (`exports`): jemalloc, bundled in this library with heap profiling
//!   compiled in, exported as the process's `malloc`/`free`/… so that every allocation
//!   of the program and its libraries goes through it (the dynamic linker binds those
//!   names to the first preloaded definition, before the program's first allocation);
//! - attaching (`attach`): a load-time constructor that, only in the process named by
//!   `HEAPWARDEN_WORKER_PID`, adopts the control socket, switches allocation sampling on
//!   and answers the agent with `heapwarden-probes`' own `Probe` on its own threads;
//! - fork hygiene (`fork`): a forked child drops the claim, the channel's descriptors and
//!   the sampling, so only the worker itself ever talks to the agent;
//! - `dlopen` (`deepbind`): a library loaded with `RTLD_DEEPBIND` is noticed and
//!   named once on stderr (its malloc binds to glibc's, not jemalloc);
//! - jemalloc's own API under its plain names (`jemalloc_api`: `mallctl`,
//!   `malloc_stats_print`, `mallocx`…), so a program linking `libjemalloc.so.2` queries and
//!   frees through the one jemalloc it allocates from;
//! - glibc's query calls (`glibc_api`): `mallinfo2`, `malloc_trim`, `malloc_stats`,
//!   `mallopt` answer for jemalloc, not glibc's idle arena;
//! - forked children (`children`): a child that keeps running and allocating connects to
//!   the agent's per-worker socket for children and reports its own heap and dumps;
//! - CPython (`python`): sampled allocations carry the Python stack (function, file,
//!   line) through jemalloc's backtrace and dump hooks;
//! - drain (`drain`): the agent's `Drain` becomes SIGTERM to the worker, unless the
//!   program registered its own handler through `heapwarden_set_drain_handler`.
//!
//! Whatever fails while attaching, the program runs as a plain program: nothing here
//! aborts the host, and no panic crosses into C (`catch_unwind` at every entry that runs
//! Rust code; the allocation exports are single calls into jemalloc, see `exports`).
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod attach;
#[allow(unsafe_code)]
mod children;
#[allow(unsafe_code)]
mod deepbind;
#[allow(unsafe_code)]
mod drain;
#[allow(unsafe_code)]
mod exports;
#[allow(unsafe_code)]
mod fork;
#[allow(unsafe_code)]
mod glibc_api;
#[allow(unsafe_code)]
mod jemalloc_api;
#[allow(unsafe_code)]
mod python;

// Rust's own allocations in this library (the probe's threads) go straight to the same
// jemalloc, and `_rjem_malloc_conf` compiles in the Rust probe's options:
// `prof:true,prof_active:false,lg_prof_sample:19`.
heapwarden_probes::install!();

/// Runs `body`, turning a panic into `fallback`: no unwind may leave an `extern "C"`
/// function into a C caller.
pub(crate) fn no_unwind<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(fallback)
}
