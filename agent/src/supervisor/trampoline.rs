//! The hidden `__exec-worker` mode. The agent cannot know a child's pid before it
//! exists and must not call `setenv` between fork and exec, so each worker starts as
//! this trampoline, which sets `LISTEN_PID` to its own pid (as sd_listen_fds(3) expects)
//! and execs the real command in place, keeping the pid. It also exports that pid as
//! `HEAPWARDEN_WORKER_PID`: probes claim the control channel only in the process the
//! worker command became (its descendants inherit the env, not the claim). The native
//! probe library (`HEAPWARDEN_PRELOAD`) joins `LD_PRELOAD` here, for the command only,
//! so the trampoline itself never loads it.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use super::attach::native::PRELOAD_ENV;

pub fn exec_worker(argv: Vec<OsString>) -> ExitCode {
    let Some((program, args)) = argv.split_first() else {
        eprintln!("heapwarden: __exec-worker needs a command");
        return ExitCode::from(64);
    };
    let mut command = Command::new(program);
    command.args(args);
    let pid = std::process::id().to_string();
    if std::env::var_os("LISTEN_FDS").is_some() {
        command.env("LISTEN_PID", &pid);
    }
    if std::env::var_os("HEAPWARDEN_CONTROL_FD").is_some() {
        command.env(heapwarden_probes::WORKER_PID_ENV, &pid);
    }
    if let Some(library) = std::env::var_os(PRELOAD_ENV) {
        command.env(
            "LD_PRELOAD",
            with_preload(library, std::env::var_os("LD_PRELOAD")),
        );
        command.env_remove(PRELOAD_ENV);
    }
    // exec only returns on failure.
    let error = command.exec();
    eprintln!(
        "heapwarden: cannot execute worker command {}: {error}",
        program.to_string_lossy()
    );
    // 127: the shell's "command not found", so the supervisor logs a clear exit code.
    ExitCode::from(127)
}

/// `library` first, then whatever the worker's environment already preloads.
fn with_preload(library: OsString, existing: Option<OsString>) -> OsString {
    match existing {
        Some(existing) if !existing.is_empty() => {
            let mut joined = library;
            joined.push(":");
            joined.push(existing);
            joined
        }
        _ => library,
    }
}

#[cfg(test)]
mod tests {
    use super::with_preload;

    #[test]
    fn the_probe_library_goes_first_and_keeps_the_user_preloads() {
        assert_eq!(with_preload("/l/p.so".into(), None), "/l/p.so");
        assert_eq!(with_preload("/l/p.so".into(), Some("".into())), "/l/p.so");
        assert_eq!(
            with_preload("/l/p.so".into(), Some("/x/a.so /x/b.so".into())),
            "/l/p.so:/x/a.so /x/b.so"
        );
    }
}
