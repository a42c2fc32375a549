//! Symbolization of a worker's addresses outside the worker, with `blazesym`: each address
//! is turned into a file offset through the mapping it falls in (from the dump's
//! `MAPPED_LIBRARIES` section) and resolved against that file's ELF symbols and DWARF line
//! tables. Working from files rather than `/proc/PID` means a profile still symbolizes
//! after the worker exited; the live pid is only a fallback for files that were replaced
//! on disk since the worker mapped them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};

use super::raw::MappedFile;

/// One frame of a resolved address: an inlined function or the function it sits in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Demangled, without the Rust hash suffix.
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// An address with its frames, innermost (most deeply inlined) first, as pprof wants.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub mapping: Option<usize>,
    pub frames: Vec<Frame>,
}

/// Where to find the worker's files.
#[derive(Debug, Clone, Default)]
pub struct SymbolSources {
    /// Overrides the path of the main executable (the first mapped file).
    pub exe: Option<PathBuf>,
    /// The worker's pid while it is alive: `/proc/PID/exe` and `/proc/PID/root` reach
    /// files deleted or replaced since the worker mapped them.
    pub pid: Option<u32>,
}

/// Resolves every address (already a call-site address: return address minus one).
/// Addresses outside every mapping, or in a file we cannot read, come back frameless.
pub fn resolve(
    addrs: &[u64],
    mappings: &[MappedFile],
    sources: &SymbolSources,
) -> HashMap<u64, Resolved> {
    let main_exe = mappings.first().map(|m| m.path.clone());
    // Group by file, so each ELF is opened and parsed once.
    let mut by_file: HashMap<&Path, (usize, Vec<u64>, Vec<u64>)> = HashMap::new();
    let mut out = HashMap::with_capacity(addrs.len());
    // Mappings sorted by start, each address found by binary search: the worker's list
    // can be long (and hostile), addresses many.
    let mut by_start: Vec<usize> = (0..mappings.len()).collect();
    by_start.sort_by_key(|&i| mappings[i].start);
    for &addr in addrs {
        let after = by_start.partition_point(|&i| mappings[i].start <= addr);
        let mapping = after
            .checked_sub(1)
            .map(|at| by_start[at])
            .filter(|&i| mappings[i].contains(addr));
        out.insert(
            addr,
            Resolved {
                mapping,
                frames: Vec::new(),
            },
        );
        if let Some(i) = mapping {
            let m = &mappings[i];
            let entry = by_file
                .entry(m.path.as_path())
                .or_insert((i, vec![], vec![]));
            entry.1.push(addr);
            entry.2.push(addr - m.start + m.file_offset);
        }
    }
    // Two passes per file: the ELF symbol table names the containing function in full
    // (`<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem`), while DWARF (when
    // present) adds inlined calls and line numbers but, with line-tables-only debug info,
    // only short names.
    let symtab = Symbolizer::new();
    let dwarf = Symbolizer::new();
    for (path, (mapping_index, file_addrs, offsets)) in by_file {
        let is_main = main_exe.as_deref() == Some(path);
        let Some(file) = readable_path(&mappings[mapping_index], is_main, sources) else {
            continue;
        };
        let mut elf = Elf::new(file);
        let with_dwarf = Source::Elf(elf.clone());
        elf.debug_syms = false;
        let names_only = Source::Elf(elf);
        let Ok(detailed) = dwarf.symbolize(&with_dwarf, Input::FileOffset(&offsets)) else {
            continue;
        };
        let names = symtab
            .symbolize(&names_only, Input::FileOffset(&offsets))
            .unwrap_or_default();
        for (i, (addr, sym)) in file_addrs.iter().zip(detailed).enumerate() {
            let full_name = match names.get(i) {
                Some(Symbolized::Sym(s)) => Some(s.name.as_ref()),
                _ => None,
            };
            if let (Symbolized::Sym(sym), Some(slot)) = (sym, out.get_mut(addr)) {
                slot.frames = frames_of(&sym, full_name);
            }
        }
    }
    out
}

fn frames_of(sym: &blazesym::symbolize::Sym<'_>, full_name: Option<&str>) -> Vec<Frame> {
    let code = |info: Option<&blazesym::symbolize::CodeInfo<'_>>| match info {
        Some(info) => (info.to_path().display().to_string(), info.line.unwrap_or(0)),
        None => (String::new(), 0),
    };
    // blazesym lists inlined calls outermost first; pprof wants innermost first.
    let mut frames: Vec<Frame> = sym
        .inlined
        .iter()
        .rev()
        .map(|f| {
            let (file, line) = code(f.code_info.as_ref());
            Frame {
                function: f.name.to_string(),
                file,
                line,
            }
        })
        .collect();
    let (file, line) = code(sym.code_info.as_deref());
    frames.push(Frame {
        function: full_name.unwrap_or(&sym.name).to_string(),
        file,
        line,
    });
    frames
}

