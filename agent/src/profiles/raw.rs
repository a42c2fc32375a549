//! Reading jemalloc's raw `prof.dump` file (`heap_v2/<period>` text): the sampled stacks
//! through `pprof_util::parse_jeheap`, the object counts beside them (which that parser
//! drops), and the `MAPPED_LIBRARIES:` section, which is the worker's `/proc/self/maps` at
//! dump time and lets us symbolize after the worker has exited; after it, from a CPython
//! worker, the native probe's `PYTHON_FRAMES:` table of the code objects its stacks name
//! (`heapwarden_protocol::python_frames`).

use std::collections::HashMap;
use std::path::PathBuf;

use heapwarden_protocol::python_frames;

use pprof_util::{Mapping, StackProfile};

/// One line of the worker's memory map that is backed by a file.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedFile {
    pub start: u64,
    pub end: u64,
    /// Offset into the file of `start`.
    pub file_offset: u64,
    pub path: PathBuf,
    /// The file's inode when mapped: a different inode at `path` now means the file was
    /// replaced (a redeploy, a rebuild) and must not be used to name these addresses.
    pub inode: u64,
    /// The file was replaced or removed after the worker mapped it (e.g. a redeploy).
    pub deleted: bool,
}

impl MappedFile {
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// A parsed raw dump: stacks (leaf first) with unbiased bytes and objects, and mappings.
#[derive(Debug, Default)]
pub struct RawDump {
    /// jemalloc's mean sampling interval in bytes (`heap_v2/524288`).
    pub period: u64,
    pub stacks: Vec<RawStack>,
    pub mappings: Vec<MappedFile>,
    /// CPython code objects by the index the stacks' Python frames carry.
    pub python_codes: HashMap<usize, PythonCode>,
}

/// A Python function, as the native probe read it from its code object.
#[derive(Debug, Clone, PartialEq)]
pub struct PythonCode {
    /// `co_qualname` (`Class.method`, `remember_order`).
    pub function: String,
    /// `co_filename`.
    pub file: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RawStack {
    /// Return addresses, leaf (the allocator) first.
    pub addrs: Vec<u64>,
    pub bytes: f64,
    pub objects: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("not a jemalloc heap_v2 dump (first line {first_line:?})")]
    NotHeapV2 { first_line: String },
    #[error("jemalloc dump is malformed: {0}")]
    Parse(String),
}

/// Parses a whole raw dump held in memory.
pub fn parse(text: &str) -> Result<RawDump, RawError> {
    let first_line = text.lines().next().unwrap_or("");
    let period: u64 = first_line
        .strip_prefix("heap_v2/")
        .and_then(|p| p.trim().parse().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| RawError::NotHeapV2 {
            first_line: first_line.chars().take(60).collect(),
        })?;
    let section = format!("\n{}\n", python_frames::SECTION);
    let (text, python_part) = text.split_once(&section).unwrap_or((text, ""));
    let (stack_part, maps_part) = match text.split_once("\nMAPPED_LIBRARIES:\n") {
        Some((stacks, maps)) => (stacks, maps),
        None => (text, ""),
    };
    let mappings = parse_maps(maps_part);
    let jeheap_mappings: Vec<Mapping> = mappings.iter().map(to_pprof_util_mapping).collect();
    let profile = pprof_util::parse_jeheap(stack_part.as_bytes(), Some(&jeheap_mappings))
        .map_err(|e| RawError::Parse(format!("{e:#}")))?;
    let counts = object_counts(stack_part, period as f64);
    Ok(RawDump {
        period,
        stacks: zip_counts(&profile, &counts)?,
        mappings,
        python_codes: parse_python_codes(python_part),
    })
}

/// `index<TAB>qualname<TAB>file` lines; a malformed line is skipped (its frames then
/// show as unnamed addresses).
fn parse_python_codes(text: &str) -> HashMap<usize, PythonCode> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, '\t');
            let index = fields.next()?.parse().ok()?;
            let function = fields.next()?.to_string();
            let file = fields.next().unwrap_or_default().to_string();
            Some((index, PythonCode { function, file }))
        })
        .collect()
}

/// `parse_jeheap` reverses each stack to root-first; we keep leaf-first, as in the file.
fn zip_counts(profile: &StackProfile, counts: &[f64]) -> Result<Vec<RawStack>, RawError> {
    if profile.stacks.len() != counts.len() {
        return Err(RawError::Parse(format!(
            "{} stacks but {} weights",
            profile.stacks.len(),
            counts.len()
        )));
    }
    Ok(profile
        .stacks
        .iter()
        .zip(counts)
        .map(|((stack, _), objects)| RawStack {
            addrs: stack.addrs.iter().rev().map(|a| *a as u64).collect(),
            bytes: stack.weight,
            objects: *objects,
        })
        .collect())
}

