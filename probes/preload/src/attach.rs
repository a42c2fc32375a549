//! Attaching to the agent, once, at load time. One of the modules allowed `unsafe`: it
//! registers the load-time constructor and inspects descriptors and symbols with libc.
//!
//! `LD_PRELOAD` is inherited by every descendant, so the constructor first checks that
//! this process is the worker: `HEAPWARDEN_WORKER_PID` (set by the agent to the pid it
//! execs the command in) must name it. A shell wrapper that `exec`s the real
//! program keeps that pid, so each image attaches in turn and the program, the last one,
//! ends up attached (the agent takes every `hello` as the new claimant). For that the
//! inherited descriptor stays open across `exec`; the probe's threads use close-on-exec
//! duplicates of it above the program's descriptors (`heapwarden_probes`' `held_fd`,
//! checked before each use), and `fork` closes every copy in children.
//!
//! Attaching means: check the program really allocates through this library, adopt the
//! control socket, switch allocation sampling on (descendants keep it off), then run
//! `heapwarden-probes`' own `Probe` on it, which answers stats, dumps and pings exactly as
//! in a Rust worker, on two threads that block every signal (the program's signals stay
//! the program's).

use std::ffi::c_void;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::Instant;

use heapwarden_probes::diag::{info, warn};
use heapwarden_probes::{
    CONTROL_FD_ENV, PRIVATE_FD_FLOOR, Probe, Runtime, activate_profiling, worker_pid_matches,
};
use serde_json::json;

use crate::{children, drain, fork, no_unwind};

/// The control socket's inode, set by the agent beside `HEAPWARDEN_CONTROL_FD`.
const CONTROL_INO_ENV: &str = "HEAPWARDEN_CONTROL_INO";

/// Keeps the probe (and its threads' channel) alive for the life of the process.
static PROBE: OnceLock<Probe> = OnceLock::new();

/// Run by the dynamic linker after libc is initialised and before the program's own
/// constructors and `main`.
extern "C" fn on_load() {
    no_unwind((), attach_if_worker);
}

#[used]
// SAFETY: `.init_array` holds pointers to `extern "C" fn()` that the dynamic linker
// calls once at load; `on_load` has exactly that type and never unwinds.
#[unsafe(link_section = ".init_array")]
static ON_LOAD: extern "C" fn() = on_load;

fn attach_if_worker() {
    if worker_pid_matches() != Some(true) {
        return; // a descendant (or no agent): jemalloc only, sampling stays off
    }
    let Ok(fd_var) = std::env::var(CONTROL_FD_ENV) else {
        return;
    };
    if let Err(owner) = allocator_is_ours() {
        warn(
            "Running without the heapwarden native probe: the program brings its own malloc, so jemalloc would not see its heap.",
            &[("malloc_from", json!(owner))],
        );
        return;
    }
    let expected_inode = std::env::var(CONTROL_INO_ENV).ok();
    let (inherited, channel) = match claim_control_socket(&fd_var, expected_inode.as_deref()) {
        Ok(claimed) => claimed,
        Err(reason) => {
            warn(
                "Running without the heapwarden native probe: the control socket is unusable.",
                &[("fd", json!(fd_var)), ("error", json!(reason))],
            );
            return;
        }
    };
    let started = Instant::now();
    let profiling = activate_profiling();
    let activation_us = started.elapsed().as_secs_f64() * 1e6;
    let python_frames = crate::python::install();
    fork::watch_children(inherited);
    children::remember_socket();
    let probe = match with_signals_blocked(|| Probe::from_fd_as(channel, Runtime::Native)) {
        Ok(probe) => probe,
        Err(error) => {
            warn(
                "Running without the heapwarden native probe: the channel did not start.",
                &[("error", json!(error.to_string()))],
            );
            return;
        }
    };
    drain::install(&probe);
    let _ = PROBE.set(probe);
    if let Some(library) = crate::jemalloc_api::other_jemalloc_loaded() {
        info(
            "The program links another jemalloc; its mallctl, malloc_stats_print and *allocx calls are served by the probe's jemalloc, which holds the heap.",
            &[("library", json!(library))],
        );
    }
    info(
        "The heapwarden native probe is attached.",
        &[
            ("pid", json!(std::process::id())),
            ("profiling", json!(profiling.is_ok())),
            (
                "python_frames",
                json!(python_frames.map_or_else(|why| why.to_string(), |()| "on".into())),
            ),
            (
                "activation_us",
                json!((activation_us * 10.0).round() / 10.0),
            ),
        ],
    );
}

