//! V8 sampling heap profile (as the Node probe writes it) → the same pprof the jemalloc
//! path produces: sample types `inuse_objects`/`inuse_space`, one function per (JS
//! function, script URL, line, column), one location per (function, line), stacks leaf
//! first. So the
//! store, retention, `heapwarden diff` and `go tool pprof -base` work unchanged and name
//! the JavaScript function that allocated what is still live.
//!
//! Input (`heapwarden-v8-sampling`, version 1, see docs/src/workers/protocol.md):
//! `nodes: [[id, parent, functionName, url, line, column, selfSize], …]` (V8's call tree,
//! flattened; `selfSize` is V8's estimate of live bytes, already scaled for sampling),
//! `samples: [[nodeId, size], …]` (one row per sampled live object), and
//! `sampling_interval`. The probe's own frames are trimmed, like jemalloc's are: what
//! was allocated under a probe frame is reported as one `(heapwarden probe)` frame, so it
//! never passes for the application's; `(root)` is dropped. Everything is checked: ids, parents, cycles and sizes of a hostile file
//! end in an error, never a panic or an unbounded allocation.

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::convert::{ConvertSummary, write_private};
use super::error::ProfileError;
use super::pprof::{self, StringTable};

/// A sampling profile is proportional to distinct live stacks; 64 MiB is far past any.
pub const MAX_V8_PROFILE_BYTES: u64 = 64 * 1024 * 1024;
const MAX_NODES: usize = 2_000_000;
/// Frames kept per sample, leaf first (deeper ones are dropped, as pprof's own
/// collectors do): what keeps a hostile deep chain linear.
pub const MAX_STACK_DEPTH: usize = 256;
const FORMAT: &str = "heapwarden-v8-sampling";
/// The probe's file (`.js`, or `.cjs` as shipped later): its frames are the watchdog's,
/// not the application's.
const PROBE_FILES: [&str; 2] = ["heapwarden-probe.js", "heapwarden-probe.cjs"];

#[derive(Debug, thiserror::Error)]
pub enum V8Error {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("format {format:?} version {version} is not a heapwarden V8 sampling profile")]
    Format { format: String, version: u32 },
    #[error("{0}")]
    Shape(String),
}

type NodeRow = (u64, u64, String, String, i64, i64, f64);

/// Where the probe's own allocations are reported.
static PROBE_ROW: NodeRow = (0, 0, String::new(), String::new(), -1, -1, 0.0);
const PROBE_FRAME_NAME: &str = "(heapwarden probe)";

#[derive(Debug, Deserialize)]
struct FlatProfile {
    format: String,
    version: u32,
    #[serde(default)]
    pid: Option<u32>,
    sampling_interval: f64,
    nodes: Vec<NodeRow>,
    #[serde(default)]
    samples: Vec<(u64, f64)>,
}

/// What a conversion found, for the helper's summary.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct V8Totals {
    pub samples: usize,
    pub locations: usize,
    pub functions: usize,
    pub bytes: i64,
    pub objects: i64,
}

/// Parses the probe's JSON and builds the pprof profile.
pub fn parse_and_build(
    json: &[u8],
    dumped_at: SystemTime,
) -> Result<(pprof::Profile, V8Totals), V8Error> {
    let flat: FlatProfile = serde_json::from_slice(json)?;
    if flat.format != FORMAT || flat.version != 1 {
        return Err(V8Error::Format {
            format: flat.format,
            version: flat.version,
        });
    }
    if flat.nodes.len() > MAX_NODES {
        return Err(V8Error::Shape(format!(
            "{} nodes, over {MAX_NODES}",
            flat.nodes.len()
        )));
    }
    if !(flat.sampling_interval.is_finite() && flat.sampling_interval >= 1.0) {
        return Err(V8Error::Shape(format!(
            "sampling interval {}",
            flat.sampling_interval
        )));
    }
    build(&flat, dumped_at)
}

/// V8's unbiasing of one sampled object (`SamplingHeapProfiler::ScaleSample`).
fn objects_for(size: f64, interval: f64) -> f64 {
    let p = 1.0 - (-size.max(1.0) / interval).exp();
    if p > 0.0 { 1.0 / p } else { 1.0 }
}

/// A JS function is where it is written: two anonymous functions of one file differ by
/// line and column. The name stays in the key for V8's builtins (`JSON.parse`), which all
/// have no script and no position.
type FunctionKey<'a> = (&'a str, &'a str, i64, i64);

struct Builder<'a> {
    strings: StringTable,
    functions: HashMap<FunctionKey<'a>, u64>,
    locations: HashMap<(u64, i64), u64>,
    profile: pprof::Profile,
}

