//! Errors of profile conversion and diffing, each carrying the file involved.

use std::path::PathBuf;
use std::time::Duration;

use super::pprof::DecodeError;
use super::raw::RawError;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("raw dump {path} is {bytes} bytes, over the {limit}-byte limit")]
    RawTooLarge {
        path: PathBuf,
        bytes: u64,
        limit: u64,
    },
    #[error("raw dump {path}")]
    Raw { path: PathBuf, source: RawError },
    #[error("V8 profile {path}")]
    V8 {
        path: PathBuf,
        source: super::v8::V8Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profile {path}")]
    Decode { path: PathBuf, source: DecodeError },
    #[error("profile {path} has no inuse_space sample type")]
    NoSpaceSamples { path: PathBuf },
    #[error("cannot start the conversion helper {exe}")]
    HelperSpawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("conversion helper for {raw} did not finish within {timeout:?}; killed")]
    HelperTimeout { raw: PathBuf, timeout: Duration },
    #[error("conversion helper for {raw} failed ({status}): {stderr}")]
    HelperFailed {
        raw: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("unknown raw profile format {format:?} (jemalloc | v8-sampling)")]
    UnknownFormat { format: String },
    #[error("cannot render the flame graph")]
    Render { source: std::io::Error },
}
