//! Which frames belong to the allocator rather than the application. Heap stacks end
//! (leaf side) in jemalloc's sampler (`prof_backtrace_impl`, `_rjem_je_*`), the C
//! allocation entry points (the native preload's `malloc`… wrappers among them), Rust's
//! global-allocator shims and the `alloc`/`core` glue (`RawVec`, `vec::from_elem`...),
//! and for native workers libc's allocating helpers (`strdup`), C++'s `operator new`
//! and CPython's allocator layers (`PyObject_Malloc` → `_PyMem_RawMalloc`). Trimming
//! those from the leaf end makes the application's function the top entry of
//! `go tool pprof -top` and of our diffs (for CPython: the C-level function that made
//! the object, such as `PyUnicode_New`).

/// Whether a frame is allocator machinery that should not be reported as a site: by its
/// name, or by its source file when the name is DWARF's short form of an inlined
/// standard-library function (`with_capacity_in`, `::try_allocate_in`).
pub fn is_allocator_frame(function: &str, file: &str) -> bool {
    is_allocator_function(function) || is_allocator_source(file)
}

/// Rust's `alloc` and `core` sources (`/rustc/<hash>/library/alloc/src/raw_vec.rs`) and
/// jemalloc's own.
fn is_allocator_source(file: &str) -> bool {
    const DIRS: [&str; 4] = [
        "/library/alloc/src/",
        "/library/core/src/",
        "/library/std/src/alloc",
        "jemalloc",
    ];
    DIRS.iter().any(|d| file.contains(d))
}

fn is_allocator_function(function: &str) -> bool {
    const C_PREFIXES: [&str; 10] = [
        "prof_",
        "_rjem_",
        "je_",
        "imalloc",
        "ialloc",
        "arena_",
        "tcache_",
        "__rust_",
        "__rdl_",
        "__rustc::",
    ];
    const C_EXACT: [&str; 14] = [
        "malloc",
        "calloc",
        "realloc",
        "free",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "mallocx",
        "rallocx",
        "sdallocx",
        "__rg_alloc",
        "__rg_alloc_zeroed",
        "__rg_realloc",
    ];
    if function.is_empty() {
        return false;
    }
    if C_EXACT.contains(&function) || C_PREFIXES.iter().any(|p| function.starts_with(p)) {
        return true;
    }
    if is_native_allocator_layer(function) {
        return true;
    }
    // `<SelfType as Trait>::method`: glue when both the type and the trait are the
    // standard library's (`<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem`,
    // `<tikv_jemallocator::Jemalloc as core::alloc::global::GlobalAlloc>::alloc`); an
    // application type's `Clone` is a real site and stays.
    if let Some(rest) = function.strip_prefix('<')
        && let Some((self_ty, rest)) = rest.split_once(" as ")
    {
        let primitive = !self_ty.contains("::") && self_ty.len() <= 6;
        return (primitive || is_std_path(self_ty)) && is_std_path(rest);
    }
    is_std_path(function)
}

/// Allocation layers native workers call through: libc's allocating string helpers and
/// the `__libc_*` aliases, C++'s `operator new`, CPython's `PyMem_*`/`PyObject_Malloc`,
/// and the preload library's own wrappers.
fn is_native_allocator_layer(function: &str) -> bool {
    const EXACT: [&str; 13] = [
        "reallocarray",
        "cfree",
        "strdup",
        "strndup",
        "__strdup",
        "__strndup",
        "PyObject_Malloc",
        "PyObject_Calloc",
        "PyObject_Realloc",
        "_PyObject_Malloc",
        "_PyObject_Calloc",
        "_PyObject_Realloc",
        "pvalloc",
    ];
    const PREFIXES: [&str; 7] = [
        "__libc_",
        "operator new",
        "std::__new_allocator",
        "__gnu_cxx::new_allocator",
        "PyMem_",
        "_PyMem_",
        // The preload library's own code (its exported `malloc`… are trimmed by name).
        "heapwarden_preload::",
    ];
    EXACT.contains(&function) || PREFIXES.iter().any(|p| function.starts_with(p))
}