/// The path to read for a mapping: the override for the main executable, else the
/// mapped path if it is still the same file (same inode), else the live process's view
/// of it, when that is still the same inode (a reused pid's files are not). A replaced
/// file with no live process gives `None`: no names beat wrong names.
fn readable_path(m: &MappedFile, is_main: bool, sources: &SymbolSources) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    if is_main && let Some(exe) = &sources.exe {
        return Some(exe.clone());
    }
    let same_file =
        std::fs::metadata(&m.path).is_ok_and(|meta| meta.is_file() && meta.ino() == m.inode);
    if !m.deleted && same_file {
        return Some(m.path.clone());
    }
    let pid = sources.pid?;
    let candidates = [
        is_main.then(|| PathBuf::from(format!("/proc/{pid}/exe"))),
        Some(PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            m.start, m.end
        ))),
        Some(Path::new(&format!("/proc/{pid}/root")).join(m.path.strip_prefix("/").ok()?)),
    ];
    // The pid may have been reused since the dump: a file reached through /proc counts
    // only when it is the very file the worker mapped (same inode).
    candidates
        .into_iter()
        .flatten()
        .find(|p| std::fs::metadata(p).is_ok_and(|meta| meta.is_file() && meta.ino() == m.inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(start: u64, end: u64, path: &str, inode: u64) -> MappedFile {
        MappedFile {
            start,
            end,
            file_offset: 0,
            path: PathBuf::from(path),
            inode,
            deleted: false,
        }
    }

    #[test]
    fn addresses_find_their_mapping_by_binary_search_in_a_long_hostile_list() {
        // 50,000 one-page mappings of files that do not exist, listed in reverse, and
        // 50,000 addresses: linear search would be 2.5 billion steps.
        let n = 50_000u64;
        let mappings: Vec<MappedFile> = (0..n)
            .rev()
            .map(|i| {
                mapping(
                    0x10000 + i * 0x2000,
                    0x10000 + i * 0x2000 + 0x1000,
                    "/nonexistent/x.so",
                    1,
                )
            })
            .collect();
        let addrs: Vec<u64> = (0..n).map(|i| 0x10000 + i * 0x2000 + 0x800).collect();
        let started = std::time::Instant::now();
        let out = resolve(&addrs, &mappings, &SymbolSources::default());
        let took = started.elapsed();
        println!("{n} addresses against {n} mappings: {took:?}");
        assert!(took < std::time::Duration::from_secs(20));
        for (i, addr) in addrs.iter().enumerate() {
            let index = out[addr].mapping.expect("mapped");
            assert!(mappings[index].contains(*addr));
            assert_eq!(index, n as usize - 1 - i);
        }
        // Between mappings and past the last one: none.
        let gaps = [0x10000 + 0x1800, 0x10000 + n * 0x2000 + 0x10, 0x10];
        let out = resolve(&gaps, &mappings, &SymbolSources::default());
        assert!(gaps.iter().all(|a| out[a].mapping.is_none()));
    }

    #[test]
    fn a_live_pid_is_trusted_only_for_the_very_file_the_worker_mapped() {
        // This test process stands in for a reused pid: its /proc/self/exe is not the
        // file recorded in the mapping (another inode), so it must not be used.
        let replaced = MappedFile {
            deleted: true,
            ..mapping(0x1000, 0x2000, "/gone/app", 424242)
        };
        let sources = SymbolSources {
            exe: None,
            pid: Some(std::process::id()),
        };
        assert_eq!(readable_path(&replaced, true, &sources), None);
        // The same inode as our own executable: /proc/PID/exe is taken.
        use std::os::unix::fs::MetadataExt;
        let own = std::fs::metadata("/proc/self/exe").unwrap().ino();
        let same = MappedFile {
            deleted: true,
            ..mapping(0x1000, 0x2000, "/gone/app", own)
        };
        let pid = std::process::id();
        assert_eq!(
            readable_path(&same, true, &sources),
            Some(PathBuf::from(format!("/proc/{pid}/exe")))
        );
    }
}
