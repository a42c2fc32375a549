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
//! When: the fork handler (`fork`) must not allocate or start threads. It creates the
//! child's socket (unconnected, close-on-exec, moved above the floor) and sets a flag;
//! the child's first allocation through the exported `malloc` then starts one thread
//! that connects it, switches sampling back on (the handler switched it off) and starts
//! the probe. A child that never allocates has nothing to report and never connects; one
//! that `exec`s takes the socket and the thread with it.
//!
//! Why the socket is made in the handler: `socket(2)` takes the lowest free number,
//! which in the child is the worker's channel number the handler has just closed. Made
//! on the child's thread, that number named a socket for a moment while the program's
//! own threads ran: a child checking its descriptors saw the channel still open (1 in
//! 20 forked children in a 300-fork loop), and a program reusing the number
//! (`dup2(file, 4)`) in that moment would have had its file taken for the socket and
//! closed. In the handler the child has one thread, and the program runs again only
//! once the socket sits above the floor.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use heapwarden_probes::diag::{info, warn};
use heapwarden_probes::{CHILD_SOCKET_ENV, Probe, Runtime, activate_profiling, duplicate_high};
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
/// The socket the fork handler made for this child's channel (-1: none), not yet
/// connected, with its identity so that a child of this child (forked before it
/// connected) closes its copy.
static UNCONNECTED_FD: AtomicI32 = AtomicI32::new(-1);
static UNCONNECTED_DEV: AtomicU64 = AtomicU64::new(0);
static UNCONNECTED_INO: AtomicU64 = AtomicU64::new(0);
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
/// and of its unconnected socket (a grandchild talks on its own), makes this child's
/// socket above the floor and arms the lazy start. Syscalls and atomics only.
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
    let inherited = UNCONNECTED_FD.swap(-1, Ordering::SeqCst);
    if inherited >= 0 {
        crate::fork::close_if_still(
            inherited,
            UNCONNECTED_DEV.load(Ordering::SeqCst),
            UNCONNECTED_INO.load(Ordering::SeqCst),
        );
    }
    let Some(fd) = unconnected_socket_above_the_floor() else {
        return; // no channel for this child: it runs as a plain program
    };
    // SAFETY: fstat fills a zeroed struct we own.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut stat) } == 0 {
        UNCONNECTED_DEV.store(stat.st_dev, Ordering::SeqCst);
        UNCONNECTED_INO.store(stat.st_ino, Ordering::SeqCst);
    }
    UNCONNECTED_FD.store(fd, Ordering::SeqCst);
    PENDING.store(true, Ordering::SeqCst);
}

/// A close-on-exec stream socket at or above the floor, or `None`; nothing is left
/// below the floor either way. Syscalls only.
fn unconnected_socket_above_the_floor() -> Option<i32> {
    // SAFETY: socket(2) returns a new descriptor we own or -1; it is closed once
    // duplicated (or when it cannot be), so only the high copy remains.
    unsafe {
        let low = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if low < 0 {
            return None;
        }
        let high = duplicate_high(low);
        libc::close(low);
        high.ok()
    }
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

/// The socket the fork handler made, connected to `path`, or `None` (then closed).
fn connect(path: &CString) -> Option<OwnedFd> {
    let fd = UNCONNECTED_FD.swap(-1, Ordering::SeqCst);
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is the socket the fork handler created in this process and nothing
    // else holds (taken out of `UNCONNECTED_FD` above); owned from here on.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let bytes = path.as_bytes_with_nul();
    // SAFETY: a zeroed sockaddr_un we own, filled within its sun_path bound; connect(2)
    // with a correct length.
    unsafe {
        let mut address: libc::sockaddr_un = std::mem::zeroed();
        if bytes.len() > address.sun_path.len() {
            return None;
        }
        address.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
            *slot = *byte as libc::c_char;
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
