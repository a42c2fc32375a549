//! Raw jemalloc dump → symbolized, gzipped pprof. `convert` does the work in the calling
//! process; the agent calls `convert_in_helper`, which runs the same code in a
//! short-lived `heapwarden __convert-profile` child, because parsing a large binary's
//! DWARF costs tens of MB that would otherwise stay in the agent's heap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use heapwarden_protocol::python_frames;
use serde::{Deserialize, Serialize};

use super::error::ProfileError;
use super::pprof::{self, StringTable};
use super::raw::{self, RawDump};
use super::symbolize::{self, Frame, Resolved, SymbolSources};
use super::trim::first_application_frame;

/// Raw dumps are a few hundred KB; anything past this is not one of ours.
const MAX_RAW_BYTES: u64 = 256 * 1024 * 1024;
/// How long the helper may take before it is killed (a 200 MB binary takes ~1 s).
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(60);
/// The helper's address space (`RLIMIT_AS`): a conversion takes ~50 MiB, symbolisation
/// maps the worker's ELF files; a hostile input fails with an allocation error instead
/// of taking the machine's memory.
pub const HELPER_MAX_ADDRESS_SPACE: u64 = 2 << 30;
/// The helper's CPU seconds (`RLIMIT_CPU`, soft: SIGXCPU ends it), under the wall-clock
/// [`HELPER_TIMEOUT`] the agent also enforces.
pub const HELPER_MAX_CPU_SECONDS: u64 = 50;

/// What a conversion produced; printed as JSON by the helper, parsed by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvertSummary {
    pub samples: usize,
    pub locations: usize,
    pub functions: usize,
    /// Call sites no file could name (shown as bare addresses in pprof).
    pub unsymbolized: usize,
    /// Estimated live heap bytes and objects (unbiased from the sample).
    pub total_bytes: i64,
    pub total_objects: i64,
    pub raw_bytes: u64,
    pub out_bytes: u64,
    pub elapsed_ms: u64,
    /// Peak RSS of the process that converted (VmHWM), set by the helper process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_kib: Option<u64>,
}

/// This process's peak resident set size (`VmHWM` in `/proc/self/status`).
pub(crate) fn own_peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Converts `raw` into a pprof `.pb.gz` at `out` (written 0600, atomically).
pub fn convert(raw: &Path, out: &Path, pid: Option<u32>) -> Result<ConvertSummary, ProfileError> {
    convert_with_exe(raw, out, pid, None)
}