impl<'a> Builder<'a> {
    fn location(&mut self, row: &'a NodeRow) -> u64 {
        let (_, _, name, url, line, column, _) = row;
        let key = (name.as_str(), url.as_str(), *line, *column);
        let function_id = match self.functions.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.profile.function.len() as u64 + 1;
                let display = display_name(name, url, *line, *column);
                let name_i = self.strings.intern(&display);
                let file_i = self.strings.intern(url);
                self.profile.function.push(pprof::Function {
                    id,
                    name: name_i,
                    system_name: name_i,
                    filename: file_i,
                });
                self.functions.insert(key, id);
                id
            }
        };
        // V8 lines are 0-based (-1 when unknown); pprof's are 1-based (0 unknown).
        let line = (*line + 1).max(0);
        if let Some(&id) = self.locations.get(&(function_id, line)) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(pprof::Location {
            id,
            mapping_id: 0,
            address: 0,
            line: vec![pprof::Line { function_id, line }],
        });
        self.locations.insert((function_id, line), id);
        id
    }
}

/// Anonymous functions are told apart by where they are written:
/// `(anonymous server.js:14:23)`, 1-based line and column as editors show them.
fn display_name(name: &str, url: &str, line: i64, column: i64) -> String {
    if name.is_empty() && url.is_empty() && line < 0 {
        return PROBE_FRAME_NAME.to_owned();
    }
    if !name.is_empty() {
        return name.to_owned();
    }
    let file = url.rsplit('/').next().unwrap_or(url);
    let at = match (line >= 0, column >= 0) {
        (true, true) => format!("{}:{}", line + 1, column + 1),
        (true, false) => format!("{}", line + 1),
        _ => "?".to_owned(),
    };
    if file.is_empty() {
        format!("(anonymous):{at}")
    } else {
        format!("(anonymous {file}:{at})")
    }
}

fn is_probe_frame(row: &NodeRow) -> bool {
    PROBE_FILES.iter().any(|f| row.3.ends_with(f))
}

fn is_root(row: &NodeRow) -> bool {
    row.1 == 0 && row.2 == "(root)"
}

fn build(flat: &FlatProfile, dumped_at: SystemTime) -> Result<(pprof::Profile, V8Totals), V8Error> {
    let mut index: HashMap<u64, usize> = HashMap::with_capacity(flat.nodes.len());
    for (i, row) in flat.nodes.iter().enumerate() {
        if row.0 == 0 || index.insert(row.0, i).is_some() {
            return Err(V8Error::Shape(format!(
                "node id {} is zero or repeated",
                row.0
            )));
        }
    }
    let mut objects: HashMap<u64, f64> = HashMap::new();
    for &(node, size) in &flat.samples {
        if !index.contains_key(&node) {
            return Err(V8Error::Shape(format!(
                "a sample names unknown node {node}"
            )));
        }
        *objects.entry(node).or_default() += objects_for(size, flat.sampling_interval);
    }
    let (parents, in_probe) = ancestry(flat, &index)?;
    let mut location_of: Vec<Option<u64>> = vec![None; flat.nodes.len()];
    let mut b = Builder {
        strings: StringTable::default(),
        functions: HashMap::new(),
        locations: HashMap::new(),
        profile: pprof::Profile::default(),
    };
    let mut totals = V8Totals::default();
    for row in &flat.nodes {
        let self_size = row.6;
        let count = objects.get(&row.0).copied().unwrap_or(0.0);
        if !(self_size.is_finite() && self_size >= 0.0) {
            return Err(V8Error::Shape(format!(
                "node {} has size {self_size}",
                row.0
            )));
        }
        if self_size == 0.0 && count == 0.0 {
            continue;
        }
        // Leaf first, at most MAX_STACK_DEPTH frames: the walk and the sample are
        // bounded, so a hostile chain costs O(nodes x depth), not O(nodes^2).
        let mut stack = Vec::new();
        let mut at = Some(node_index(&index, row.0));
        while let Some(i) = at {
            if stack.len() == MAX_STACK_DEPTH {
                break;
            }
            let node = &flat.nodes[i];
            if !is_root(node) && !is_probe_frame(node) {
                stack.push(i);
            }
            at = parents[i];
        }
        let in_probe = in_probe[node_index(&index, row.0)];
        // What the probe allocated (and node internals it called) is the probe's: one
        // frame, never the application's function.
        let stack: Vec<u64> = if in_probe {
            vec![b.location(&PROBE_ROW)]
        } else {
            // One location lookup per node, not per frame of every sample.
            stack
                .into_iter()
                .map(|i| *location_of[i].get_or_insert_with(|| b.location(&flat.nodes[i])))
                .collect()
        };
        let (bytes, objects) = (self_size.round() as i64, count.round() as i64);
        totals.bytes += bytes;
        totals.objects += objects;
        b.profile.sample.push(pprof::Sample {
            location_id: stack,
            value: vec![objects, bytes],
        });
    }
    finish(&mut b, flat, dumped_at);
    totals.samples = b.profile.sample.len();
    totals.locations = b.profile.location.len();
    totals.functions = b.profile.function.len();
    let mut profile = b.profile;
    profile.string_table = b.strings.finish();
    Ok((profile, totals))
}

