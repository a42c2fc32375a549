//! The C allocation interface, exported under glibc's names and served by the bundled
//! jemalloc. One of the modules allowed `unsafe`: these are C entry points taking and
//! returning raw pointers.
//!
//! Why wrappers: jemalloc is linked into this library statically, and a Rust `cdylib`
//! exports only the symbols Rust itself defines (rustc's version script makes every C
//! symbol local). So jemalloc is built with its `_rjem_` prefix and each glibc name below
//! is a Rust function that calls the prefixed one (a tail jump once optimised). glibc's
//! "Replacing malloc" contract asks for `malloc`, `free`, `calloc`, `realloc` and, for
//! applications, `aligned_alloc`, `malloc_usable_size`, `memalign`, `posix_memalign`,
//! `pvalloc`, `valloc`; `reallocarray`, the obsolete `cfree` and the `__libc_*` aliases
//! (which jemalloc itself overrides when it is the system allocator) are here too, so no
//! pointer of one allocator ever reaches the other.
//!
//! `malloc`, `calloc` and `realloc` first read one flag (`children::on_allocation`): in a
//! forked child the first allocation starts the child's own channel (its cold path runs
//! under `catch_unwind`).
//!
//! Unlike the library's other entry points these need no `catch_unwind`: each is one call
//! into jemalloc's C (which cannot unwind) plus integer checks, so there is no Rust code
//! in them that could panic, and an `extern "C"` Rust function aborts rather than unwind
//! into its caller anyway. A guard would only add frames to every heap-profile stack in
//! unoptimised builds; optimised, each wrapper is a single jump into jemalloc.

use std::ffi::c_void;

use libc::{c_int, size_t};
use tikv_jemalloc_sys as je;

// jemalloc exports these on glibc (its configure found glibc's); tikv-jemalloc-sys has no
// bindings for them.
unsafe extern "C" {
    #[link_name = "_rjem_memalign"]
    fn je_memalign(alignment: size_t, size: size_t) -> *mut c_void;
    #[link_name = "_rjem_valloc"]
    fn je_valloc(size: size_t) -> *mut c_void;
    #[link_name = "_rjem_pvalloc"]
    fn je_pvalloc(size: size_t) -> *mut c_void;
}

const NULL: *mut c_void = std::ptr::null_mut();

/// # Safety
/// The C `malloc` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc(size: size_t) -> *mut c_void {
    crate::children::on_allocation();
    // SAFETY: forwards the caller's arguments to jemalloc's malloc unchanged.
    unsafe { je::malloc(size) }
}

/// # Safety
/// The C `calloc` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn calloc(count: size_t, size: size_t) -> *mut c_void {
    crate::children::on_allocation();
    // SAFETY: as for malloc; jemalloc checks count × size for overflow.
    unsafe { je::calloc(count, size) }
}

/// # Safety
/// The C `realloc` contract: `ptr` is null or came from this allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: size_t) -> *mut c_void {
    crate::children::on_allocation();
    // SAFETY: every pointer this process got from an allocation function came from
    // jemalloc (all of them are exported here), so `ptr` is jemalloc's.
    unsafe { je::realloc(ptr, size) }
}

/// # Safety
/// The C `free` contract: `ptr` is null or came from this allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    // SAFETY: as for realloc.
    unsafe { je::free(ptr) }
}

/// # Safety
/// The C `posix_memalign` contract: `out` is valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(
    out: *mut *mut c_void,
    alignment: size_t,
    size: size_t,
) -> c_int {
    // SAFETY: forwards unchanged; jemalloc validates the alignment and writes `out`
    // only on success.
    unsafe { je::posix_memalign(out, alignment, size) }
}

/// # Safety
/// The C `aligned_alloc` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aligned_alloc(alignment: size_t, size: size_t) -> *mut c_void {
    // SAFETY: forwards unchanged.
    unsafe { je::aligned_alloc(alignment, size) }
}

/// # Safety
/// The glibc `memalign` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memalign(alignment: size_t, size: size_t) -> *mut c_void {
    // SAFETY: forwards unchanged.
    unsafe { je_memalign(alignment, size) }
}

/// # Safety
/// The glibc `valloc` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn valloc(size: size_t) -> *mut c_void {
    // SAFETY: forwards unchanged.
    unsafe { je_valloc(size) }
}

/// # Safety
/// The glibc `pvalloc` contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pvalloc(size: size_t) -> *mut c_void {
    // SAFETY: forwards unchanged.
    unsafe { je_pvalloc(size) }
}

/// # Safety
/// The glibc `malloc_usable_size` contract: `ptr` is null or live from this allocator.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> size_t {
    if ptr.is_null() {
        return 0;
    }
    // SAFETY: a live jemalloc pointer, as for realloc.
    unsafe { je::malloc_usable_size(ptr) }
}

/// # Safety
/// The `reallocarray` contract (glibc, BSD): `ptr` as for realloc.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(
    ptr: *mut c_void,
    count: size_t,
    size: size_t,
) -> *mut c_void {
    let Some(bytes) = count.checked_mul(size) else {
        // SAFETY: errno is this thread's; writing it is what the contract asks.
        unsafe { *libc::__errno_location() = libc::ENOMEM };
        return NULL;
    };
    // SAFETY: as for realloc.
    unsafe { je::realloc(ptr, bytes) }
}

/// Exports `$alias` as another name of the export `$target`, same signature (the
/// optimiser folds the two into one body).
macro_rules! alias {
    ($($alias:ident => $target:ident ($($arg:ident: $ty:ty),*) $(-> $ret:ty)?;)+) => {$(
        #[doc = concat!("Another name of [`", stringify!($target), "`].")]
        ///
        /// # Safety
        #[doc = concat!("As for [`", stringify!($target), "`].")]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $alias($($arg: $ty),*) $(-> $ret)? {
            // SAFETY: the same contract as the target's, forwarded unchanged.
            unsafe { $target($($arg),*) }
        }
    )+};
}

alias! {
    // The obsolete glibc `cfree`, which old binaries still call.
    cfree => free(ptr: *mut c_void);
    __libc_malloc => malloc(size: size_t) -> *mut c_void;
    __libc_calloc => calloc(count: size_t, size: size_t) -> *mut c_void;
    __libc_realloc => realloc(ptr: *mut c_void, size: size_t) -> *mut c_void;
    __libc_free => free(ptr: *mut c_void);
    __libc_memalign => memalign(alignment: size_t, size: size_t) -> *mut c_void;
    __libc_valloc => valloc(size: size_t) -> *mut c_void;
    __libc_pvalloc => pvalloc(size: size_t) -> *mut c_void;
}
