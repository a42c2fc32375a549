//! The hidden `__exec-worker` mode. The agent cannot know a child's pid before it
//! exists and must not call `setenv` between fork and exec, so each worker starts as
//! this trampoline, which sets `LISTEN_PID` to its own pid (as sd_listen_fds(3) expects)
//! and execs the real command in place, keeping the pid.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

pub fn exec_worker(argv: Vec<OsString>) -> ExitCode {
    let Some((program, args)) = argv.split_first() else {
        eprintln!("heapwarden: __exec-worker needs a command");
        return ExitCode::from(64);
    };
    let mut command = Command::new(program);
    command.args(args);
    if std::env::var_os("LISTEN_FDS").is_some() {
        command.env("LISTEN_PID", std::process::id().to_string());
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
