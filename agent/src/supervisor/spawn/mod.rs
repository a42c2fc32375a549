//! Starting one worker process: the only module of the agent that needs `unsafe`,
//! for the code that runs between fork and exec (`pre_exec`), and for the one question
//! about an executable that no safe wrapper of ours answers: whether exec will run it
//! with file capabilities ([`has_file_capabilities`]; `nix`, the agent's one system-call
//! crate, has no xattr calls).
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
use super::identity::WorkerIdentity;

/// Whether `path` carries file capabilities (`security.capability`, what `setcap`
/// writes): exec then runs it in secure-execution mode, and the dynamic linker ignores
/// `LD_PRELOAD` paths like the native probe's.
pub fn has_file_capabilities(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut value = [0u8; 64];
    // SAFETY: both names are NUL-terminated and live across the call; `value` is a
    // writable buffer of the length passed, and getxattr writes at most that many bytes.
    let len = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    len >= 0
}

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
/// Also not inherited by workers under their own user: paths of the agent's they cannot
/// use (systemd's directories, the agent's config and state) and the agent's own config
/// overrides. A worker that could read them would learn where the token lives.
const AGENT_PATHS: [&str; 10] = [
    "STATE_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "CONFIGURATION_DIRECTORY",
    "CREDENTIALS_DIRECTORY",
    "LOGS_DIRECTORY",
    "CACHE_DIRECTORY",
    heapwarden_protocol::CONFIG_ENV,
    heapwarden_protocol::STATE_DIR_ENV,
    "HEAPWARDEN_ADMIN_TOKEN_FILE",
    "HEAPWARDEN_ADMIN_LISTEN",
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
    /// The user and groups the child switches to before exec; `None`: the agent's.
    pub identity: Option<&'a WorkerIdentity>,
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
        (heapwarden_protocol::CONTROL_FD_ENV, CONTROL_FD.to_string()),
        (heapwarden_protocol::SLOT_ENV, spec.slot.to_string()),
        (
            heapwarden_protocol::WORKER_ID_ENV,
            spec.worker_id.to_string(),
        ),
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
                OsStr::new(heapwarden_protocol::CHILD_SOCKET_ENV),
                p.as_os_str(),
            )
        }))
        .chain(preload.as_deref().map(|p| (OsStr::new("LD_PRELOAD"), p)));
    let mut remove: Vec<&str> = NOT_INHERITED.to_vec();
    if spec.identity.is_some() {
        remove.extend(AGENT_PATHS);
    }
    ChildEnv::build(std::env::vars_os(), &remove, set)
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
    // Copied before the fork: the child only reads them.
    let identity = spec.identity.cloned();
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (dup2, prctl, setgroups, setgid, setuid, getppid,
    // getpid, raise) on plain integers and on the group list allocated before the fork,
    // writes digits into bytes `env` reserved before the fork, and stores a pointer into
    // `environ`; it allocates nothing and takes no lock. Both source fds are >= HIGH_FD,
    // so neither dup2 can overwrite the other's source. `env` lives inside the closure,
    // which `command` keeps until after the exec, so `environ` points at live memory.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(listen_fd, LISTEN_FD) < 0 || libc::dup2(control_fd, CONTROL_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Capabilities the unit grants the agent (setuid, kill, ptrace…) must not
            // reach the worker: the ambient set is what an exec would carry on.
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            );
            // Groups, then group, then user (after setuid the others are not allowed).
            // Before PR_SET_PDEATHSIG, which a credential change resets.
            // Raw system calls: this thread's credentials, the only thread of the child
            // (glibc's wrappers would try to reach every thread of the agent's image).
            if let Some(who) = &identity
                && (libc::syscall(libc::SYS_setgroups, who.groups.len(), who.groups.as_ptr()) < 0
                    || libc::syscall(libc::SYS_setgid, who.gid) < 0
                    || libc::syscall(libc::SYS_setuid, who.uid) < 0)
            {
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