/// Runs `start` (which spawns the probe's threads) with every signal blocked, so the
/// threads inherit a full mask: a process-directed signal (SIGTERM, SIGUSR1…) then always
/// goes to one of the program's own threads. Without it, a program that blocks signals
/// and waits for them with `sigwait`, or sleeps in `pause()`, could have its signal
/// taken (and, with the default disposition, acted on) by a thread it does not know.
pub(crate) fn with_signals_blocked<T>(start: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t values we own, filled by sigfillset; pthread_sigmask changes only
    // this thread's mask and is restored below before returning.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        let started = start();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        started
    }
}

/// `Ok` when the process-wide `malloc` (what libc and every library bind their calls to)
/// is this library's; otherwise the file that defines it (a program linking its own
/// allocator). Tested by allocation rather than by symbol lookup: `dlsym("malloc")` names
/// a non-PIE executable's PLT stub whenever the program takes malloc's address (CPython
/// does), although its calls still reach us. So libc allocates (`strdup`, bound like
/// every library's calls), and jemalloc says whether the block is one of its own
/// (`arenas.lookup` fails cleanly for foreign pointers).
fn allocator_is_ours() -> Result<(), String> {
    // SAFETY: strdup of a NUL-terminated literal; the block is freed with `free`, which
    // binds exactly as strdup's malloc did (both ours, or both the program's). The
    // mallctl reads an unsigned into `arena` and takes a pointer-sized new value.
    unsafe {
        let probe = libc::strdup(c"heapwarden".as_ptr());
        if probe.is_null() {
            return Err("unknown (strdup failed)".into());
        }
        let mut arena: libc::c_uint = 0;
        let mut arena_len = size_of::<libc::c_uint>();
        let mut block = probe.cast::<c_void>();
        let owned = tikv_jemalloc_sys::mallctl(
            c"arenas.lookup".as_ptr(),
            std::ptr::from_mut(&mut arena).cast(),
            &mut arena_len,
            std::ptr::from_mut(&mut block).cast(),
            size_of::<*mut c_void>(),
        ) == 0;
        libc::free(probe.cast());
        if owned { Ok(()) } else { Err(malloc_owner()) }
    }
}

/// The file whose `malloc` the loader resolves first, for the log line.
fn malloc_owner() -> String {
    // SAFETY: dlsym and dladdr read the loader's tables and fill a C struct we own.
    unsafe {
        let resolved = libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr());
        let mut info: libc::Dl_info = std::mem::zeroed();
        if resolved.is_null() || libc::dladdr(resolved, &mut info) == 0 || info.dli_fname.is_null()
        {
            return "unknown".into();
        }
        std::ffi::CStr::from_ptr(info.dli_fname)
            .to_string_lossy()
            .into_owned()
    }
}

