//! CPython frames in heap profiles: a sampled allocation made while Python code runs
//! carries the Python stack (function, file, line) beside its C frames, so a diff names
//! `remember_order app.py:14` rather than `PyUnicode_New`. One of the modules allowed
//! `unsafe`: it resolves CPython's C API with `dlsym` and calls it through raw pointers
//! from inside jemalloc's sampler.
//!
//! How, with no change to the app and without linking libpython (the symbols are looked
//! up at attach; a process that is not CPython gets nothing of this):
//! - jemalloc samples as before; its backtrace hook (`experimental.hooks.prof_backtrace`)
//!   is ours: the C frames from jemalloc's own unwinder, then, when this thread holds the
//!   GIL, one entry per Python frame (innermost first), encoded as an address no
//!   mapping can hold (`heapwarden_protocol::python_frames`: a tag bit, a code index,
//!   the line). jemalloc keeps counting those stacks and forgets them when freed,
//!   exactly as for C stacks.
//! - the code index names an entry of a fixed table of code objects, each kept alive by a
//!   reference taken when it is first seen (so an address is never reused for another
//!   function; at most [`MAX_CODES`] of them, beyond that frames are left out).
//! - its names (`co_qualname`, `co_filename`) are copied when it is first seen, under
//!   the GIL the sampled thread holds; when a dump is written (`experimental.hooks.
//!   prof_dump`, after jemalloc closed the file) they are appended to the raw dump as a
//!   `PYTHON_FRAMES:` section, which the agent's converter turns into pprof functions
//!   above the C frames. The dump never waits for the GIL: jemalloc holds its dump mutex
//!   around the hook, and a thread that forks while holding the GIL waits for that mutex.
//!
//! Politeness inside someone else's allocator: the walk runs only inside jemalloc's
//! sampler (one allocation in ~512 KiB), where jemalloc has raised its reentrancy level,
//! so the frame objects CPython 3.11 materialises for `PyThreadState_GetFrame` and
//! `PyFrame_GetBack` are allocated unsampled; the cyclic GC is switched off around the
//! walk (a frame object allocation may otherwise start a collection in the middle of
//! whatever called `malloc`), the caller's pending exception is saved and restored, a
//! thread-local flag stops any reentry, and it runs only under `PYTHONMALLOC=malloc`
//! (pymalloc's arena bookkeeping is not reentrant). Nothing here locks, and a missing
//! symbol or an uninitialised interpreter means C frames only.

use std::cell::Cell;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use heapwarden_probes::python_frames;

use crate::no_unwind;

/// Code objects the table holds (a power of two).
const MAX_CODES: usize = 8192;
/// Python frames recorded per sampled stack (the innermost ones).
const MAX_PYTHON_FRAMES: usize = 48;

type Obj = *mut c_void;

/// CPython's C API, resolved at attach with `dlsym` (3.11 tested; every name is public
/// API since 3.9–3.10 except the unchecked thread-state getter, looked up by both names).
struct Api {
    is_initialized: unsafe extern "C" fn() -> c_int,
    current_tstate: unsafe extern "C" fn() -> Obj,
    this_thread_state: unsafe extern "C" fn() -> Obj,
    thread_frame: unsafe extern "C" fn(Obj) -> Obj,
    frame_code: unsafe extern "C" fn(Obj) -> Obj,
    frame_line: unsafe extern "C" fn(Obj) -> c_int,
    frame_back: unsafe extern "C" fn(Obj) -> Obj,
    inc_ref: unsafe extern "C" fn(Obj),
    dec_ref: unsafe extern "C" fn(Obj),
    gc_disable: unsafe extern "C" fn() -> c_int,
    gc_enable: unsafe extern "C" fn() -> c_int,
    err_fetch: unsafe extern "C" fn(*mut Obj, *mut Obj, *mut Obj),
    err_restore: unsafe extern "C" fn(Obj, Obj, Obj),
    err_clear: unsafe extern "C" fn(),
    get_attr: unsafe extern "C" fn(Obj, *const c_char) -> Obj,
    utf8: unsafe extern "C" fn(Obj, *mut isize) -> *const c_char,
}

