//! Leak-minus-baseline diffs of two stored pprof profiles: live bytes aggregated by the
//! leaf *application* function (allocator frames trimmed, as in conversion) and by full
//! stack, sorted by growth. The same report goes into the detection log record, the API
//! (`/api/v1/profiles/{id}/diff`) and the CLI (`heapwarden diff`).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::ProfileError;
use super::pprof::{self, Profile};
use super::trim::first_application_frame;

/// Rows kept in a report; the tail of tiny deltas is noise for the on-call engineer.
const TOP_FUNCTIONS: usize = 50;
const TOP_STACKS: usize = 20;
/// Frames kept per stack in a report (leaf first).
const STACK_DEPTH: usize = 16;
/// Stored profiles are a few MB; refuse to read anything far larger.
const MAX_PROFILE_FILE: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffReport {
    pub base_id: u64,
    pub profile_id: u64,
    pub base_total_bytes: i64,
    pub profile_total_bytes: i64,
    pub total_delta_bytes: i64,
    /// By leaf application function, largest growth first.
    pub top: Vec<DiffEntry>,
    /// By full stack (leaf first), largest growth first.
    pub top_stacks: Vec<StackDiff>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffEntry {
    pub function: String,
    pub delta_bytes: i64,
    pub base_bytes: i64,
    pub profile_bytes: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackDiff {
    /// Leaf (the allocating application function) first.
    pub frames: Vec<String>,
    pub delta_bytes: i64,
    pub base_bytes: i64,
    pub profile_bytes: i64,
}

/// Live bytes of one profile by leaf function and by stack.
#[derive(Debug, Default)]
struct Aggregate {
    total: i64,
    by_function: HashMap<String, i64>,
    by_stack: HashMap<Vec<String>, i64>,
}

/// Reads and diffs two `.pb.gz` files.
pub fn diff_files(
    base_id: u64,
    base: &Path,
    profile_id: u64,
    profile: &Path,
) -> Result<DiffReport, ProfileError> {
    let base_agg = aggregate(&read_profile(base)?, base)?;
    let profile_agg = aggregate(&read_profile(profile)?, profile)?;
    Ok(report(base_id, &base_agg, profile_id, &profile_agg))
}

/// Diffs two decoded profiles.
pub fn diff_profiles(
    base_id: u64,
    base: &Profile,
    profile_id: u64,
    profile: &Profile,
) -> Result<DiffReport, ProfileError> {
    let base_agg = aggregate(base, Path::new("<base>"))?;
    let profile_agg = aggregate(profile, Path::new("<profile>"))?;
    Ok(report(base_id, &base_agg, profile_id, &profile_agg))
}

/// The first `n` growing sites as one log-friendly line: `fn_a +64.0MiB; fn_b +1.2MiB`.
pub fn top_sites(report: &DiffReport, n: usize) -> String {
    report
        .top
        .iter()
        .filter(|e| e.delta_bytes > 0)
        .take(n)
        .map(|e| format!("{} +{}", e.function, human_bytes(e.delta_bytes)))
        .collect::<Vec<_>>()
        .join("; ")
}

fn human_bytes(bytes: i64) -> String {
    let b = bytes as f64;
    match bytes.unsigned_abs() {
        n if n >= 1 << 30 => format!("{:.1}GiB", b / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1}MiB", b / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1}KiB", b / 1024.0),
        _ => format!("{bytes}B"),
    }
}

pub(super) fn read_profile(path: &Path) -> Result<Profile, ProfileError> {
    let read_err = |source| ProfileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_PROFILE_FILE {
        return Err(ProfileError::RawTooLarge {
            path: path.to_path_buf(),
            bytes: len,
            limit: MAX_PROFILE_FILE,
        });
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    pprof::decode(&bytes).map_err(|source| ProfileError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

fn aggregate(profile: &Profile, path: &Path) -> Result<Aggregate, ProfileError> {
    let string = |i: i64| {
        profile
            .string_table
            .get(usize::try_from(i).unwrap_or(usize::MAX))
            .map(String::as_str)
            .unwrap_or("")
    };
    let value_index = profile
        .sample_type
        .iter()
        .position(|t| string(t.r#type) == "inuse_space")
        .or_else(|| {
            profile
                .sample_type
                .iter()
                .rposition(|t| string(t.unit) == "bytes")
        })
        .ok_or_else(|| ProfileError::NoSpaceSamples {
            path: path.to_path_buf(),
        })?;
    let functions: HashMap<u64, (&str, &str)> = profile
        .function
        .iter()
        .map(|f| (f.id, (string(f.name), string(f.filename))))
        .collect();
    let locations: HashMap<u64, &pprof::Location> =
        profile.location.iter().map(|l| (l.id, l)).collect();
    let mut agg = Aggregate::default();
    for sample in &profile.sample {
        let bytes = sample.value.get(value_index).copied().unwrap_or(0);
        // Leaf first: locations are leaf first, and lines within one innermost first.
        let mut frames: Vec<(String, String)> = Vec::new();
        for id in &sample.location_id {
            match locations.get(id) {
                Some(loc) if !loc.line.is_empty() => frames.extend(loc.line.iter().map(|l| {
                    let (name, file) = functions.get(&l.function_id).copied().unwrap_or(("", ""));
                    (name.to_owned(), file.to_owned())
                })),
                Some(loc) => frames.push((format!("{:#x}", loc.address), String::new())),
                None => frames.push((format!("location#{id}"), String::new())),
            }
        }
        let keep_from = first_application_frame(&frames);
        let stack: Vec<String> = frames
            .into_iter()
            .skip(keep_from)
            .take(STACK_DEPTH)
            .map(|(name, _)| name)
            .collect();
        let leaf = stack
            .first()
            .cloned()
            .unwrap_or_else(|| "<empty stack>".to_owned());
        agg.total += bytes;
        *agg.by_function.entry(leaf).or_default() += bytes;
        *agg.by_stack.entry(stack).or_default() += bytes;
    }
    Ok(agg)
}

fn report(base_id: u64, base: &Aggregate, profile_id: u64, profile: &Aggregate) -> DiffReport {
    let mut top: Vec<DiffEntry> = keys(&base.by_function, &profile.by_function)
        .map(|f| {
            let b = base.by_function.get(f).copied().unwrap_or(0);
            let p = profile.by_function.get(f).copied().unwrap_or(0);
            DiffEntry {
                function: f.clone(),
                delta_bytes: p - b,
                base_bytes: b,
                profile_bytes: p,
            }
        })
        .filter(|e| e.delta_bytes != 0)
        .collect();
    top.sort_by(|a, b| {
        b.delta_bytes
            .cmp(&a.delta_bytes)
            .then(a.function.cmp(&b.function))
    });
    top.truncate(TOP_FUNCTIONS);
    let mut top_stacks: Vec<StackDiff> = keys(&base.by_stack, &profile.by_stack)
        .map(|s| {
            let b = base.by_stack.get(s).copied().unwrap_or(0);
            let p = profile.by_stack.get(s).copied().unwrap_or(0);
            StackDiff {
                frames: s.clone(),
                delta_bytes: p - b,
                base_bytes: b,
                profile_bytes: p,
            }
        })
        .filter(|e| e.delta_bytes != 0)
        .collect();
    top_stacks.sort_by(|a, b| {
        b.delta_bytes
            .cmp(&a.delta_bytes)
            .then(a.frames.cmp(&b.frames))
    });
    top_stacks.truncate(TOP_STACKS);
    DiffReport {
        base_id,
        profile_id,
        base_total_bytes: base.total,
        profile_total_bytes: profile.total,
        total_delta_bytes: profile.total - base.total,
        top,
        top_stacks,
    }
}

/// Keys of either map, each once.
fn keys<'a, K: Eq + std::hash::Hash, V>(
    a: &'a HashMap<K, V>,
    b: &'a HashMap<K, V>,
) -> impl Iterator<Item = &'a K> {
    a.keys().chain(b.keys().filter(|k| !a.contains_key(*k)))
}