/// The sampled object count of each stack, unbiased the way jeprof (and `parse_jeheap`
/// for bytes) does it: both figures scale by 1 / (1 - e^(-mean size / period)).
fn object_counts(stack_part: &str, period: f64) -> Vec<f64> {
    let mut counts = Vec::new();
    let mut in_stack = false;
    for line in stack_part.lines() {
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        match words.as_slice() {
            ["@", ..] => in_stack = true,
            ["t*:", objs, bytes, ..] if in_stack => {
                in_stack = false;
                let objs: f64 = objs.trim_end_matches(':').parse().unwrap_or(0.0);
                let bytes: f64 = bytes.parse().unwrap_or(0.0);
                let scale = if objs > 0.0 {
                    1.0 / (1.0 - (-(bytes / objs) / period).exp())
                } else {
                    1.0
                };
                counts.push(objs * scale);
            }
            _ => {}
        }
    }
    counts
}

/// Parses `/proc/PID/maps` lines, keeping only file-backed mappings.
pub fn parse_maps(text: &str) -> Vec<MappedFile> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<MappedFile> {
    let line = crate::procfs::parse_maps_line(line)?;
    if line.inode == 0 || !line.path.starts_with('/') {
        return None; // anonymous, [heap], [stack], [vdso]...
    }
    let (path, deleted) = match line.path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (line.path, false),
    };
    Some(MappedFile {
        start: line.start,
        end: line.end,
        file_offset: line.offset,
        path: PathBuf::from(path),
        inode: line.inode,
        deleted,
    })
}

fn to_pprof_util_mapping(m: &MappedFile) -> Mapping {
    Mapping {
        memory_start: m.start as usize,
        memory_end: m.end as usize,
        memory_offset: m.file_offset as usize,
        file_offset: m.file_offset,
        pathname: m.path.clone(),
        build_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SMALL_DUMP: &str = "heap_v2/524288\n  t*: 3: 3145728 [0: 0]\n  t0: 3: 3145728 [0: 0]\n\
@ 0x1010 0x2020 0x3030\n  t*: 2: 2097152 [0: 0]\n  t0: 2: 2097152 [0: 0]\n\
@ 0x1010 0x4040\n  t*: 1: 1048576 [0: 0]\n  t0: 1: 1048576 [0: 0]\n\n\
MAPPED_LIBRARIES:\n\
00001000-00005000 r-xp 00000000 fe:00 123                        /opt/app/bin/worker\n\
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 \n\
7f0000002000-7f0000003000 r-xp 00002000 fe:00 77                 /usr/lib/lib with space.so (deleted)\n";

    #[test]
    fn stacks_keep_leaf_first_and_unbias_bytes_and_objects() {
        let dump = parse(SMALL_DUMP).expect("parses");
        assert_eq!(dump.period, 524288);
        assert_eq!(dump.stacks.len(), 2);
        assert_eq!(dump.stacks[0].addrs, vec![0x1010, 0x2020, 0x3030]);
        // Mean size 1 MiB at a 512 KiB period: scale = 1 / (1 - e^-2) ≈ 1.1565.
        let scale = 1.0 / (1.0 - (-2.0f64).exp());
        assert!((dump.stacks[0].bytes - 2097152.0 * scale).abs() < 1.0);
        assert!((dump.stacks[0].objects - 2.0 * scale).abs() < 1e-9);
    }

    #[test]
    fn maps_keep_file_backed_lines_with_spaces_and_deleted_marker() {
        let dump = parse(SMALL_DUMP).expect("parses");
        assert_eq!(dump.mappings.len(), 2);
        assert_eq!(dump.mappings[0].path, PathBuf::from("/opt/app/bin/worker"));
        assert!(dump.mappings[0].contains(0x1010));
        let lib = &dump.mappings[1];
        assert_eq!(lib.path, PathBuf::from("/usr/lib/lib with space.so"));
        assert!(lib.deleted);
        assert_eq!(lib.file_offset, 0x2000);
        assert_eq!(lib.inode, 77);
    }

    #[test]
    fn python_frames_and_their_code_table_are_read() {
        let frame = python_frames::encode(7, 30);
        let text = format!(
            "heap_v2/524288\n  t*: 1: 1048576 [0: 0]\n\
@ 0x1010 {frame:#x} 0x2020\n  t*: 1: 1048576 [0: 0]\n\n\
MAPPED_LIBRARIES:\n\
00001000-00005000 r-xp 00000000 fe:00 123                        /usr/bin/python3.11\n\
\nPYTHON_FRAMES:\n7\tremember_order\t/srv/shop.py\nnot a line\n"
        );
        let dump = parse(&text).expect("parses");
        assert_eq!(dump.stacks[0].addrs, vec![0x1010, frame, 0x2020]);
        assert_eq!(dump.mappings.len(), 1);
        assert_eq!(
            dump.python_codes.get(&7),
            Some(&PythonCode {
                function: "remember_order".into(),
                file: "/srv/shop.py".into()
            })
        );
        assert_eq!(dump.python_codes.len(), 1);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(parse(""), Err(RawError::NotHeapV2 { .. })));
        assert!(matches!(parse("hello\n"), Err(RawError::NotHeapV2 { .. })));
        assert!(parse("heap_v2/524288\n@ 0xzz\n t*: 1: 2 [0: 0]\n").is_err());
        assert!(parse("heap_v2/524288\n@ 0x10\n").is_err());
    }
}