fn node_index(index: &HashMap<u64, usize>, id: u64) -> usize {
    index[&id]
}

/// Each node's parent (by position) and whether a probe frame is among its ancestors
/// (itself included), memoised: every node is walked once, whatever the depth, and a
/// cycle or an unknown parent is an error.
#[allow(clippy::type_complexity)]
fn ancestry(
    flat: &FlatProfile,
    index: &HashMap<u64, usize>,
) -> Result<(Vec<Option<usize>>, Vec<bool>), V8Error> {
    let n = flat.nodes.len();
    let mut parents = Vec::with_capacity(n);
    for node in &flat.nodes {
        parents.push(match node.1 {
            0 => None,
            parent => Some(*index.get(&parent).ok_or_else(|| {
                V8Error::Shape(format!("node {} has unknown parent {parent}", node.0))
            })?),
        });
    }
    // 0: not yet known, 1: on the walk being resolved, 2: known.
    let mut state = vec![0u8; n];
    let mut in_probe = vec![false; n];
    let mut walk = Vec::new();
    for start in 0..n {
        let mut at = Some(start);
        while let Some(i) = at {
            match state[i] {
                2 => break,
                1 => return Err(V8Error::Shape("the node parents form a cycle".to_owned())),
                _ => {}
            }
            state[i] = 1;
            walk.push(i);
            at = parents[i];
        }
        let mut inherited = at.is_some_and(|known| in_probe[known]);
        while let Some(i) = walk.pop() {
            inherited |= is_probe_frame(&flat.nodes[i]);
            in_probe[i] = inherited;
            state[i] = 2;
        }
    }
    Ok((parents, in_probe))
}

fn finish(b: &mut Builder<'_>, flat: &FlatProfile, dumped_at: SystemTime) {
    let objects = b.strings.intern("inuse_objects");
    let count = b.strings.intern("count");
    let space = b.strings.intern("inuse_space");
    let bytes = b.strings.intern("bytes");
    b.profile.sample_type = vec![
        pprof::ValueType {
            r#type: objects,
            unit: count,
        },
        pprof::ValueType {
            r#type: space,
            unit: bytes,
        },
    ];
    b.profile.default_sample_type = space;
    let period_type = b.strings.intern("space");
    b.profile.period_type = Some(pprof::ValueType {
        r#type: period_type,
        unit: bytes,
    });
    b.profile.period = flat.sampling_interval as i64;
    b.profile.time_nanos = dumped_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let comment = match flat.pid {
        Some(pid) => format!("heapwarden: V8 sampling heap profile of pid {pid}"),
        None => "heapwarden: V8 sampling heap profile".to_owned(),
    };
    b.profile.comment = vec![b.strings.intern(&comment)];
}

/// Converts the probe's file at `raw` into a pprof `.pb.gz` at `out` (0600, atomic).
pub fn convert_file(raw: &Path, out: &Path) -> Result<ConvertSummary, ProfileError> {
    let started = std::time::Instant::now();
    let read_err = |source| ProfileError::Read {
        path: raw.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(raw).map_err(read_err)?;
    if meta.len() > MAX_V8_PROFILE_BYTES {
        return Err(ProfileError::RawTooLarge {
            path: raw.to_path_buf(),
            bytes: meta.len(),
            limit: MAX_V8_PROFILE_BYTES,
        });
    }
    let json = std::fs::read(raw).map_err(read_err)?;
    let dumped_at = meta.modified().unwrap_or_else(|_| SystemTime::now());
    let (profile, totals) =
        parse_and_build(&json, dumped_at).map_err(|source| ProfileError::V8 {
            path: raw.to_path_buf(),
            source,
        })?;
    let bytes = pprof::encode_gz(&profile).map_err(|source| ProfileError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    write_private(out, &bytes)?;
    Ok(ConvertSummary {
        samples: totals.samples,
        locations: totals.locations,
        functions: totals.functions,
        unsymbolized: 0,
        total_bytes: totals.bytes,
        total_objects: totals.objects,
        raw_bytes: meta.len(),
        out_bytes: bytes.len() as u64,
        elapsed_ms: started.elapsed().as_millis() as u64,
        peak_rss_kib: None,
    })
}

/// Whether `path` starts like a V8 heap snapshot (`{"snapshot":{"meta":`), read from its
/// first bytes only: the agent refuses to store a file the worker claims is one.
pub fn looks_like_heap_snapshot(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 64];
    let mut file = std::fs::File::open(path)?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    let text: String = String::from_utf8_lossy(&head[..filled])
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    Ok(text.starts_with("{\"snapshot\":{\"meta\":"))
}

#[cfg(test)]
#[path = "v8_tests.rs"]
mod tests;
