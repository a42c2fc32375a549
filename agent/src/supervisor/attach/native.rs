//! `[pool] probe = "native"`: the preload library (`libheapwarden_preload.so`, the
//! `heapwarden-preload` crate in `probes/preload/`, which `cargo build` at the root puts
//! next to the agent) goes into every worker's `LD_PRELOAD`,
//! where it makes jemalloc the allocator and answers the control channel like the Rust
//! probe. The plan says why not when it cannot: library missing or not loadable, program
//! statically linked, set-user-ID or with file capabilities, built for another machine,
//! or the demo (which links the Rust probe itself).
//!
//! The agent passes the library as `HEAPWARDEN_PRELOAD`; `spawn` turns it into
//! `LD_PRELOAD` in the environment the worker command is exec'd with, so the agent's own
//! image (the forked child before its exec) never loads it. For CPython, `PYTHONMALLOC=malloc` sends Python's
//! objects through `malloc` (and so through jemalloc) instead of pymalloc's arenas.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::AttachInput;
use super::program::{self, ElfKind, Program};

/// The library's file name, as cargo names a `cdylib` called `heapwarden-preload`.
pub const LIBRARY_NAME: &str = "libheapwarden_preload.so";
/// Read by `spawn`, which prepends it to `LD_PRELOAD` for the worker command.
pub const PRELOAD_ENV: &str = "HEAPWARDEN_PRELOAD";
/// Installed locations, after the agent's own directory (a build tree or `bin/`).
const INSTALLED_DIRS: [&str; 3] = [
    "../lib/heapwarden",
    "/usr/local/lib/heapwarden",
    "/usr/lib/heapwarden",
];

/// What the native plan needs beyond the command, found by `attach::prepare`.
#[derive(Debug, Clone)]
pub struct NativeSetup<'a> {
    pub agent_exe: &'a Path,
    /// The library found by [`locate`], with its ELF kind.
    pub library: Option<&'a (PathBuf, ElfKind)>,
    /// The workers' working directory (`pool.cwd`, else the agent's).
    pub cwd: &'a Path,
    /// The agent's `PATH`, which workers inherit unless `pool.env` sets one.
    pub agent_path_var: Option<OsString>,
}

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

/// The first candidate that is an ELF shared object.
pub fn locate(candidates: &[PathBuf]) -> Option<(PathBuf, ElfKind)> {
    candidates.iter().find_map(|path| {
        let kind = program::elf_kind_of(path)?;
        kind.shared_object.then(|| (path.clone(), kind))
    })
}

/// Why the library cannot go into `program`, if it cannot.
pub fn unsupported(program: &Program, library: ElfKind) -> Option<String> {
    if let Some(privilege) = program.privileged {
        return Some(format!(
            "{} is {privilege}, so the dynamic linker ignores LD_PRELOAD",
            program.binary().display()
        ));
    }
    let binary = program.binary().display();
    match program.elf {
        Some(elf) if !elf.dynamic => Some(format!(
            "{binary} is statically linked (no ELF interpreter), so LD_PRELOAD cannot load the native probe"
        )),
        Some(elf) if elf.machine != library.machine => Some(format!(
            "{binary} is built for ELF machine {}, the library for {}",
            elf.machine, library.machine
        )),
        Some(_) => None,
        None if program::read_magic(program.binary()) == Some(*b"\x7fELF") => {
            Some(format!("{binary} is not a 64-bit ELF"))
        }
        // Not an ELF we can read (an unknown script chain): let the loader decide.
        None => None,
    }
}

/// The env that loads the preload library into `input.argv`'s workers, or why not.
pub fn plan(input: &AttachInput<'_>) -> Result<Vec<(String, String)>, String> {
    let setup = input
        .native
        .as_ref()
        .ok_or("the native probe library was not looked for")?;
    let argv0 = input
        .argv
        .first()
        .map(OsString::as_os_str)
        .unwrap_or_default();
    if Path::new(argv0) == setup.agent_exe && input.argv.get(1).is_some_and(|a| a == "demo") {
        // Two probes on one channel would garble it; the demo has the Rust one.
        return Err(
            "the demo service links heapwarden-probes itself; the native probe is for programs that do not"
                .into(),
        );
    }
    let Some((library, library_kind)) = setup.library else {
        let searched: Vec<String> = search_path(setup.agent_exe)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Err(format!(
            "the native probe library {LIBRARY_NAME} was not found (searched {})",
            searched.join(", ")
        ));
    };
    let path_var: Option<OsString> = match input.pool_env.get("PATH") {
        Some(path) => Some(path.into()),
        None => setup.agent_path_var.clone(),
    };
    let program = program::inspect(argv0, path_var.as_deref(), setup.cwd);
    if let Some(reason) = program.as_ref().and_then(|p| unsupported(p, *library_kind)) {
        return Err(reason);
    }
    // Not by the command's name (the demo, any Rust worker): by what the ELF carries.
    if let Some(binary) = program.as_ref().map(Program::binary)
        && program::links_rust_probe(binary)
    {
        return Err(format!(
            "{} links heapwarden-probes itself (the Rust probe); two probes on one channel would garble it, and the native probe is for programs that do not",
            binary.display()
        ));
    }
    let python = program.as_ref().is_some_and(Program::is_python)
        || Path::new(argv0)
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("python"));
    let mut env = vec![(PRELOAD_ENV.to_string(), library.display().to_string())];
    if python && !input.pool_env.contains_key("PYTHONMALLOC") {
        env.push(("PYTHONMALLOC".into(), "malloc".into()));
    }
    Ok(env)
}
