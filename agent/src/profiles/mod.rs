//! Heap profiles: conversion of raw jemalloc dumps into symbolized pprof (`convert`, run
//! in a short-lived helper process so the agent's RSS stays small) and of Node's V8
//! sampling profiles (`v8`), the profile store
//! with its index and retention (`store`, `index`), and leak-minus-baseline diffs
//! (`diff`).
#![forbid(unsafe_code)]

mod convert;
mod diff;
mod dump_limit;
mod error;
mod index;
pub mod pprof;
pub mod raw;
mod store;
mod store_handle;
mod symbolize;
#[cfg(test)]
mod tests;
pub mod trim;
pub mod v8;

pub use convert::{
    ConvertSummary, HELPER_TIMEOUT, convert, convert_in_helper, convert_v8_in_helper,
    convert_with_helper,
};
pub use diff::{DiffEntry, DiffReport, StackDiff, diff_files, diff_profiles, top_sites};
pub use dump_limit::{DumpBusy, DumpLimiter, DumpPermit, MAX_CONCURRENT_DUMPS};
pub use error::ProfileError;
pub use index::{ProfileFigures, ProfileId, ProfileIdError, ProfileKind, ProfileMeta, Trigger};
pub use store::{PendingProfile, ProfileStore, ProfileStoreHandle, StoreError, StoreStats};

use crate::cli::ConvertArgs;

/// Entry of the hidden `__convert-profile` helper process: converts, then prints the
/// summary as one JSON line on stdout for the parent to read.
pub fn convert_main(args: ConvertArgs) -> anyhow::Result<()> {
    let mut summary = match args.format.as_str() {
        "jemalloc" => {
            convert::convert_with_exe(&args.raw, &args.out, args.pid, args.exe.as_deref())?
        }
        "v8-sampling" => v8::convert_file(&args.raw, &args.out)?,
        other => anyhow::bail!("unknown raw profile format {other:?} (jemalloc | v8-sampling)"),
    };
    summary.peak_rss_kib = convert::own_peak_rss_kib();
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