/// A path in the allocator-facing parts of the standard library.
fn is_std_path(path: &str) -> bool {
    const STD_PREFIXES: [&str; 5] = [
        "alloc::",
        "core::",
        "std::alloc::",
        "tikv_jemallocator::",
        "hashbrown::raw::",
    ];
    let path = path.trim_start_matches(['<', '&', '*', '[']);
    STD_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// Index of the first frame (leaf first) that is not allocator machinery, so the caller
/// can drop `frames[..i]`. Never drops everything: an all-allocator stack keeps its last
/// frame so the bytes stay attributed to something.
/// Frames are (function, source file).
pub fn first_application_frame<S: AsRef<str>>(frames: &[(S, S)]) -> usize {
    let first = frames
        .iter()
        .position(|(f, file)| !is_allocator_frame(f.as_ref(), file.as_ref()))
        .unwrap_or(frames.len());
    first.min(frames.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jemalloc_and_rust_allocator_frames_are_trimmed() {
        for f in [
            "prof_backtrace_impl",
            "_rjem_je_prof_backtrace",
            "je_malloc_default",
            "malloc",
            "posix_memalign",
            "__rust_alloc",
            "__rust_alloc_zeroed",
            "__rustc::__rust_alloc",
            "alloc::alloc::alloc",
            "alloc::raw_vec::RawVecInner<A>::try_allocate_in",
            "alloc::vec::from_elem",
            "<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "<tikv_jemallocator::Jemalloc as core::alloc::global::GlobalAlloc>::alloc",
            "<alloc::alloc::Global as core::alloc::Allocator>::allocate",
            "<T as alloc::vec::spec_from_elem::SpecFromElem>::from_elem",
            "core::ptr::drop_in_place<x>",
            "__strdup",
            "__libc_malloc",
            "operator new(unsigned long)",
            "PyObject_Malloc",
            "_PyMem_RawMalloc",
            "PyMem_RawRealloc",
            "heapwarden_preload::attach::attach_if_worker",
        ] {
            assert!(is_allocator_frame(f, ""), "{f} should be trimmed");
        }
    }

    #[test]
    fn application_frames_stay() {
        for f in [
            "leak_dumper::leaky_function_for_pprof_test",
            "heapwarden_demo::cache::L1::insert",
            "<heapwarden_demo::items::Item as core::clone::Clone>::clone",
            "std::thread::spawn",
            "main",
            "PyUnicode_New",
            "leak_in_named_c_function",
            "",
        ] {
            assert!(!is_allocator_frame(f, "src/main.rs"), "{f} should stay");
        }
    }

    #[test]
    fn inlined_std_frames_with_short_names_are_trimmed_by_source_file() {
        let raw_vec = "/rustc/0123abcd/library/alloc/src/raw_vec/mod.rs";
        assert!(is_allocator_frame("with_capacity_in", raw_vec));
        assert!(is_allocator_frame("::try_allocate_in", raw_vec));
        assert!(!is_allocator_frame("with_capacity_in", "/src/app/buf.rs"));
    }

    #[test]
    fn trimming_stops_at_first_application_frame_and_never_empties() {
        let frames = |names: &[&'static str]| -> Vec<(&'static str, &'static str)> {
            names.iter().map(|n| (*n, "")).collect()
        };
        let stack = frames(&[
            "prof_backtrace_impl",
            "malloc",
            "app::leak",
            "app::main",
            "malloc",
        ]);
        assert_eq!(first_application_frame(&stack), 2);
        assert_eq!(
            first_application_frame(&frames(&["malloc", "__rust_alloc"])),
            1
        );
        assert_eq!(first_application_frame::<&str>(&[]), 0);
    }
}
