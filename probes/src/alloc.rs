//! The allocator: jemalloc as the global allocator with heap profiling compiled in, and
//! the few `mallctl` writes that need raw pointers. This is one of the two modules allowed
//! `unsafe`, because jemalloc's control interface is C.
//!
//! Profiling is *enabled* (`prof:true`) but *inactive* (`prof_active:false`) at start: the
//! same binary is also the supervising agent, which must not pay for sampling. A worker
//! calls [`activate_profiling`] once at start. `prof:true` cannot be turned on later, which
//! is why it is compiled in rather than left to the worker.

use std::ffi::{CString, c_char};

use tikv_jemalloc_ctl::raw;

use crate::error::ProbeError;

/// The options the [`install!`](crate::install) macro compiles into the binary (and the
/// native preload library into itself). `lg_prof_sample:19` samples once per 512 KiB
/// allocated on average. The environment variable [`MALLOC_CONF_ENV`] (read after the
/// compiled-in options) overrides any of them.
pub const DEFAULT_MALLOC_CONF: &[u8] = b"prof:true,prof_active:false,lg_prof_sample:19\0";

/// The environment variable jemalloc reads its options from: `MALLOC_CONF` in a Rust
/// worker, whose jemalloc is the process's allocator (feature `process-malloc`);
/// `_RJEM_MALLOC_CONF` in the preload library, whose jemalloc carries the `_rjem_` prefix
/// so that the library can wrap it in `malloc`/`free` exports of its own.
#[cfg(feature = "process-malloc")]
pub const MALLOC_CONF_ENV: &str = "MALLOC_CONF";
/// The environment variable jemalloc reads its options from (see the `process-malloc`
/// variant): `_RJEM_MALLOC_CONF`, since this jemalloc carries the `_rjem_` prefix.
#[cfg(not(feature = "process-malloc"))]
pub const MALLOC_CONF_ENV: &str = "_RJEM_MALLOC_CONF";

/// Makes jemalloc the global allocator and compiles in [`DEFAULT_MALLOC_CONF`].
///
/// Put it once at the binary's crate root. It must expand in the *binary*: jemalloc keeps
/// a weak default `malloc_conf`, and a definition inside a library archive would never be
/// pulled in by the linker. An app under `#![forbid(unsafe_code)]` can still use it: rustc
/// does not report `unsafe_code` inside another crate's macro expansion, and the one
/// unsafe attribute is justified here.
#[cfg(feature = "process-malloc")]
#[macro_export]
macro_rules! install {
    () => {
        $crate::__install_with_conf_symbol!("malloc_conf");
    };
}

/// Makes jemalloc the global allocator and compiles in [`DEFAULT_MALLOC_CONF`] (the
/// `_rjem_`-prefixed jemalloc of the preload library: see the `process-malloc` variant).
#[cfg(not(feature = "process-malloc"))]
#[macro_export]
macro_rules! install {
    () => {
        $crate::__install_with_conf_symbol!("_rjem_malloc_conf");
    };
}

/// [`install!`](crate::install) with the name jemalloc reads its compiled-in options
/// from: `malloc_conf`, or `_rjem_malloc_conf` for the prefixed build.
#[doc(hidden)]
#[macro_export]
macro_rules! __install_with_conf_symbol {
    ($symbol:literal) => {
        #[global_allocator]
        static HEAPWARDEN_GLOBAL_ALLOCATOR: $crate::__jemallocator::Jemalloc =
            $crate::__jemallocator::Jemalloc;

        /// Read by jemalloc at its first allocation, before `main`.
        // SAFETY: jemalloc declares `const char *malloc_conf` (`_rjem_malloc_conf` when
        // prefixed); a `&[u8]` starts with the data pointer, the bytes are NUL-terminated
        // and 'static, and nothing else in the binary defines this symbol (the macro is
        // used once per binary).
        #[unsafe(export_name = $symbol)]
        pub static MALLOC_CONF: &[u8] = $crate::alloc::DEFAULT_MALLOC_CONF;
    };
}

