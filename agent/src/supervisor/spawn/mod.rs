//! Starting one worker process: the only module of the agent that needs `unsafe`,
//! for the code that runs between fork and exec (`pre_exec`).
//!
//! The child gets the shared listening socket as fd 3 (`LISTEN_FDS=1`), its end of the
//! control socketpair as fd 4 (`HEAPWARDEN_CONTROL_FD=4`), its own `NOTIFY_SOCKET`, its
//! own process group (so signals reach its whole tree) and a parent-death signal (so a
//! SIGKILLed agent leaves no workers behind). `LISTEN_PID` and `HEAPWARDEN_WORKER_PID`
//! must be the child's own pid, which exists only after the fork: the environment is
//! built beforehand with room for it (`env`), and the child writes the digits in and
//! points `environ` at it just before std's `execvp`. The command keeps that pid through
//! exec (and through any wrapper that execs), without a trampoline process.

#![allow(unsafe_code)]

mod env;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

pub use env::{ChildEnv, with_preload};

use super::attach::native::PRELOAD_ENV;

/// fd numbers in the child, by the systemd convention and ours.
const LISTEN_FD: RawFd = 3;
const CONTROL_FD: RawFd = 4;
/// Parent-side fds are moved at or above this, so the dup2 calls in the child can
/// never overwrite one source with another.
const HIGH_FD: RawFd = 10;
/// Variables of the agent's own environment a worker must not inherit: systemd's, which
/// are about the agent, not about the worker.
const NOT_INHERITED: [&str; 5] = [
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

pub struct SpawnSpec<'a> {
    pub argv: &'a [OsString],
    pub env: &'a BTreeMap<String, String>,
    pub cwd: Option<&'a PathBuf>,
    pub listen_fd: RawFd,
    pub listen_fd_name: &'a str,
    pub slot: usize,
    pub worker_id: u64,
    pub notify_socket: &'a Path,
    /// `HEAPWARDEN_CHILD_SOCKET`: where the worker's forked children report, if bound.
    pub child_socket: Option<&'a Path>,
    /// `HEAPWARDEN_AGENT_INSTANCE`: marks the worker's tree as this agent's.
    pub instance: &'a str,
}

pub struct SpawnedWorker {
    pub child: Child,
    pub pid: u32,
    pub control: UnixStream,
}

/// Moves `fd` to a number >= `HIGH_FD` (close-on-exec), closing the original.
pub fn move_high(fd: OwnedFd) -> io::Result<OwnedFd> {
    let high = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(HIGH_FD)).map_err(io::Error::from)?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) })
}

/// The worker's environment: the agent's (minus systemd's variables about the agent),
/// the pool's `env`, then what heapwarden tells every worker.
pub fn worker_env(spec: &SpawnSpec<'_>, control_ino: u64) -> ChildEnv {
    let ours: Vec<(&str, String)> = vec![
        // Lets a probe check that fd 4 really is this socket before it claims the channel.
        ("HEAPWARDEN_CONTROL_INO", control_ino.to_string()),
        ("LISTEN_FDS", "1".into()),
        ("LISTEN_FDNAMES", spec.listen_fd_name.into()),
        (heapwarden_probes::CONTROL_FD_ENV, CONTROL_FD.to_string()),
        (heapwarden_probes::SLOT_ENV, spec.slot.to_string()),
        (heapwarden_probes::WORKER_ID_ENV, spec.worker_id.to_string()),
        ("HEAPWARDEN_AGENT_INSTANCE", spec.instance.into()),
    ];
    let notify = ("NOTIFY_SOCKET", spec.notify_socket.as_os_str());
    // The native probe joins LD_PRELOAD of the command only: the forked child is still
    // the agent's image until it execs, so the library loads into the command alone.
    let preload = spec.env.get(PRELOAD_ENV).map(|library| {
        let existing = spec
            .env
            .get("LD_PRELOAD")
            .map(OsString::from)
            .or_else(|| std::env::var_os("LD_PRELOAD"));
        with_preload(OsString::from(library), existing)
    });
    let set = spec
        .env
        .iter()
        .map(|(k, v)| (OsStr::new(k.as_str()), OsStr::new(v.as_str())))
        .chain(
            ours.iter()
                .map(|(k, v)| (OsStr::new(*k), OsStr::new(v.as_str()))),
        )
        .filter(|(k, _)| *k != OsStr::new(PRELOAD_ENV))
        .chain([(OsStr::new(notify.0), notify.1)])
        .chain(spec.child_socket.map(|p| {
            (
                OsStr::new(heapwarden_probes::CHILD_SOCKET_ENV),
                p.as_os_str(),
            )
        }))
        .chain(preload.as_deref().map(|p| (OsStr::new("LD_PRELOAD"), p)));
    ChildEnv::build(std::env::vars_os(), &NOT_INHERITED, set)
}

pub fn spawn_worker(spec: &SpawnSpec<'_>) -> io::Result<SpawnedWorker> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| io::Error::other("the worker command is empty"))?;
    let (agent_end, worker_end) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(io::Error::from)?;
    let worker_end = move_high(worker_end)?;
    clear_nonblocking(&worker_end)?;
    let control_ino = nix::sys::stat::fstat(&worker_end)
        .map_err(io::Error::from)?
        .st_ino;

    // The environment is not set through `Command` (std would then install its own
    // `envp` after our closure ran): the closure installs `env` itself.
    let mut env = worker_env(spec, control_ino);
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(dir) = spec.cwd {
        command.current_dir(dir);
    }

    let listen_fd = spec.listen_fd;
    let control_fd = worker_end.as_raw_fd();
    let agent_pid = nix::unistd::getpid().as_raw();
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (dup2, prctl, getppid, getpid, raise) on plain integers,
    // writes digits into bytes `env` reserved before the fork, and stores a pointer into
    // `environ`; it allocates nothing and takes no lock. Both source fds are >= HIGH_FD,
    // so neither dup2 can overwrite the other's source. `env` lives inside the closure,
    // which `command` keeps until after the exec, so `environ` points at live memory.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(listen_fd, LISTEN_FD) < 0 || libc::dup2(control_fd, CONTROL_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // The agent may have died between fork and prctl: then nobody would
            // ever send the death signal.
            if libc::getppid() != agent_pid {
                libc::raise(libc::SIGKILL);
            }
            env.set_pid(libc::getpid() as u32);
            libc::environ = env.envp() as *mut *mut libc::c_char;
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(worker_end);
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("worker exited before its pid was read"))?;
    let control = UnixStream::from_std(std::os::unix::net::UnixStream::from(agent_end))?;
    Ok(SpawnedWorker {
        child,
        pid,
        control,
    })
}

fn clear_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}