/// [`convert`] with an explicit path for the worker's executable.
pub fn convert_with_exe(
    raw_path: &Path,
    out: &Path,
    pid: Option<u32>,
    exe: Option<&Path>,
) -> Result<ConvertSummary, ProfileError> {
    let started = Instant::now();
    let read_err = |source| ProfileError::Read {
        path: raw_path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(raw_path).map_err(read_err)?;
    if meta.len() > MAX_RAW_BYTES {
        return Err(ProfileError::RawTooLarge {
            path: raw_path.to_path_buf(),
            bytes: meta.len(),
            limit: MAX_RAW_BYTES,
        });
    }
    let text = std::fs::read_to_string(raw_path).map_err(read_err)?;
    let dump = raw::parse(&text).map_err(|source| ProfileError::Raw {
        path: raw_path.to_path_buf(),
        source,
    })?;
    let sources = SymbolSources {
        exe: exe.map(Path::to_path_buf),
        pid,
    };
    let dumped_at = meta.modified().unwrap_or_else(|_| SystemTime::now());
    let (profile, mut summary) = build_profile(&dump, &sources, dumped_at, pid);
    let bytes = pprof::encode_gz(&profile).map_err(|source| ProfileError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    write_private(out, &bytes)?;
    summary.raw_bytes = meta.len();
    summary.out_bytes = bytes.len() as u64;
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// Writes `bytes` to a sibling temp file created 0600, then renames it over `out`, so a
/// reader never sees half a profile.
pub(crate) fn write_private(out: &Path, bytes: &[u8]) -> Result<(), ProfileError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let write_err = |source| ProfileError::Write {
        path: out.to_path_buf(),
        source,
    };
    let mut tmp_name = out.as_os_str().to_owned();
    tmp_name.push(".part");
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

/// Tables being built: functions keyed by (name, file), locations by (address, frames
/// trimmed off its inner end).
#[derive(Default)]
struct Tables {
    strings: StringTable,
    functions: HashMap<(String, String), u64>,
    locations: HashMap<(u64, usize), u64>,
    profile: pprof::Profile,
}

impl Tables {
    fn function_id(&mut self, frame: &Frame) -> u64 {
        let key = (frame.function.clone(), frame.file.clone());
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let name = self.strings.intern(&frame.function);
        let filename = self.strings.intern(&frame.file);
        self.profile.function.push(pprof::Function {
            id,
            name,
            system_name: name,
            filename,
        });
        self.functions.insert(key, id);
        id
    }

    fn location_id(&mut self, addr: u64, skip: usize, resolved: &Resolved) -> u64 {
        if let Some(&id) = self.locations.get(&(addr, skip)) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        let line = resolved.frames[skip.min(resolved.frames.len())..]
            .iter()
            .map(|frame| pprof::Line {
                function_id: self.function_id(frame),
                line: i64::from(frame.line),
            })
            .collect();
        self.profile.location.push(pprof::Location {
            id,
            mapping_id: resolved.mapping.map_or(0, |m| m as u64 + 1),
            address: addr,
            line,
        });
        self.locations.insert((addr, skip), id);
        id
    }
}

fn build_profile(
    dump: &RawDump,
    sources: &SymbolSources,
    dumped_at: SystemTime,
    pid: Option<u32>,
) -> (pprof::Profile, ConvertSummary) {
    // Stacks hold return addresses; the call instruction is the byte before. A CPython
    // worker's Python frames are not addresses (`python_frames`) and are named from the
    // dump's own table.
    let call_site = |a: u64| a.saturating_sub(1);
    let is_python = |a: &u64| python_frames::decode(*a).is_some();
    let mut unique: Vec<u64> = dump
        .stacks
        .iter()
        .flat_map(|s| {
            s.addrs
                .iter()
                .filter(|a| !is_python(a))
                .map(|a| call_site(*a))
        })
        .collect();
    unique.sort_unstable();
    unique.dedup();
    let resolved = symbolize::resolve(&unique, &dump.mappings, sources);
    let python = python_locations(dump);
    let empty = Resolved::default();

    let mut t = Tables::default();
    let mut total_bytes = 0i64;
    let mut total_objects = 0i64;
    for stack in &dump.stacks {
        // Python frames (innermost first) go above the C frames: the function, file and
        // line a Python developer reads, with the interpreter's C stack below them.
        let (python_frames, c_frames): (Vec<u64>, Vec<u64>) =
            stack.addrs.iter().partition(|a| is_python(a));
        let mut location_id: Vec<u64> = python_frames
            .iter()
            .map(|entry| t.location_id(*entry, 0, python.get(entry).unwrap_or(&empty)))
            .collect();
        let addrs: Vec<u64> = c_frames.iter().map(|a| call_site(*a)).collect();
        // Flatten to (index in stack, frame index within it), leaf first, so trimming
        // works per function even when allocator glue is inlined into the caller.
        let mut flat: Vec<(usize, usize, &str, &str)> = Vec::new();
        for (pos, addr) in addrs.iter().enumerate() {
            let r = resolved.get(addr).unwrap_or(&empty);
            if r.frames.is_empty() {
                flat.push((pos, 0, "", ""));
            }
            for (i, f) in r.frames.iter().enumerate() {
                flat.push((pos, i, f.function.as_str(), f.file.as_str()));
            }
        }
        let names: Vec<(&str, &str)> = flat.iter().map(|f| (f.2, f.3)).collect();
        let keep_from = first_application_frame(&names);
        if let Some(&(first_pos, skip, _, _)) = flat.get(keep_from) {
            for (pos, &addr) in addrs.iter().enumerate().skip(first_pos) {
                let r = resolved.get(&addr).unwrap_or(&empty);
                let skip = if pos == first_pos { skip } else { 0 };
                location_id.push(t.location_id(addr, skip, r));
            }
        }
        let bytes = stack.bytes.round() as i64;
        let objects = stack.objects.round() as i64;
        total_bytes += bytes;
        total_objects += objects;
        t.profile.sample.push(pprof::Sample {
            location_id,
            value: vec![objects, bytes],
        });
    }
    finish_tables(&mut t, dump, dumped_at, pid);
    let unsymbolized = resolved.values().filter(|r| r.frames.is_empty()).count();
    let summary = ConvertSummary {
        samples: t.profile.sample.len(),
        locations: t.profile.location.len(),
        functions: t.profile.function.len(),
        unsymbolized,
        total_bytes,
        total_objects,
        raw_bytes: 0,
        out_bytes: 0,
        elapsed_ms: 0,
        peak_rss_kib: None,
    };
    let mut profile = t.profile;
    profile.string_table = t.strings.finish();
    (profile, summary)
}

/// Each Python frame entry of the dump's stacks as a location of one function (no
/// mapping: it is not an address); an entry whose code object the table lacks stays
/// unnamed.
fn python_locations(dump: &RawDump) -> HashMap<u64, Resolved> {
    let mut locations = HashMap::new();
    for entry in dump.stacks.iter().flat_map(|s| s.addrs.iter()) {
        let Some((index, line)) = python_frames::decode(*entry) else {
            continue;
        };
        let Some(code) = dump.python_codes.get(&index) else {
            continue;
        };
        locations.entry(*entry).or_insert_with(|| Resolved {
            mapping: None,
            frames: vec![Frame {
                function: code.function.clone(),
                file: code.file.clone(),
                line,
            }],
        });
    }
    locations
}

/// Mappings, sample types and header fields.
fn finish_tables(t: &mut Tables, dump: &RawDump, dumped_at: SystemTime, pid: Option<u32>) {
    let symbolized: std::collections::HashSet<u64> = t
        .profile
        .location
        .iter()
        .filter(|l| !l.line.is_empty())
        .map(|l| l.mapping_id)
        .collect();
    for (i, m) in dump.mappings.iter().enumerate() {
        let id = i as u64 + 1;
        let has = symbolized.contains(&id);
        let filename = t.strings.intern(&m.path.display().to_string());
        t.profile.mapping.push(pprof::Mapping {
            id,
            memory_start: m.start,
            memory_limit: m.end,
            file_offset: m.file_offset,
            filename,
            build_id: 0,
            has_functions: has,
            has_filenames: has,
            has_line_numbers: has,
            has_inline_frames: has,
        });
    }
    let objects = t.strings.intern("inuse_objects");
    let count = t.strings.intern("count");
    let space = t.strings.intern("inuse_space");
    let bytes = t.strings.intern("bytes");
    // inuse_space last and default: `go tool pprof -top` then ranks by bytes.
    t.profile.sample_type = vec![
        pprof::ValueType {
            r#type: objects,
            unit: count,
        },
        pprof::ValueType {
            r#type: space,
            unit: bytes,
        },
    ];
    t.profile.default_sample_type = space;
    let period_type = t.strings.intern("space");
    t.profile.period_type = Some(pprof::ValueType {
        r#type: period_type,
        unit: bytes,
    });
    t.profile.period = dump.period as i64;
    t.profile.time_nanos = dumped_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let comment = match pid {
        Some(pid) => format!("heapwarden: jemalloc heap profile of pid {pid}"),
        None => "heapwarden: jemalloc heap profile".to_owned(),
    };
    t.profile.comment = vec![t.strings.intern(&comment)];
}

/// Runs the conversion in a `heapwarden __convert-profile` child of this executable.
pub async fn convert_in_helper(
    raw: &Path,
    out: &Path,
    pid: Option<u32>,
) -> Result<ConvertSummary, ProfileError> {
    let exe = std::env::current_exe().map_err(|source| ProfileError::HelperSpawn {
        exe: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    convert_with_helper(&exe, raw, out, pid, HELPER_TIMEOUT).await
}

/// Converts a Node worker's V8 sampling profile in the same kind of helper process (the
/// file is the worker's word: a hostile one costs the helper, never the agent).
pub async fn convert_v8_in_helper(raw: &Path, out: &Path) -> Result<ConvertSummary, ProfileError> {
    let exe = std::env::current_exe().map_err(|source| ProfileError::HelperSpawn {
        exe: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    run_helper(&exe, raw, out, None, Some("v8-sampling"), HELPER_TIMEOUT).await
}

/// Caps the helper's own address space and CPU time, first thing in the helper process
/// (the limits are inherited by nothing: it starts no processes).
pub fn limit_helper_resources() {
    use nix::sys::resource::{Resource, setrlimit};
    let _ = setrlimit(
        Resource::RLIMIT_AS,
        HELPER_MAX_ADDRESS_SPACE,
        HELPER_MAX_ADDRESS_SPACE,
    );
    let _ = setrlimit(
        Resource::RLIMIT_CPU,
        HELPER_MAX_CPU_SECONDS,
        HELPER_MAX_CPU_SECONDS + 5,
    );
}

/// [`convert_in_helper`] with the helper binary and deadline given (tests and benches run
/// from binaries that are not `heapwarden`).
pub async fn convert_with_helper(
    helper_exe: &Path,
    raw: &Path,
    out: &Path,
    pid: Option<u32>,
    timeout: Duration,
) -> Result<ConvertSummary, ProfileError> {
    run_helper(helper_exe, raw, out, pid, None, timeout).await
}

async fn run_helper(
    helper_exe: &Path,
    raw: &Path,
    out: &Path,
    pid: Option<u32>,
    format: Option<&str>,
    timeout: Duration,
) -> Result<ConvertSummary, ProfileError> {
    let mut cmd = tokio::process::Command::new(helper_exe);
    cmd.arg("__convert-profile");
    if let Some(format) = format {
        cmd.arg("--format").arg(format);
    }
    cmd.arg("--raw")
        .arg(raw)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(pid) = pid {
        cmd.arg("--pid").arg(pid.to_string());
    }
    let child = cmd.spawn().map_err(|source| ProfileError::HelperSpawn {
        exe: helper_exe.to_path_buf(),
        source,
    })?;
    // On timeout the future (and the child with it) is dropped: kill_on_drop kills it.
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| ProfileError::HelperTimeout {
            raw: raw.to_path_buf(),
            timeout,
        })?
        .map_err(|source| ProfileError::HelperSpawn {
            exe: helper_exe.to_path_buf(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let failed = |why: String| ProfileError::HelperFailed {
        raw: raw.to_path_buf(),
        status: output.status.to_string(),
        stderr: why,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(failed(stderr.trim().chars().take(500).collect()));
    }
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).map_err(|e| failed(format!("unreadable summary {line:?}: {e}")))
}
