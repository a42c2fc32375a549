//! Heap profiles: taking one from a worker (`capture`: the worker's raw dump over its
//! control link, then conversion; `snapshot`: a Node worker's full V8 heap snapshot),
//! conversion of raw jemalloc dumps into symbolized pprof (`convert`, run in a
//! short-lived helper process so the agent's RSS stays small) and of Node's V8 sampling
//! profiles (`v8`), the profile store with its index and retention (`store`, `index`),
//! leak-minus-baseline diffs (`diff`, and as a differential flame graph: `flame`), and who
//! holds the memory in a V8 heap snapshot (`retainers`).
#![forbid(unsafe_code)]

mod capture;
mod convert;
mod diff;
mod dropbox;
mod dump_limit;
mod error;
mod flame;
mod index;
pub mod pprof;
pub mod raw;
pub mod retainers;
mod snapshot;
mod store;
mod store_handle;
mod symbolize;
#[cfg(test)]
mod tests;
pub mod trim;
pub mod v8;

use std::path::{Path, PathBuf};

pub use capture::{CaptureError, CaptureRequest, take_profile};
pub use convert::{
    ConvertSummary, HELPER_TIMEOUT, convert, convert_in_helper, convert_v8_in_helper,
    convert_with_helper,
};
pub use diff::{
    DiffEntry, DiffReport, DiffView, StackDiff, diff_files, diff_profiles, first_app_frame,
    is_application_file, top_entry_for_page, top_sites,
};
pub use dump_limit::{DumpBusy, DumpLimiter, DumpPermit, MAX_CONCURRENT_DUMPS};
pub use error::ProfileError;
pub use flame::{diff_svg, diff_svg_files, folded_diff};
pub use index::{
    ExportMark, ExportOutcome, ProfileFigures, ProfileId, ProfileIdError, ProfileKind, ProfileMeta,
    Runtime, Trigger,
};
pub use snapshot::{SnapshotError, SnapshotRequest, take_snapshot};
pub use store::{
    ExportQueue, PendingProfile, ProfileStore, ProfileStoreHandle, StoreError, StoreStats,
};

/// Entry of the hidden `__convert-profile` helper process, the other end of
/// [`convert_with_helper`]: converts `raw` (written in `format`: `jemalloc` or
/// `v8-sampling`), then prints the summary as one JSON line on stdout for the parent to
/// read.
pub fn helper_main(
    format: &str,
    raw: &Path,
    out: &Path,
    pid: Option<u32>,
    exe: Option<&Path>,
) -> Result<(), ProfileError> {
    // Before any input is read: a hostile dump or profile costs at most these.
    convert::limit_helper_resources();
    let mut summary = match format {
        "jemalloc" => convert::convert_with_exe(raw, out, pid, exe)?,
        "v8-sampling" => v8::convert_file(raw, out)?,
        other => {
            return Err(ProfileError::UnknownFormat {
                format: other.to_string(),
            });
        }
    };
    summary.peak_rss_kib = convert::own_peak_rss_kib();
    let line = serde_json::to_string(&summary).map_err(|e| ProfileError::Write {
        path: PathBuf::from("/dev/stdout"),
        source: std::io::Error::other(e),
    })?;
    println!("{line}");
    Ok(())
}
