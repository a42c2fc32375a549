//! Raw heap-profile dumps. The worker only asks jemalloc to write its `heap_v2` text file
//! to a path the agent chose; symbolisation happens in the agent, because doing it in
//! process grows the worker's heap for good (see DESIGN.md, "Heap profiles").

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use crate::error::ProbeError;

/// Writes jemalloc's raw heap profile to `path` and returns how long jemalloc took.
///
/// The file holds the sampled stacks (when [`activate_profiling`](crate::activate_profiling)
/// ran) and the process's memory mappings, which the agent needs to symbolise it.
pub fn dump_profile(path: &Path) -> Result<Duration, ProbeError> {
    let c_path =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| ProbeError::DumpPathNul {
            path: path.to_path_buf(),
        })?;
    write_dump(path, &c_path)
}

#[cfg(feature = "jemalloc")]
fn write_dump(path: &Path, c_path: &CString) -> Result<Duration, ProbeError> {
    let started = std::time::Instant::now();
    crate::alloc::prof_dump(c_path).map_err(|cause| ProbeError::Dump {
        path: path.to_path_buf(),
        cause,
    })?;
    Ok(started.elapsed())
}

#[cfg(not(feature = "jemalloc"))]
fn write_dump(_: &Path, _: &CString) -> Result<Duration, ProbeError> {
    Err(ProbeError::NoJemalloc)
}

#[cfg(all(test, feature = "jemalloc"))]
mod tests {
    use super::dump_profile;

    #[inline(never)]
    fn allocate_for_dump_test(mib: usize) -> Vec<Vec<u8>> {
        (0..mib).map(|_| vec![7u8; 1024 * 1024]).collect()
    }

    #[test]
    fn dump_writes_heap_v2_with_mappings() {
        crate::activate_profiling().expect("profiling is compiled in");
        let held = std::hint::black_box(allocate_for_dump_test(8));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("worker.heap");
        let took = dump_profile(&path).expect("prof.dump succeeds");
        let text = std::fs::read_to_string(&path).expect("dump file is text");
        assert!(
            text.starts_with("heap_v2/"),
            "starts with {:?}",
            &text[..text.len().min(40)]
        );
        assert!(
            text.contains("\nMAPPED_LIBRARIES:\n"),
            "no mappings section"
        );
        // At 512 KiB mean sampling, 8 MiB of 1 MiB blocks is always sampled: stacks present.
        assert!(text.contains("\n@ 0x"), "no sampled stacks in the dump");
        assert!(took.as_secs() < 5);
        drop(held);
    }

    #[test]
    fn nul_in_path_is_an_error_not_a_panic() {
        let path = std::path::Path::new("/tmp/bad\0name");
        assert!(matches!(
            dump_profile(path),
            Err(crate::ProbeError::DumpPathNul { .. })
        ));
    }
}
