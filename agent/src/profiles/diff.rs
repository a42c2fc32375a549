//! Leak-minus-baseline diffs of two stored pprof profiles, sorted by growth. The same
//! report goes into the detection log record, the API (`/api/v1/profiles/{id}/diff`) and
//! the CLI (`heapwarden diff`).
//!
//! Two views of one diff. *Allocation sites* (`top_sites`): live bytes by the leaf
//! function that allocated them (allocator frames trimmed, as in conversion). *Application
//! frames* (Node profiles only): live bytes by the first frame of the stack that is the
//! application's own code — outside `node_modules/`, `node:` internals, V8 builtins and
//! the probe — so `JSON.parse` called by a route handler counts for the handler. Bytes
//! allocated with no application frame on the stack at all (body parsers run on the
//! request stream's `end`, from Node's tick queue) keep their allocation site, marked
//! `in_app: false`, after the application's growing frames — unless their stack's
//! innermost scripted frame is a dependency's function that calls exactly one application
//! function elsewhere in the two profiles: V8's sampling profiler credits a function
//! inlined by the optimising compiler to the function it was inlined into (a framework's
//! dispatcher that has only ever called one route handler inlines it), so those bytes are
//! that application function's, marked `inlined_into`. `top` is the default view
//! (application frames for Node, allocation sites otherwise) and `view` says which it
//! is. Every entry carries its file and line.

use std::collections::{HashMap, HashSet};
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
/// How the V8 converter marks its profiles (`profiles/v8.rs`).
const V8_COMMENT: &str = "heapwarden: V8 sampling heap profile";

