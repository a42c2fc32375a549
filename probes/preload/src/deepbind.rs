//! Libraries loaded with `RTLD_DEEPBIND` (some database drivers, plugin hosts, Java's
//! JNI loaders, `LD_DEEPBIND` builds) resolve their own symbols before the global scope,
//! so their `malloc`/`free` bind to glibc's while the rest of the process uses this
//! library's jemalloc: a pointer crossing between the two crashes the program
//! (`free(): invalid pointer`, SIGSEGV). The preload cannot rebind them; it interposes
//! `dlopen` to notice and say so once, on stderr, naming the library, so the crash that
//! may follow has an explanation. One of the modules allowed `unsafe`: a C entry point
//! and `dlsym(RTLD_NEXT)`.
//!
//! The interposer adds one atomic load and one flag test to every `dlopen`, then calls
//! the next definition (glibc's) with the same arguments; nothing else changes.

use std::ffi::{CStr, c_void};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use heapwarden_probes::diag::warn;
use libc::{c_char, c_int};
use serde_json::json;

use crate::no_unwind;

type DlopenFn = unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void;

static NEXT_DLOPEN: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
static WARNED: AtomicBool = AtomicBool::new(false);

fn next_dlopen() -> Option<DlopenFn> {
    let mut next = NEXT_DLOPEN.load(Ordering::Acquire);
    if next.is_null() {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name: the definition after
        // ours in the lookup order (glibc's dlopen), or null.
        next = unsafe { libc::dlsym(libc::RTLD_NEXT, c"dlopen".as_ptr()) };
        NEXT_DLOPEN.store(next, Ordering::Release);
    }
    // SAFETY: a non-null `dlopen` found by the loader has exactly this C signature.
    (!next.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, DlopenFn>(next) })
}

/// # Safety
/// The C `dlopen` contract: `filename` is null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void {
    if flags & libc::RTLD_DEEPBIND != 0 && !WARNED.swap(true, Ordering::Relaxed) {
        no_unwind((), || {
            let name = if filename.is_null() {
                String::from("(the program)")
            } else {
                // SAFETY: the caller passes a NUL-terminated string (dlopen's contract).
                unsafe { CStr::from_ptr(filename) }
                    .to_string_lossy()
                    .into_owned()
            };
            warn(
                "A library was loaded with RTLD_DEEPBIND: its malloc and free bind to glibc's, not the heapwarden native probe's jemalloc, and a pointer passed between the two will crash the program. Run this program without the native probe (probe = \"off\") if it does.",
                &[("library", json!(name))],
            );
        });
    }
    match next_dlopen() {
        // SAFETY: glibc's dlopen with the caller's arguments, unchanged.
        Some(next) => unsafe { next(filename, flags) },
        None => std::ptr::null_mut(),
    }
}
