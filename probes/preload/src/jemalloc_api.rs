//! jemalloc's own, non-standard API under its unprefixed names (`mallctl`,
//! `malloc_stats_print`, `mallocx`, `sdallocx`…), served by the bundled jemalloc. One of
//! the modules allowed `unsafe`: C entry points forwarding raw pointers.
//!
//! Why: a program linked against the system's `libjemalloc.so.2` (redis-server, many
//! C++ services) would otherwise get two allocators — `malloc` bound to this library
//! (preloaded first) and `mallctl`/`malloc_stats_print` bound to the system library's
//! empty instance (redis' `allocator_allocated` read 28 KB with 40 MB held), and worse,
//! `sdallocx`/`rallocx` on this library's pointers reaching the other allocator. Defined
//! here, every one of those names binds to the one jemalloc the process allocates from
//! (the preload comes before the system library in the lookup order). `attach` says so
//! once when it finds `libjemalloc` loaded.
//!
//! Like `exports`, each function is a single call into jemalloc's C, which cannot unwind.

use std::ffi::c_void;

use libc::{c_char, c_int, size_t};
use tikv_jemalloc_sys as je;

type WriteCallback = Option<unsafe extern "C" fn(*mut c_void, *const c_char)>;

/// # Safety
/// jemalloc's `mallctl` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mallctl(
    name: *const c_char,
    oldp: *mut c_void,
    oldlenp: *mut size_t,
    newp: *mut c_void,
    newlen: size_t,
) -> c_int {
    // SAFETY: forwards the caller's arguments unchanged.
    unsafe { je::mallctl(name, oldp, oldlenp, newp, newlen) }
}

/// # Safety
/// jemalloc's `mallctlnametomib` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mallctlnametomib(
    name: *const c_char,
    mibp: *mut size_t,
    miblenp: *mut size_t,
) -> c_int {
    // SAFETY: forwards the caller's arguments unchanged.
    unsafe { je::mallctlnametomib(name, mibp, miblenp) }
}

/// # Safety
/// jemalloc's `mallctlbymib` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mallctlbymib(
    mib: *const size_t,
    miblen: size_t,
    oldp: *mut c_void,
    oldlenp: *mut size_t,
    newp: *mut c_void,
    newlen: size_t,
) -> c_int {
    // SAFETY: forwards the caller's arguments unchanged.
    unsafe { je::mallctlbymib(mib, miblen, oldp, oldlenp, newp, newlen) }
}

/// # Safety
/// jemalloc's `malloc_stats_print` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_stats_print(
    write_cb: WriteCallback,
    cbopaque: *mut c_void,
    opts: *const c_char,
) {
    // SAFETY: forwards the caller's arguments unchanged.
    unsafe { je::malloc_stats_print(write_cb, cbopaque, opts) }
}

/// # Safety
/// jemalloc's `mallocx` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mallocx(size: size_t, flags: c_int) -> *mut c_void {
    // SAFETY: forwards the caller's arguments unchanged.
    unsafe { je::mallocx(size, flags) }
}

/// # Safety
/// jemalloc's `rallocx` contract: `ptr` came from this allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rallocx(ptr: *mut c_void, size: size_t, flags: c_int) -> *mut c_void {
    // SAFETY: forwards the caller's arguments unchanged.
    unsafe { je::rallocx(ptr, size, flags) }
}

/// # Safety
/// jemalloc's `xallocx` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn xallocx(
    ptr: *mut c_void,
    size: size_t,
    extra: size_t,
    flags: c_int,
) -> size_t {
    // SAFETY: forwards the caller's arguments unchanged.
    unsafe { je::xallocx(ptr, size, extra, flags) }
}

/// # Safety
/// jemalloc's `sallocx` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sallocx(ptr: *const c_void, flags: c_int) -> size_t {
    // SAFETY: forwards the caller's arguments unchanged.
    unsafe { je::sallocx(ptr, flags) }
}

/// # Safety
/// jemalloc's `dallocx` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dallocx(ptr: *mut c_void, flags: c_int) {
    // SAFETY: forwards the caller's arguments unchanged.
    unsafe { je::dallocx(ptr, flags) }
}

/// # Safety
/// jemalloc's `sdallocx` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sdallocx(ptr: *mut c_void, size: size_t, flags: c_int) {
    // SAFETY: forwards the caller's arguments unchanged.
    unsafe { je::sdallocx(ptr, size, flags) }
}

/// # Safety
/// jemalloc's `nallocx` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nallocx(size: size_t, flags: c_int) -> size_t {
    // SAFETY: forwards the caller's arguments unchanged.
    unsafe { je::nallocx(size, flags) }
}

/// The path of a loaded `libjemalloc` other than ours, if any (for attach's log line).
pub(crate) fn other_jemalloc_loaded() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            path.rsplit('/')
                .next()
                .is_some_and(|file| file.starts_with("libjemalloc.so"))
        })
        .map(str::to_owned)
}
