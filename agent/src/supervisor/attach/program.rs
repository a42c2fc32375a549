//! What the worker command will run, found before it starts: the file `exec` resolves
//! (`PATH` as the exec will see it), through `#!` lines to the ELF the kernel
//! loads, and whether the dynamic linker would honour `LD_PRELOAD` for it (an ELF with
//! an interpreter, not set-user-ID/set-group-ID, without file capabilities).

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, ProgramHeader};

/// The kernel follows at most this many nested `#!` interpreters (BINPRM_MAX_RECURSION).
const MAX_SCRIPT_DEPTH: usize = 4;
/// ELF and program headers sit at the front of the file; reading this much suffices.
const HEADER_BYTES: u64 = 64 * 1024;

/// An ELF file's identity as far as loading a library into it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfKind {
    pub machine: u16,
    pub shared_object: bool,
    /// Has a PT_INTERP segment: the dynamic linker runs first (and reads LD_PRELOAD).
    pub dynamic: bool,
}

/// The worker command as the kernel will run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// Every file on the way, scripts first, the ELF the kernel loads last.
    pub chain: Vec<PathBuf>,
    /// `None` when the last file is not a 64-bit ELF we can read.
    pub elf: Option<ElfKind>,
    /// Why the dynamic linker would run it in secure mode (ignoring LD_PRELOAD).
    pub privileged: Option<&'static str>,
}

impl Program {
    pub fn binary(&self) -> &Path {
        self.chain.last().map_or(Path::new(""), PathBuf::as_path)
    }

    /// Whether any file on the way is a CPython interpreter (`python`, `python3.11`…).
    pub fn is_python(&self) -> bool {
        self.chain.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(b"python"))
        })
    }
}

/// Follows `argv0` the way `execvp` and the kernel would. `path_var` is the worker's
/// `PATH`, `cwd` its working directory. `None` when the command cannot be found (the
/// spawn will then fail and say so itself).
pub fn inspect(argv0: &OsStr, path_var: Option<&OsStr>, cwd: &Path) -> Option<Program> {
    let mut chain = vec![resolve(argv0, path_var, cwd)?];
    for _ in 0..MAX_SCRIPT_DEPTH {
        let current = chain.last()?;
        let head = read_head(current)?;
        let Some(interpreter) = shebang(&head) else {
            break;
        };
        let (interpreter, argument) = interpreter;
        let next = if interpreter.file_name() == Some(OsStr::new("env")) {
            // `#!/usr/bin/env python3`: env runs first, then its command from PATH.
            chain.push(interpreter.clone());
            let command = argument.as_deref().and_then(env_command)?;
            resolve(&command, path_var, cwd)?
        } else {
            interpreter
        };
        chain.push(next);
    }
    let binary = chain.last()?;
    let elf = read_head(binary).as_deref().and_then(elf_kind);
    let privileged = privilege(binary);
    Some(Program {
        chain,
        elf,
        privileged,
    })
}

/// `execvp`'s search: a name with a slash is a path (relative to `cwd`), otherwise the
/// first executable file in `PATH` (empty entries mean `cwd`).
pub fn resolve(name: &OsStr, path_var: Option<&OsStr>, cwd: &Path) -> Option<PathBuf> {
    if name.as_bytes().contains(&b'/') {
        let path = cwd.join(name);
        return is_executable(&path).then_some(path);
    }
    let path_var = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(path_var)
        .map(|dir| cwd.join(dir).join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn read_head(path: &Path) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(HEADER_BYTES)
        .read_to_end(&mut head)
        .ok()?;
    Some(head)
}

/// The interpreter and its optional single argument of a `#!` line, as Linux splits it.
pub(super) fn shebang(head: &[u8]) -> Option<(PathBuf, Option<OsString>)> {
    let line = head.strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let line = line.trim_ascii();
    let split = line.iter().position(|b| b.is_ascii_whitespace());
    let (interpreter, argument) = match split {
        Some(at) => (&line[..at], Some(line[at..].trim_ascii())),
        None => (line, None),
    };
    if interpreter.is_empty() {
        return None;
    }
    let argument = argument
        .filter(|a| !a.is_empty())
        .map(|a| OsStr::from_bytes(a).to_owned());
    Some((PathBuf::from(OsStr::from_bytes(interpreter)), argument))
}

/// The command `env` will run from its argument (`-S python3 -u`, `python3`).
fn env_command(argument: &OsStr) -> Option<OsString> {
    argument
        .as_bytes()
        .split(u8::is_ascii_whitespace)
        .find(|word| !word.is_empty() && !word.starts_with(b"-") && !word.contains(&b'='))
        .map(|word| OsStr::from_bytes(word).to_owned())
}

/// A 64-bit ELF's machine, type and whether it has an interpreter; `None` otherwise.
pub fn elf_kind(head: &[u8]) -> Option<ElfKind> {
    let header = FileHeader64::<object::Endianness>::parse(head).ok()?;
    let endian = header.endian().ok()?;
    let dynamic = header
        .program_headers(endian, head)
        .ok()?
        .iter()
        .any(|segment| segment.p_type(endian) == elf::PT_INTERP);
    Some(ElfKind {
        machine: header.e_machine(endian).0,
        shared_object: header.e_type(endian) == elf::ET_DYN,
        dynamic,
    })
}

/// The first four bytes of `path`.
pub fn read_magic(path: &Path) -> Option<[u8; 4]> {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut magic)
        .ok()?;
    Some(magic)
}

/// Reads `path`'s head and classifies it (for the preload library itself).
/// Whether the ELF at `path` links `heapwarden-probes` (the Rust probe): its `.rodata`
/// holds [`heapwarden_protocol::RUST_PROBE_MARK`]. Files over 1 GiB, or that are not a
/// 64-bit ELF, are taken for programs that do not.
pub fn links_rust_probe(path: &Path) -> bool {
    use object::read::elf::ElfFile64;
    use object::{Object, ObjectSection};
    const MAX_ELF_BYTES: u64 = 1 << 30;
    if std::fs::metadata(path).map_or(true, |m| !m.is_file() || m.len() > MAX_ELF_BYTES) {
        return false;
    }
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let Ok(elf) = ElfFile64::<object::Endianness>::parse(data.as_slice()) else {
        return false;
    };
    let needle = heapwarden_protocol::RUST_PROBE_MARK.as_bytes();
    elf.section_by_name(".rodata")
        .and_then(|section| section.data().ok())
        .is_some_and(|rodata| rodata.windows(needle.len()).any(|w| w == needle))
}

pub fn elf_kind_of(path: &Path) -> Option<ElfKind> {
    read_head(path).as_deref().and_then(elf_kind)
}

/// Set-user-ID, set-group-ID or file capabilities: the kernel sets AT_SECURE and the
/// dynamic linker then ignores LD_PRELOAD paths like ours.
fn privilege(path: &Path) -> Option<&'static str> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    if mode & 0o4000 != 0 {
        return Some("set-user-ID");
    }
    if mode & 0o2000 != 0 {
        return Some("set-group-ID");
    }
    crate::supervisor::spawn::has_file_capabilities(path).then_some("file capabilities")
}