/// Starts allocation sampling (`prof.active = true`). Call once at worker start; the
/// agent role never calls it. Fails when profiling was disabled
/// (`MALLOC_CONF=prof:false`, see [`MALLOC_CONF_ENV`]).
pub fn activate_profiling() -> Result<(), ProbeError> {
    // SAFETY: "prof.active" is a bool key; `raw::write` passes a pointer to a live bool of
    // the right size.
    unsafe { raw::write(b"prof.active\0", true) }.map_err(|cause| ProbeError::Jemalloc {
        key: "prof.active",
        cause,
    })
}

/// Whether allocation sampling is currently on.
pub fn profiling_active() -> Result<bool, ProbeError> {
    // SAFETY: "prof.active" is a bool key, so reading it as `bool` matches its size.
    unsafe { raw::read::<bool>(b"prof.active\0") }.map_err(|cause| ProbeError::Jemalloc {
        key: "prof.active",
        cause,
    })
}

/// Writes jemalloc's raw heap profile to `path` (`prof.dump`).
pub(crate) fn prof_dump(path: &CString) -> Result<(), tikv_jemalloc_ctl::Error> {
    let file_name: *const c_char = path.as_ptr();
    // SAFETY: "prof.dump" takes a `const char *`; `path` is NUL-terminated and outlives
    // the call, and jemalloc copies the name before returning.
    unsafe { raw::write(b"prof.dump\0", file_name) }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use tikv_jemalloc_ctl::profiling;

    use super::MALLOC_CONF_ENV as CONF_ENV;

    #[test]
    fn compiled_in_options_enable_profiling_at_512k_samples() {
        // An override in the test environment would make this test meaningless.
        if std::env::var_os(CONF_ENV).is_some() {
            println!("skipped: {CONF_ENV} is set in the environment");
            return;
        }
        assert!(profiling::prof::read().expect("opt.prof is readable"));
        assert_eq!(
            profiling::lg_prof_sample::read().expect("lg_prof_sample"),
            19
        );
    }

    /// With `process-malloc` the C library's `malloc` is jemalloc's: what C code linked
    /// into a worker allocates (SQLite's page cache) is in `stats.allocated`.
    #[cfg(feature = "process-malloc")]
    #[test]
    fn c_malloc_is_counted_in_the_heap_figures() {
        use crate::{HeapStats, ReadHeapStats};
        const BYTES: usize = 16 << 20;
        let before = HeapStats::read().expect("heap stats").allocated;
        // SAFETY: a plain C allocation, written (so it is not optimised away) and freed
        // below; no other reference to it exists.
        let block = unsafe { libc::malloc(BYTES) }.cast::<u8>();
        assert!(!block.is_null(), "malloc failed");
        // SAFETY: `block` holds BYTES bytes.
        unsafe { block.write_bytes(1, BYTES) };
        let during = HeapStats::read().expect("heap stats").allocated;
        // SAFETY: allocated above by `malloc`, freed once.
        unsafe { libc::free(block.cast()) };
        assert!(
            during >= before + BYTES as u64,
            "a {BYTES}-byte C malloc is not in stats.allocated: {before} -> {during}"
        );
    }

    const CHILD_ENV: &str = "HEAPWARDEN_PROBES_CONF_CHILD";

    /// Runs only as the child of the test below, printing what jemalloc parsed.
    #[test]
    fn child_reports_options() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        println!(
            "conf prof={} lg_prof_sample={}",
            profiling::prof::read().unwrap_or(false),
            profiling::lg_prof_sample::read().unwrap_or(0)
        );
    }

    #[test]
    fn malloc_conf_env_var_overrides_compiled_in_options() {
        let exe = std::env::current_exe().expect("test executable path");
        let output = Command::new(exe)
            .args([
                "alloc::tests::child_reports_options",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD_ENV, "1")
            .env(CONF_ENV, "lg_prof_sample:21")
            .output()
            .expect("run the test binary as a child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "child failed: {stdout}");
        assert!(
            stdout.contains("conf prof=true lg_prof_sample=21"),
            "env var did not override (compiled-in prof:true must survive): {stdout}"
        );
    }
}
