//! Forked children that keep running (a pre-fork server's request workers: gunicorn,
//! uwsgi, celery prefork) report on a channel of their own. One of the modules allowed
//! `unsafe`: it connects a raw socket, reads a descriptor's identity with `fstat` and
//! closes descriptors in a forked child.
//!
//! Transport: the agent listens on a per-worker Unix stream socket whose path it puts in
//! [`CHILD_SOCKET_ENV`]; a child connects there and runs the same `Probe` (hello, stats,
//! dumps, pings) on that connection. Why not frames carrying a pid over the inherited
//! control socket: a forked child may keep no descriptor it inherited (the fork handler
//! closes every copy of the worker's channel, so nothing of it ever reaches the
//! program's own children), and a shared stream written by several processes would need
//! a lock across processes to keep frames whole. A connection per child gives each its
//! own ordering, its own back-pressure and an end the agent sees when the child exits;
//! the agent learns the child's pid from the kernel (`SO_PEERCRED`), not from the hello,
//! and accepts only processes of the worker's own tree.
//!
//! When: the fork handler (`fork`) only sets a flag — it must not allocate or start
//! threads. The child's first allocation through the exported `malloc` then starts one
//! thread that connects, switches sampling back on (the handler switched it off) and
//! starts the probe. A child that never allocates has nothing to report and never
//! connects; one that `exec`s at once takes its thread with it.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use heapwarden_probes::diag::{info, warn};
use heapwarden_probes::{CHILD_SOCKET_ENV, Probe, Runtime, activate_profiling};
use serde_json::json;

use crate::no_unwind;

/// The agent's socket for children, read once when the worker attached (a child must
/// not depend on what the program did to its environment since).
static SOCKET_PATH: OnceLock<CString> = OnceLock::new();
/// Set by the fork handler in a child; the next allocation starts the child's channel.
static PENDING: AtomicBool = AtomicBool::new(false);
/// Device and inode of this process's own child channel (0: none), so that a child of
/// this child can close every inherited copy of it.
static CHANNEL_DEV: AtomicU64 = AtomicU64::new(0);
static CHANNEL_INO: AtomicU64 = AtomicU64::new(0);
/// Lowest number for the child's channel, as for the worker's (`attach`).
const HIGH_FD_FLOOR: i32 = 500;
/// Descriptor numbers scanned for inherited copies of a child channel.
const MAX_SCANNED_FD: i32 = 4096;

/// In the worker, at attach: remembers where children connect (nothing when the agent
/// did not offer a socket).
pub(crate) fn remember_socket() {
    if let Ok(path) = std::env::var(CHILD_SOCKET_ENV)
        && let Ok(path) = CString::new(path)
    {
        let _ = SOCKET_PATH.set(path);
    }
}

/// Fork child handler's part: closes inherited copies of the parent's own child channel
/// (a grandchild talks on its own) and arms the lazy start. Syscalls and atomics only.
pub(crate) fn arm_in_forked_child() {
    if SOCKET_PATH.get().is_none() {
        return;
    }
    let (dev, ino) = (
        CHANNEL_DEV.swap(0, Ordering::SeqCst),
        CHANNEL_INO.swap(0, Ordering::SeqCst),
    );
    if ino != 0 {
        for fd in 3..MAX_SCANNED_FD {
            crate::fork::close_if_still(fd, dev, ino);
        }
    }
    PENDING.store(true, Ordering::SeqCst);
}

/// Called on every allocation through the exported names: one relaxed load when there is
/// nothing to do.
#[inline(always)]
pub(crate) fn on_allocation() {
    if PENDING.load(Ordering::Relaxed) {
        start_after_fork();
    }
}

#[cold]
#[inline(never)]
fn start_after_fork() {
    // Exactly one allocation starts it; the allocations the start makes itself find the
    // flag already cleared.
    if PENDING.swap(false, Ordering::SeqCst) {
        no_unwind((), spawn_channel_thread);
    }
}

fn spawn_channel_thread() {
    let Some(path) = SOCKET_PATH.get() else {
        return;
    };
    let started = crate::attach::with_signals_blocked(|| {
        std::thread::Builder::new()
            .name("heapwarden-child".into())
            .spawn(move || no_unwind((), || run_child_channel(path)))
    });
    if let Err(error) = started {
        warn(
            "A forked child of the worker runs without its own heapwarden channel: its thread did not start.",
            &[("error", json!(error.to_string()))],
        );
    }
}

fn run_child_channel(path: &CString) {
    let Some(socket) = connect(path) else {
        // The agent is gone or refuses: the child runs as a plain program.
        return;
    };
    // SAFETY: fstat fills a zeroed struct we own.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(socket.as_raw_fd(), &mut stat) } == 0 {
        CHANNEL_DEV.store(stat.st_dev, Ordering::SeqCst);
        CHANNEL_INO.store(stat.st_ino, Ordering::SeqCst);
    }
    let profiling = activate_profiling();
    match Probe::from_fd_as(socket, Runtime::Native) {
        Ok(probe) => {
            // The probe's threads live as long as the process; nothing ever drops it.
            std::mem::forget(probe);
            info(
                "A forked child of the worker reports on its own heapwarden channel.",
                &[
                    ("child_pid", json!(std::process::id())),
                    ("profiling", json!(profiling.is_ok())),
                ],
            );
        }
        Err(error) => warn(
            "A forked child of the worker runs without its own heapwarden channel.",
            &[("error", json!(error.to_string()))],
        ),
    }
}

/// A close-on-exec stream connected to `path`, or `None`.
fn connect(path: &CString) -> Option<OwnedFd> {
    let bytes = path.as_bytes_with_nul();
    // SAFETY: a zeroed sockaddr_un we own, filled within its sun_path bound; socket(2)
    // and connect(2) with a correct length; the descriptor is owned from here on.
    unsafe {
        let mut address: libc::sockaddr_un = std::mem::zeroed();
        if bytes.len() > address.sun_path.len() {
            return None;
        }
        address.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
            *slot = *byte as libc::c_char;
        }
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut socket = OwnedFd::from_raw_fd(fd);
        // Out of the program's way: its next descriptor keeps the number it expects
        // (the worker's inherited channel number, just closed by the fork handler, is
        // the lowest free one here).
        let high = libc::fcntl(socket.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HIGH_FD_FLOOR);
        if high >= 0 {
            socket = OwnedFd::from_raw_fd(high);
        }
        let length = (size_of::<libc::sa_family_t>() + bytes.len()) as libc::socklen_t;
        let connected = libc::connect(
            socket.as_raw_fd(),
            std::ptr::from_ref(&address).cast(),
            length,
        ) == 0;
        connected.then_some(socket)
    }
}