/// The inherited descriptor number (left open for an `exec` in this pid) and a private
/// close-on-exec duplicate for the probe's threads. `value` is `HEAPWARDEN_CONTROL_FD`,
/// `expected_inode` the agent's `HEAPWARDEN_CONTROL_INO` (checked when given).
fn claim_control_socket(
    value: &str,
    expected_inode: Option<&str>,
) -> Result<(RawFd, OwnedFd), String> {
    let fd: RawFd = value
        .trim()
        .parse()
        .map_err(|_| "not a file descriptor number".to_string())?;
    if fd < 3 {
        return Err("refusing stdin, stdout or stderr".into());
    }
    // SAFETY: fstat writes into a zeroed stat struct we own; a closed fd is an error.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(format!("descriptor {fd} is not open"));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("descriptor {fd} is not a socket"));
    }
    // The agent names the socket's inode too: a number reused for another socket (a
    // wrapper that closed ours and opened its own) is not the channel.
    if let Some(expected) = expected_inode
        && expected.trim() != stat.st_ino.to_string()
    {
        return Err(format!(
            "descriptor {fd} is socket inode {}, not the agent's {expected}",
            stat.st_ino
        ));
    }
    // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new one or -1; nothing
    // else in the process owns the new number.
    let duplicate = unsafe {
        match libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, PRIVATE_FD_FLOOR) {
            -1 => libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3),
            high => high,
        }
    };
    if duplicate < 0 {
        return Err(format!(
            "could not duplicate descriptor {fd}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `duplicate` was just created by fcntl and is owned by nobody else.
    Ok((fd, unsafe { OwnedFd::from_raw_fd(duplicate) }))
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn inode(file: &impl AsRawFd) -> u64 {
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat fills a zeroed struct we own.
        assert_eq!(unsafe { libc::fstat(file.as_raw_fd(), &mut stat) }, 0);
        stat.st_ino
    }

    /// This test binary defines `malloc` through `exports` as a program does under
    /// `LD_PRELOAD`, so libc's allocations land in the probe's jemalloc.
    #[test]
    fn the_process_malloc_is_recognised_as_ours() {
        assert_eq!(allocator_is_ours(), Ok(()));
    }

    #[test]
    fn only_an_open_socket_under_a_real_number_is_claimed() {
        for (value, why) in [
            ("", "not a file descriptor number"),
            ("four", "not a file descriptor number"),
            ("-1", "refusing stdin"),
            ("2", "refusing stdin"),
            // Far above what this test process opens.
            ("4000", "is not open"),
        ] {
            let refused = claim_control_socket(value, None).expect_err(value);
            assert!(refused.contains(why), "{value}: {refused}");
        }
        let file = File::open("/dev/null").expect("open /dev/null");
        let refused = claim_control_socket(&file.as_raw_fd().to_string(), None).unwrap_err();
        assert!(refused.contains("is not a socket"), "{refused}");
    }

    #[test]
    fn a_socket_under_the_number_that_is_not_the_agents_is_refused() {
        let (ours, _agent) = UnixStream::pair().expect("socketpair");
        let fd = ours.as_raw_fd().to_string();
        let other = inode(&ours) + 1;
        let refused = claim_control_socket(&fd, Some(&other.to_string())).unwrap_err();
        assert!(refused.contains("not the agent's"), "{refused}");
    }

    /// The claim keeps the inherited number open (an `exec` in this pid passes it on) and
    /// gives the probe a close-on-exec duplicate of the same socket, out of the program's
    /// way.
    #[test]
    fn the_claim_keeps_the_inherited_number_and_duplicates_it_high_and_close_on_exec() {
        let (ours, _agent) = UnixStream::pair().expect("socketpair");
        // As the agent passes it: inherited, so not close-on-exec (std sets it).
        // SAFETY: F_SETFD on a descriptor this test owns.
        assert_eq!(
            unsafe { libc::fcntl(ours.as_raw_fd(), libc::F_SETFD, 0) },
            0
        );
        let expected = inode(&ours).to_string();
        let (inherited, channel) =
            claim_control_socket(&format!(" {} ", ours.as_raw_fd()), Some(&expected))
                .expect("claimed");
        assert_eq!(inherited, ours.as_raw_fd());
        assert_ne!(channel.as_raw_fd(), inherited);
        assert!(
            channel.as_raw_fd() >= PRIVATE_FD_FLOOR,
            "{}",
            channel.as_raw_fd()
        );
        assert_eq!(inode(&channel), inode(&ours), "the same socket");
        // SAFETY: F_GETFD on descriptors this test owns.
        let flags = unsafe { libc::fcntl(channel.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        let flags = unsafe { libc::fcntl(inherited, libc::F_GETFD) };
        assert_eq!(
            flags & libc::FD_CLOEXEC,
            0,
            "the inherited number survives exec"
        );
    }
}
