//! `[pool] probe = "native"`: the preload library (`libheapwarden_preload.so`, built by
//! this workspace's `heapwarden-preload` crate) goes into every worker's `LD_PRELOAD`,
//! where it makes jemalloc the allocator and answers the control channel like the Rust
//! probe. Decided once at start and logged in one line: which library, or why the
//! workers run without it (library missing or not loadable, program statically linked,
//! set-user-ID or with file capabilities, built for another machine).
//!
//! The agent passes the library as `HEAPWARDEN_PRELOAD`; the trampoline adds it to
//! `LD_PRELOAD` only for the exec of the worker command, so the trampoline itself (the
//! agent's binary) never loads it. For CPython, `PYTHONMALLOC=malloc` sends Python's
//! objects through `malloc` (and so through jemalloc) instead of pymalloc's arenas.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use slog::{Logger, info, warn};

use super::AttachPlan;
use super::program::{self, ElfKind, Program};
use crate::config::PoolConfig;

/// The library's file name, as cargo names a `cdylib` called `heapwarden-preload`.
pub const LIBRARY_NAME: &str = "libheapwarden_preload.so";
/// Read by the trampoline, which prepends it to `LD_PRELOAD` for the worker command.
pub const PRELOAD_ENV: &str = "HEAPWARDEN_PRELOAD";
/// Installed locations, after the agent's own directory (a build tree or `bin/`).
const INSTALLED_DIRS: [&str; 3] = [
    "../lib/heapwarden",
    "/usr/local/lib/heapwarden",
    "/usr/lib/heapwarden",
];

/// Where to look for the library: next to the agent's executable (`target/release/`),
/// then `<prefix>/lib/heapwarden/` for an agent installed in `<prefix>/bin/`, then the
/// usual system prefixes.
pub fn search_path(agent_exe: &Path) -> Vec<PathBuf> {
    let dir = agent_exe.parent().unwrap_or(Path::new("/"));
    std::iter::once(dir.join(LIBRARY_NAME))
        .chain(
            INSTALLED_DIRS
                .iter()
                .map(|d| dir.join(d).join(LIBRARY_NAME)),
        )
        .collect()
}

/// The first candidate that is a shared object of this machine's kind.
fn locate(candidates: &[PathBuf]) -> Option<(PathBuf, ElfKind)> {
    candidates.iter().find_map(|path| {
        let kind = program::elf_kind_of(path)?;
        kind.shared_object.then(|| (path.clone(), kind))
    })
}

/// Why the library cannot go into `program`, if it cannot.
pub fn unsupported(program: &Program, library: ElfKind) -> Option<String> {
    if let Some(privilege) = program.privileged {
        return Some(format!(
            "the program is {privilege}, so the dynamic linker ignores LD_PRELOAD"
        ));
    }
    match program.elf {
        Some(elf) if !elf.dynamic => {
            Some("the program is statically linked (no ELF interpreter)".into())
        }
        Some(elf) if elf.machine != library.machine => Some(format!(
            "the program is built for ELF machine {}, the library for {}",
            elf.machine, library.machine
        )),
        Some(_) => None,
        None if program::read_magic(program.binary()) == Some(*b"\x7fELF") => {
            Some("the program is not a 64-bit ELF".into())
        }
        // Not an ELF we can read (an unknown script chain): let the loader decide.
        None => None,
    }
}

/// The environment that attaches the native probe to `argv`'s workers, or none.
pub fn plan(pool: &PoolConfig, argv: &[OsString], log: &Logger) -> AttachPlan {
    if pool.command.is_empty() {
        // Two probes on one channel would garble it; the demo has the Rust one.
        warn!(
            log,
            "The demo service links heapwarden-probes itself; the native probe is for programs that do not, so it is not added."
        );
        return AttachPlan::default();
    }
    let agent_exe = std::env::current_exe().unwrap_or_default();
    let candidates = search_path(&agent_exe);
    let Some((library, library_kind)) = locate(&candidates) else {
        let searched: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        warn!(log, "The native probe library was not found; workers run without heap figures from it.";
            "library" => LIBRARY_NAME, "searched" => searched.join(":"));
        return AttachPlan::default();
    };
    let cwd = pool
        .cwd
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    let path_var: Option<OsString> = match pool.env.get("PATH") {
        Some(path) => Some(path.into()),
        None => std::env::var_os("PATH"),
    };
    let argv0 = argv.first().map(OsString::as_os_str).unwrap_or_default();
    let program = program::inspect(argv0, path_var.as_deref(), &cwd);
    let shown = |p: &Option<Program>| match p {
        Some(p) => p.binary().display().to_string(),
        None => argv0.to_string_lossy().into_owned(),
    };
    if let Some(reason) = program.as_ref().and_then(|p| unsupported(p, library_kind)) {
        warn!(log, "The native probe cannot be loaded into the worker program; workers run without it.";
            "program" => shown(&program), "reason" => reason);
        return AttachPlan::default();
    }
    let python = program.as_ref().is_some_and(Program::is_python)
        || Path::new(argv0)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("python"));
    let mut env = vec![(PRELOAD_ENV.to_string(), library.display().to_string())];
    if python {
        env.push(("PYTHONMALLOC".into(), "malloc".into()));
    }
    info!(log, "Workers get the native heap probe.";
        "library" => library.display().to_string(), "program" => shown(&program),
        "python_malloc" => python);
    AttachPlan { env }
}