type BacktraceHook = unsafe extern "C" fn(*mut *mut c_void, *mut c_uint, c_uint);
type DumpHook = unsafe extern "C" fn(*const c_char);

static API: OnceLock<Api> = OnceLock::new();
/// jemalloc's own unwinder (the hook we replaced), as a function address.
static C_BACKTRACE: AtomicUsize = AtomicUsize::new(0);
/// Interned code objects (0: free), each holding one reference.
static CODES: [AtomicUsize; MAX_CODES] = [const { AtomicUsize::new(0) }; MAX_CODES];
/// Each interned code object's `qualname<TAB>file`, copied when it was interned (under
/// the GIL), so that a dump reads names without it.
static NAMES: [AtomicPtr<String>; MAX_CODES] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_CODES];

thread_local! {
    static IN_WALK: Cell<bool> = const { Cell::new(false) };
}

/// Installs the two hooks when this process is CPython; otherwise says why not.
pub(crate) fn install() -> Result<(), &'static str> {
    let api = resolve().ok_or("not CPython ≥ 3.10 (its C API is not in the process)")?;
    if std::env::var("PYTHONMALLOC").as_deref() != Ok("malloc") {
        return Err("PYTHONMALLOC is not malloc");
    }
    let _ = API.set(api);
    let mut old: usize = 0;
    let mut old_len = size_of::<usize>();
    let mut new: BacktraceHook = backtrace_with_python;
    // SAFETY: the two hooks take function pointers of exactly jemalloc's hook types
    // (`prof_backtrace_hook_t`, `prof_dump_hook_t`); `old` receives the current one,
    // stored before ours is set, so ours never runs without it.
    unsafe {
        if tikv_jemalloc_sys::mallctl(
            c"experimental.hooks.prof_backtrace".as_ptr(),
            std::ptr::from_mut(&mut old).cast(),
            &mut old_len,
            std::ptr::null_mut(),
            0,
        ) != 0
            || old == 0
        {
            return Err("jemalloc has no backtrace hook to extend");
        }
        C_BACKTRACE.store(old, Ordering::Release);
        if tikv_jemalloc_sys::mallctl(
            c"experimental.hooks.prof_backtrace".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::from_mut(&mut new).cast(),
            size_of::<BacktraceHook>(),
        ) != 0
        {
            return Err("jemalloc refused the backtrace hook");
        }
        let mut dump: DumpHook = append_python_names;
        if tikv_jemalloc_sys::mallctl(
            c"experimental.hooks.prof_dump".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::from_mut(&mut dump).cast(),
            size_of::<DumpHook>(),
        ) != 0
        {
            return Err("jemalloc refused the dump hook");
        }
    }
    Ok(())
}

fn resolve() -> Option<Api> {
    /// `dlsym(RTLD_DEFAULT, name)` as a function pointer of type `T`.
    fn symbol<T: Copy>(name: &CStr) -> Option<T> {
        // SAFETY: dlsym only reads the loader's tables; the transmute turns a non-null
        // code address into the function pointer type the caller names, which is that
        // function's C signature (checked against CPython's headers).
        unsafe {
            let address = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
            (!address.is_null()).then(|| std::mem::transmute_copy::<*mut c_void, T>(&address))
        }
    }
    Some(Api {
        is_initialized: symbol(c"Py_IsInitialized")?,
        current_tstate: symbol(c"PyThreadState_GetUnchecked")
            .or_else(|| symbol(c"_PyThreadState_UncheckedGet"))?,
        this_thread_state: symbol(c"PyGILState_GetThisThreadState")?,
        thread_frame: symbol(c"PyThreadState_GetFrame")?,
        frame_code: symbol(c"PyFrame_GetCode")?,
        frame_line: symbol(c"PyFrame_GetLineNumber")?,
        frame_back: symbol(c"PyFrame_GetBack")?,
        inc_ref: symbol(c"Py_IncRef")?,
        dec_ref: symbol(c"Py_DecRef")?,
        gc_disable: symbol(c"PyGC_Disable")?,
        gc_enable: symbol(c"PyGC_Enable")?,
        err_fetch: symbol(c"PyErr_Fetch")?,
        err_restore: symbol(c"PyErr_Restore")?,
        err_clear: symbol(c"PyErr_Clear")?,
        get_attr: symbol(c"PyObject_GetAttrString")?,
        utf8: symbol(c"PyUnicode_AsUTF8AndSize")?,
    })
}

