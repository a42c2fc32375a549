//! Starting one worker process: the only module of the agent that needs `unsafe`,
//! for the code that runs between fork and exec (`pre_exec`).
//!
//! The child gets the shared listening socket as fd 3 (`LISTEN_FDS=1`), its end of the
//! control socketpair as fd 4 (`HEAPWARDEN_CONTROL_FD=4`), a per-worker sd_notify socket,
//! its own process group (so signals reach its whole tree) and a parent-death signal
//! (so a SIGKILLed agent leaves no workers behind).

#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram as StdDatagram};
use std::path::PathBuf;
use std::process::Stdio;

use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use std::os::linux::net::SocketAddrExt;
use tokio::net::{UnixDatagram, UnixStream};
use tokio::process::{Child, Command};

/// fd numbers in the child, by the systemd convention and ours.
const LISTEN_FD: RawFd = 3;
const CONTROL_FD: RawFd = 4;
/// Parent-side fds are moved at or above this, so the dup2 calls in the child can
/// never overwrite one source with another.
const HIGH_FD: RawFd = 10;

pub struct SpawnSpec<'a> {
    /// This binary, run as `__exec-worker` (the LISTEN_PID trampoline).
    pub trampoline: &'a PathBuf,
    pub argv: &'a [OsString],
    pub env: &'a BTreeMap<String, String>,
    pub cwd: Option<&'a PathBuf>,
    pub listen_fd: RawFd,
    pub listen_fd_name: &'a str,
    pub slot: usize,
    pub worker_id: u64,
}

pub struct SpawnedWorker {
    pub child: Child,
    pub pid: u32,
    pub control: UnixStream,
    pub notify: UnixDatagram,
}

/// Moves `fd` to a number >= `HIGH_FD` (close-on-exec), closing the original.
pub fn move_high(fd: OwnedFd) -> io::Result<OwnedFd> {
    let high = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(HIGH_FD)).map_err(io::Error::from)?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) })
}

pub fn spawn_worker(spec: &SpawnSpec<'_>) -> io::Result<SpawnedWorker> {
    let (agent_end, worker_end) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(io::Error::from)?;
    let worker_end = move_high(worker_end)?;
    clear_nonblocking(&worker_end)?;

    let notify_name = format!("heapwarden/{}/{}", std::process::id(), spec.worker_id);
    let notify = StdDatagram::bind_addr(&UnixAddr::from_abstract_name(notify_name.as_bytes())?)?;
    notify.set_nonblocking(true)?;

    let mut command = Command::new(spec.trampoline);
    command
        .arg("__exec-worker")
        .arg("--")
        .args(spec.argv)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .envs(spec.env)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", spec.listen_fd_name)
        .env(heapwarden_probes::CONTROL_FD_ENV, CONTROL_FD.to_string())
        .env(heapwarden_probes::SLOT_ENV, spec.slot.to_string())
        .env(heapwarden_probes::WORKER_ID_ENV, spec.worker_id.to_string())
        .env("NOTIFY_SOCKET", format!("@{notify_name}"))
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
    // async-signal-safe functions (dup2, prctl, getppid, raise) on plain integers; it
    // allocates nothing and touches no locks. Both source fds are >= HIGH_FD, so
    // neither dup2 can overwrite the other's source.
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
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(worker_end);
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("worker exited before its pid was read"))?;
    let control = UnixStream::from_std(std::os::unix::net::UnixStream::from(agent_end))?;
    let notify = UnixDatagram::from_std(notify)?;
    Ok(SpawnedWorker {
        child,
        pid,
        control,
        notify,
    })
}

fn clear_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}