/// What `DiffReport::top` is grouped by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffView {
    /// The leaf function that allocated the bytes.
    #[default]
    AllocationSite,
    /// The first application frame of the allocating stack (Node).
    AppFrame,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffReport {
    pub base_id: u64,
    pub profile_id: u64,
    pub base_total_bytes: i64,
    pub profile_total_bytes: i64,
    pub total_delta_bytes: i64,
    /// What `top` is grouped by.
    #[serde(default)]
    pub view: DiffView,
    /// The default view, largest growth first.
    pub top: Vec<DiffEntry>,
    /// By allocation site (leaf function), largest growth first.
    #[serde(default)]
    pub top_sites: Vec<DiffEntry>,
    /// By full stack (leaf first), largest growth first.
    pub top_stacks: Vec<StackDiff>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffEntry {
    pub function: String,
    /// Source file (a script path for Node, `file://` dropped); empty when unknown.
    #[serde(default)]
    pub file: String,
    /// 1-based line (for JavaScript: where the function is written); 0 when unknown.
    #[serde(default)]
    pub line: i64,
    /// In the application-frame view: false when no frame of the stack was the
    /// application's, so the entry is the allocation site (a dependency's callback,
    /// such as a body parser's on a stream's end); see `heapwarden diff --retainers`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub in_app: bool,
    /// In the application-frame view: the dependency's function this application function
    /// was inlined into, when some of its bytes were sampled there (V8 credits inlined
    /// code to its caller); empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub inlined_into: String,
    pub delta_bytes: i64,
    pub base_bytes: i64,
    pub profile_bytes: i64,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl DiffEntry {
    /// `file:line`, the file shortened to what a reader recognises: the part after the
    /// last `node_modules/` (the package's own path) or else the file name.
    pub fn short_location(&self) -> String {
        if self.file.is_empty() {
            return String::new();
        }
        let file = match self.file.rfind("node_modules/") {
            Some(i) => &self.file[i + "node_modules/".len()..],
            None => self.file.rsplit('/').next().unwrap_or(&self.file),
        };
        if self.line > 0 {
            format!("{file}:{}", self.line)
        } else {
            file.to_owned()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackDiff {
    /// Leaf (the allocating application function) first.
    pub frames: Vec<String>,
    pub delta_bytes: i64,
    pub base_bytes: i64,
    pub profile_bytes: i64,
}

/// One frame as the diff groups it: function name, file, line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Frame {
    function: String,
    file: String,
    line: i64,
}

/// Whether a script belongs to the application rather than to its dependencies, Node's
/// own library or V8 (builtins such as `JSON.parse` have no script at all).
pub fn is_application_file(file: &str) -> bool {
    !file.is_empty()
        && !file.starts_with("node:")
        && !file.contains("node_modules/")
        && !file.ends_with("heapwarden-probe.js")
        && !file.ends_with("heapwarden-probe.cjs")
}

/// Index of the first application frame of a leaf-first stack of (function, file), or
/// `None` when every frame is a dependency's, Node's or V8's.
pub fn first_app_frame<S: AsRef<str>>(frames: &[(S, S)]) -> Option<usize> {
    frames
        .iter()
        .position(|(_, file)| is_application_file(file.as_ref()))
}

/// The entry a page or a per-slot leak-suspect metric names: the first growing entry of
/// the report's default view (the application's function for Node).
pub fn top_entry_for_page(report: &DiffReport) -> Option<&DiffEntry> {
    report.top.iter().find(|e| e.delta_bytes > 0)
}

/// Live bytes of one profile by allocation site, by application frame and by stack.
#[derive(Debug, Default)]
struct Aggregate {
    total: i64,
    /// Whether the profile came from the V8 converter (the app-frame view applies).
    node: bool,
    by_site: HashMap<Frame, i64>,
    /// Node profiles: bytes by the first application frame of their stack.
    by_app: HashMap<Frame, i64>,
    /// Node profiles: bytes with no application frame on their stack, by allocation site
    /// and the stack's innermost scripted frame (where V8 puts inlined application code).
    no_app: HashMap<(Frame, Option<Frame>), i64>,
    /// Node profiles: the application functions each dependency's frame was seen calling.
    app_callees: HashMap<Frame, HashSet<Frame>>,
    by_stack: HashMap<Vec<String>, i64>,
    /// Native profiles group a function's call sites together (its lines are call sites,
    /// not one definition); the line shown is that of its largest sample.
    native_lines: HashMap<(String, String), (i64, i64)>,
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

/// The first `n` growing entries of the default view as one log-friendly line:
/// `rememberSession (server.js:14) +64.0MiB; fn_b +1.2MiB`.
pub fn top_sites(report: &DiffReport, n: usize) -> String {
    report
        .top
        .iter()
        .filter(|e| e.delta_bytes > 0)
        .take(n)
        .map(|e| match e.short_location() {
            at if at.is_empty() => format!("{} +{}", e.function, human_bytes(e.delta_bytes)),
            at => format!("{} ({at}) +{}", e.function, human_bytes(e.delta_bytes)),
        })
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

/// The string at `index` of a profile's string table ("" when out of range).
pub(super) fn string_at(profile: &Profile, index: i64) -> &str {
    profile
        .string_table
        .get(usize::try_from(index).unwrap_or(usize::MAX))
        .map(String::as_str)
        .unwrap_or("")
}

/// Which sample value holds live bytes: `inuse_space`, else the last one in bytes.
pub(super) fn live_bytes_index(profile: &Profile, path: &Path) -> Result<usize, ProfileError> {
    let string = |i: i64| string_at(profile, i);
    profile
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
        })
}

fn aggregate(profile: &Profile, path: &Path) -> Result<Aggregate, ProfileError> {
    let string = |i: i64| string_at(profile, i);
    let value_index = live_bytes_index(profile, path)?;
    let functions: HashMap<u64, (&str, &str)> = profile
        .function
        .iter()
        .map(|f| (f.id, (string(f.name), string(f.filename))))
        .collect();
    let locations: HashMap<u64, &pprof::Location> =
        profile.location.iter().map(|l| (l.id, l)).collect();
    let node = profile
        .comment
        .iter()
        .any(|&c| string(c).starts_with(V8_COMMENT));
    let mut agg = Aggregate {
        node,
        ..Aggregate::default()
    };
    for sample in &profile.sample {
        let bytes = sample.value.get(value_index).copied().unwrap_or(0);
        // Leaf first: locations are leaf first, and lines within one innermost first.
        let mut frames: Vec<Frame> = Vec::new();
        for id in &sample.location_id {
            match locations.get(id) {
                Some(loc) if !loc.line.is_empty() => frames.extend(loc.line.iter().map(|l| {
                    let (name, file) = functions.get(&l.function_id).copied().unwrap_or(("", ""));
                    Frame {
                        function: name.to_owned(),
                        file: file.strip_prefix("file://").unwrap_or(file).to_owned(),
                        line: l.line,
                    }
                })),
                Some(loc) => frames.push(Frame {
                    function: format!("{:#x}", loc.address),
                    file: String::new(),
                    line: 0,
                }),
                None => frames.push(Frame {
                    function: format!("location#{id}"),
                    file: String::new(),
                    line: 0,
                }),
            }
        }
        let names: Vec<(&str, &str)> = frames
            .iter()
            .map(|f| (f.function.as_str(), f.file.as_str()))
            .collect();
        let keep_from = first_application_frame(&names);
        let app = node.then(|| first_app_frame(&names)).flatten();
        let mut site = frames.get(keep_from).cloned().unwrap_or_else(|| Frame {
            function: "<empty stack>".to_owned(),
            file: String::new(),
            line: 0,
        });
        if !node {
            let best = agg
                .native_lines
                .entry((site.function.clone(), site.file.clone()))
                .or_insert((site.line, bytes));
            if bytes > best.1 {
                *best = (site.line, bytes);
            }
            site.line = 0;
        }
        if node {
            match app {
                Some(i) => *agg.by_app.entry(frames[i].clone()).or_default() += bytes,
                None => {
                    let host = frames.iter().find(|f| !f.file.is_empty()).cloned();
                    *agg.no_app.entry((site.clone(), host)).or_default() += bytes;
                }
            }
            for pair in frames.windows(2) {
                let (callee, caller) = (&pair[0], &pair[1]);
                if is_application_file(&callee.file)
                    && !caller.file.is_empty()
                    && !is_application_file(&caller.file)
                {
                    let seen = agg.app_callees.entry(caller.clone()).or_default();
                    if !seen.contains(callee) {
                        seen.insert(callee.clone());
                    }
                }
            }
        }
        let stack: Vec<String> = frames
            .iter()
            .skip(keep_from)
            .take(STACK_DEPTH)
            .map(|f| f.function.clone())
            .collect();
        agg.total += bytes;
        *agg.by_site.entry(site).or_default() += bytes;
        *agg.by_stack.entry(stack).or_default() += bytes;
    }
    Ok(agg)
}

/// Entries of one view, growth first, ties by name: `(frame, in_app) -> bytes` of both.
fn ranked<K: Eq + std::hash::Hash>(
    base: &HashMap<K, i64>,
    profile: &HashMap<K, i64>,
    entry: impl Fn(&K) -> (&Frame, bool),
) -> Vec<DiffEntry> {
    let mut top: Vec<DiffEntry> = keys(base, profile)
        .map(|k| {
            let b = base.get(k).copied().unwrap_or(0);
            let p = profile.get(k).copied().unwrap_or(0);
            let (frame, in_app) = entry(k);
            DiffEntry {
                function: frame.function.clone(),
                file: frame.file.clone(),
                line: frame.line,
                in_app,
                inlined_into: String::new(),
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
            .then_with(|| a.function.cmp(&b.function))
            .then_with(|| a.file.cmp(&b.file))
            .then_with(|| a.line.cmp(&b.line))
    });
    top.truncate(TOP_FUNCTIONS);
    top
}

fn report(base_id: u64, base: &Aggregate, profile_id: u64, profile: &Aggregate) -> DiffReport {
    let mut top_sites = ranked(&base.by_site, &profile.by_site, |f| (f, true));
    for e in top_sites.iter_mut().filter(|e| e.line == 0) {
        let key = (e.function.clone(), e.file.clone());
        if let Some(&(line, _)) = profile
            .native_lines
            .get(&key)
            .or_else(|| base.native_lines.get(&key))
        {
            e.line = line;
        }
    }
    // The app-frame view when the newer profile is a Node one (a base from before an
    // upgrade may be either; its sites still subtract by frame).
    let (view, top) = if profile.node {
        let hosts = inline_hosts(base, profile);
        let mut inlined = HashMap::new();
        let base_view = app_view(base, &hosts, &mut inlined);
        let profile_view = app_view(profile, &hosts, &mut inlined);
        let mut app = ranked(&base_view, &profile_view, |(f, in_app)| (f, *in_app));
        for e in app.iter_mut().filter(|e| e.in_app) {
            let frame = Frame {
                function: e.function.clone(),
                file: e.file.clone(),
                line: e.line,
            };
            if let Some(host) = inlined.get(&frame) {
                e.inlined_into = host.clone();
            }
        }
        // The application's growing frames lead; bytes allocated with no application
        // frame on the stack (a dependency's own callback, such as a body parser's on
        // the request stream's end) follow, marked: their holder is found by retainers.
        app.sort_by_key(|e| !(e.in_app && e.delta_bytes > 0));
        (DiffView::AppFrame, app)
    } else {
        (DiffView::AllocationSite, top_sites.clone())
    };
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
        view,
        top,
        top_sites,
        top_stacks,
    }
}

/// Each dependency's frame that the two profiles show calling exactly one application
/// function, with that function: where V8 credits the function's code once it is inlined.
fn inline_hosts<'a>(base: &'a Aggregate, profile: &'a Aggregate) -> HashMap<&'a Frame, &'a Frame> {
    let mut callees: HashMap<&Frame, HashSet<&Frame>> = HashMap::new();
    for (caller, apps) in base.app_callees.iter().chain(&profile.app_callees) {
        callees.entry(caller).or_default().extend(apps);
    }
    callees
        .into_iter()
        .filter_map(|(caller, apps)| {
            let mut apps = apps.into_iter();
            match (apps.next(), apps.next()) {
                (Some(app), None) => Some((caller, app)),
                _ => None,
            }
        })
        .collect()
}

/// One profile's application-frame view, `(frame, in_app) -> bytes`. Bytes with no
/// application frame on their stack go to the application function their innermost
/// scripted frame inlines (`hosts`), noted in `inlined` (function → host's name), else
/// stay under their allocation site, marked.
fn app_view(
    agg: &Aggregate,
    hosts: &HashMap<&Frame, &Frame>,
    inlined: &mut HashMap<Frame, String>,
) -> HashMap<(Frame, bool), i64> {
    let mut view: HashMap<(Frame, bool), i64> = agg
        .by_app
        .iter()
        .map(|(frame, bytes)| ((frame.clone(), true), *bytes))
        .collect();
    for ((site, host), bytes) in &agg.no_app {
        let key = match host.as_ref().and_then(|h| Some((h, *hosts.get(h)?))) {
            Some((host, app)) => {
                inlined
                    .entry(app.clone())
                    .or_insert_with(|| host.function.clone());
                (app.clone(), true)
            }
            None => (site.clone(), false),
        };
        *view.entry(key).or_default() += bytes;
    }
    view
}

/// Keys of either map, each once.
fn keys<'a, K: Eq + std::hash::Hash, V>(
    a: &'a HashMap<K, V>,
    b: &'a HashMap<K, V>,
) -> impl Iterator<Item = &'a K> {
    a.keys().chain(b.keys().filter(|k| !a.contains_key(*k)))
}