/// jemalloc's backtrace hook: the C frames, then this thread's Python frames.
unsafe extern "C" fn backtrace_with_python(
    vec: *mut *mut c_void,
    len: *mut c_uint,
    max_len: c_uint,
) {
    let c_backtrace = C_BACKTRACE.load(Ordering::Acquire);
    if c_backtrace == 0 {
        return;
    }
    let reserve = (MAX_PYTHON_FRAMES as c_uint).min(max_len / 2);
    // SAFETY: the stored address is jemalloc's previous hook, of this very type; it
    // fills at most `max_len - reserve` entries of `vec` (jemalloc's buffer holds
    // `max_len`) and sets `len`.
    unsafe {
        let c_backtrace: BacktraceHook = std::mem::transmute::<usize, BacktraceHook>(c_backtrace);
        c_backtrace(vec, len, max_len - reserve);
    }
    let Some(api) = API.get() else { return };
    // SAFETY: `len` is jemalloc's and was just set to at most `max_len - reserve`, so
    // the `reserve` entries after it are inside the buffer.
    unsafe {
        let filled = *len as usize;
        let room = std::slice::from_raw_parts_mut(vec.add(filled), reserve as usize);
        let added = no_unwind(0, || python_frames(api, room));
        *len = (filled + added) as c_uint;
    }
}

/// Writes this thread's Python frames (innermost first) into `out`; how many.
fn python_frames(api: &Api, out: &mut [*mut c_void]) -> usize {
    if out.is_empty() || IN_WALK.with(|w| w.replace(true)) {
        return 0;
    }
    // SAFETY: the GIL is this thread's (its own thread state is the one holding it), so
    // every call below is made as CPython requires; each new reference is released.
    let written = unsafe { walk_holding_gil(api, out) };
    IN_WALK.with(|w| w.set(false));
    written
}

unsafe fn walk_holding_gil(api: &Api, out: &mut [*mut c_void]) -> usize {
    // SAFETY: see `python_frames`; Py_IsInitialized and the two thread-state getters are
    // plain reads, valid at any time.
    unsafe {
        if (api.is_initialized)() == 0 {
            return 0;
        }
        let tstate = (api.current_tstate)();
        if tstate.is_null() || tstate != (api.this_thread_state)() {
            return 0;
        }
        let (mut kind, mut value, mut traceback) = (
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        (api.err_fetch)(&mut kind, &mut value, &mut traceback);
        let gc_was_on = (api.gc_disable)() != 0;
        let mut written = 0;
        let mut frame = (api.thread_frame)(tstate);
        while !frame.is_null() && written < out.len() {
            let code = (api.frame_code)(frame);
            let line = (api.frame_line)(frame);
            if !code.is_null() {
                if let Some(index) = intern(api, code) {
                    out[written] = std::ptr::without_provenance_mut(encode(index, line) as usize);
                    written += 1;
                }
                (api.dec_ref)(code);
            }
            let back = (api.frame_back)(frame);
            (api.dec_ref)(frame);
            frame = back;
        }
        if !frame.is_null() {
            (api.dec_ref)(frame);
        }
        if gc_was_on {
            (api.gc_enable)();
        }
        // Whatever a failed frame materialisation left is dropped; the caller's own
        // pending exception, if any, is back.
        (api.err_restore)(kind, value, traceback);
        written
    }
}

fn encode(index: usize, line: c_int) -> u64 {
    python_frames::encode(index, u32::try_from(line).unwrap_or(0))
}

/// The table index of `code`, inserting it (with a reference) the first time.
unsafe fn intern(api: &Api, code: Obj) -> Option<usize> {
    let key = code as usize;
    let start = (key >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - MAX_CODES.trailing_zeros());
    for probe in 0..MAX_CODES {
        let index = (start + probe) % MAX_CODES;
        let slot = &CODES[index];
        match slot.load(Ordering::Acquire) {
            current if current == key => return Some(index),
            0 => {
                if slot
                    .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    // SAFETY: the GIL is held (see `python_frames`); this reference keeps
                    // the code object, and so its address, for the life of the process.
                    let names = unsafe {
                        (api.inc_ref)(code);
                        code_names(api, code)
                    };
                    NAMES[index].store(Box::into_raw(Box::new(names)), Ordering::Release);
                    return Some(index);
                }
                if slot.load(Ordering::Acquire) == key {
                    return Some(index);
                }
            }
            _ => {}
        }
    }
    None
}

