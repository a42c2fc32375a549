//! glibc's allocator query and tuning calls, answered for the allocator actually in use
//! (jemalloc) instead of glibc's own, idle arena — which would report 0 bytes in use with
//! 20 MiB held. One of the modules allowed `unsafe`: C entry points and jemalloc's
//! `mallctl`.
//!
//! What each answers:
//! - `mallinfo2()` / `mallinfo()`: `uordblks` = jemalloc `stats.allocated` (bytes in
//!   use), `arena` = `stats.active` (bytes in pages holding allocations), `fordblks` =
//!   active − allocated (free bytes inside those pages), `keepcost` = `stats.retained`
//!   (address space kept for reuse), `ordblks` = 1, the rest 0 (`hblks`, `hblkhd`:
//!   jemalloc has no separate mmapped-chunk count; `usmblks`, `fsmblks`, `smblks`: glibc
//!   fast-bin figures with no equivalent). `mallinfo`'s `int` fields saturate.
//! - `malloc_trim(pad)`: purges every arena's unused dirty pages
//!   (`arena.<all>.purge`); returns 1, as glibc does when it released memory. `pad` is
//!   ignored.
//! - `malloc_stats()`: jemalloc's `malloc_stats_print` on stderr (a different layout
//!   from glibc's).
//! - `mallopt(param, value)`: a no-op that returns 1 (success): glibc's parameters
//!   (`M_ARENA_MAX`, `M_MMAP_THRESHOLD`…) have no meaning for jemalloc; tune it with
//!   `_RJEM_MALLOC_CONF`.
//!
//! Not covered: `malloc_info()` (glibc's XML), `malloc_get_state`/`malloc_set_state`
//! (removed from glibc), and the `__malloc_hook` family (removed in glibc 2.34): a
//! program calling them gets glibc's, which describe glibc's idle arena.

use std::ffi::c_void;

use libc::{c_char, c_int, size_t};
use tikv_jemalloc_sys as je;

use crate::no_unwind;

/// glibc ≥ 2.33's `struct mallinfo2`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MallInfo2 {
    pub arena: size_t,
    pub ordblks: size_t,
    pub smblks: size_t,
    pub hblks: size_t,
    pub hblkhd: size_t,
    pub usmblks: size_t,
    pub fsmblks: size_t,
    pub uordblks: size_t,
    pub fordblks: size_t,
    pub keepcost: size_t,
}

/// glibc's older `struct mallinfo` (every field an `int`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct MallInfo {
    pub arena: c_int,
    pub ordblks: c_int,
    pub smblks: c_int,
    pub hblks: c_int,
    pub hblkhd: c_int,
    pub usmblks: c_int,
    pub fsmblks: c_int,
    pub uordblks: c_int,
    pub fordblks: c_int,
    pub keepcost: c_int,
}

fn read_stats() -> MallInfo2 {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The stats are a snapshot refreshed by advancing the epoch.
    let _ = epoch::advance();
    let allocated = stats::allocated::read().unwrap_or(0);
    let active = stats::active::read().unwrap_or(0);
    let retained = stats::retained::read().unwrap_or(0);
    MallInfo2 {
        arena: active,
        ordblks: 1,
        uordblks: allocated,
        fordblks: active.saturating_sub(allocated),
        keepcost: retained,
        ..MallInfo2::default()
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn mallinfo2() -> MallInfo2 {
    no_unwind(MallInfo2::default(), read_stats)
}

#[unsafe(no_mangle)]
pub extern "C" fn mallinfo() -> MallInfo {
    no_unwind(MallInfo::default(), || {
        let wide = read_stats();
        let narrow = |v: size_t| c_int::try_from(v).unwrap_or(c_int::MAX);
        MallInfo {
            arena: narrow(wide.arena),
            ordblks: narrow(wide.ordblks),
            uordblks: narrow(wide.uordblks),
            fordblks: narrow(wide.fordblks),
            keepcost: narrow(wide.keepcost),
            ..MallInfo::default()
        }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn malloc_trim(_pad: size_t) -> c_int {
    no_unwind(0, || {
        // MALLCTL_ARENAS_ALL (4096): every arena.
        // SAFETY: "arena.4096.purge" takes no input and gives no output.
        let purged = unsafe {
            je::mallctl(
                c"arena.4096.purge".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        c_int::from(purged == 0)
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn malloc_stats() {
    // SAFETY: a null write callback and opaque pointer mean jemalloc's default (stderr);
    // null options print everything.
    no_unwind((), || unsafe {
        je::malloc_stats_print(
            None,
            std::ptr::null_mut::<c_void>(),
            std::ptr::null::<c_char>(),
        )
    });
}

#[unsafe(no_mangle)]
pub extern "C" fn mallopt(_param: c_int, _value: c_int) -> c_int {
    1
}