/// jemalloc's dump hook: appends the names of the interned code objects to the dump.
/// It runs with jemalloc's dump mutex held, which a `fork()` in any thread waits for
/// (jemalloc's prefork handler takes every mutex), so it must not wait for anything
/// itself — in particular not for the GIL, which a forking Python thread holds: the
/// names were copied when each code object was first seen.
unsafe extern "C" fn append_python_names(filename: *const c_char) {
    if filename.is_null() {
        return;
    }
    // SAFETY: jemalloc passes the NUL-terminated name of the file it just wrote.
    let path = unsafe { CStr::from_ptr(filename) };
    no_unwind((), || {
        let mut text = format!("\n{}\n", python_frames::SECTION);
        let mut any = false;
        for (index, names) in NAMES.iter().enumerate() {
            let names = names.load(Ordering::Acquire);
            if names.is_null() {
                continue;
            }
            // SAFETY: published once from a leaked Box and never freed or changed.
            let names = unsafe { &*names };
            text.push_str(&format!("{index}\t{names}\n"));
            any = true;
        }
        if !any {
            return;
        }
        let path = std::ffi::OsStr::from_bytes(path.to_bytes());
        if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(path) {
            let _ = file.write_all(text.as_bytes());
        }
    });
}

/// `qualname<TAB>file` of a code object (`co_qualname` from 3.11, `co_name` before).
unsafe fn code_names(api: &Api, code: Obj) -> String {
    // SAFETY: called with the GIL held on a live code object.
    unsafe {
        let qualname = attribute(api, code, c"co_qualname")
            .or_else(|| attribute(api, code, c"co_name"))
            .unwrap_or_else(|| "?".into());
        let file = attribute(api, code, c"co_filename").unwrap_or_default();
        format!("{qualname}\t{file}")
    }
}

/// A string attribute of `object` as UTF-8, tabs and line breaks replaced.
unsafe fn attribute(api: &Api, object: Obj, name: &CStr) -> Option<String> {
    // SAFETY: called with the GIL held on a live object; the attribute's reference is
    // released after its UTF-8 buffer (owned by the str) was copied.
    unsafe {
        let value = (api.get_attr)(object, name.as_ptr());
        if value.is_null() {
            (api.err_clear)();
            return None;
        }
        let mut size: isize = 0;
        let data = (api.utf8)(value, &mut size);
        let text = if data.is_null() {
            (api.err_clear)();
            None
        } else {
            let bytes = std::slice::from_raw_parts(data.cast::<u8>(), size.max(0) as usize);
            Some(
                String::from_utf8_lossy(bytes)
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect(),
            )
        };
        (api.dec_ref)(value);
        text
    }
}
