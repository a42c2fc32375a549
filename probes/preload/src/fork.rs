//! What a forked child of the worker keeps: jemalloc (its own fork handlers make it
//! fork-safe), but not the claim. One of the modules allowed `unsafe`: a `pthread_atfork`
//! child handler and raw descriptor calls.
//!
//! In the child only the forking thread exists, so the probe's threads are gone; the
//! handler makes sure nothing of the channel survives either: it closes every copy the
//! probe held (`heapwarden_probes::close_held_in_forked_child`) and the inherited descriptor (when that number still is the agent's socket,
//! same device and inode), so a child that later `exec`s passes neither on, and it turns
//! allocation sampling off, so a long-running child pays nothing for a profile nobody
//! reads. The handler allocates nothing and takes no lock of ours; its one jemalloc call
//! (`prof.active = false`, by a MIB looked up at attach time) takes only jemalloc's own
//! `prof_active` mutex, which jemalloc's own child handler has already reinitialised —
//! jemalloc registered its handlers when it initialised, before ours (child handlers run
//! in registration order), and the child is single-threaded.
//!
//! `vfork`/`posix_spawn` children (glibc's `system`, `popen`, Python's `subprocess`) run
//! no fork handlers; they exec at once, which closes the duplicate (close-on-exec), and
//! their own copy of this library sees a pid that is not the worker's and stays quiet.

use std::os::fd::RawFd;
use std::sync::OnceLock;

use tikv_jemalloc_sys as je;

/// The inherited descriptor and its identity, and the MIB of
/// `prof.active`, as the child handler needs them.
struct Claim {
    inherited: RawFd,
    device: u64,
    inode: u64,
    prof_active_mib: Option<[usize; 2]>,
}

static CLAIM: OnceLock<Claim> = OnceLock::new();

/// Records what a child must drop and registers the handler (once per process image).
pub(crate) fn watch_children(inherited: RawFd) {
    // SAFETY: fstat fills a zeroed struct we own.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    let (device, inode) = if unsafe { libc::fstat(inherited, &mut stat) } == 0 {
        (stat.st_dev, stat.st_ino)
    } else {
        (0, 0)
    };
    let mut mib = [0usize; 2];
    let prof_active_mib = tikv_jemalloc_ctl::raw::name_to_mib(b"prof.active\0", &mut mib)
        .ok()
        .map(|()| mib);
    let first = CLAIM
        .set(Claim {
            inherited,
            device,
            inode,
            prof_active_mib,
        })
        .is_ok();
    if first {
        // SAFETY: registers a plain `extern "C" fn()`; jemalloc is initialised by now
        // (the caller allocated and switched sampling on), so its handlers come first.
        unsafe { libc::pthread_atfork(None, None, Some(in_forked_child)) };
    }
}

/// Closes `fd` only while it still names the file `device`/`inode` (a channel's socket),
/// and says whether it did: a number the program reused for a file of its own stays the
/// program's. Inode 0 (identity unknown) closes nothing. Only fstat and close, so a fork
/// handler may call it.
pub(crate) fn close_if_still(fd: RawFd, device: u64, inode: u64) -> bool {
    // SAFETY: fstat on any number fills a zeroed struct we own (or fails); close only of
    // a descriptor that is that file.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if inode != 0
            && libc::fstat(fd, &mut stat) == 0
            && stat.st_dev == device
            && stat.st_ino == inode
        {
            return libc::close(fd) == 0;
        }
    }
    false
}

extern "C" fn in_forked_child() {
    let Some(claim) = CLAIM.get() else { return };
    // A child that keeps running gets a channel of its own, started lazily (`children`).
    crate::children::arm_in_forked_child();
    // Every copy the probe's threads held (reader and writer), each only while it still
    // names the agent's socket: atomics, fstat and close, nothing else.
    heapwarden_probes::close_held_in_forked_child();
    close_if_still(claim.inherited, claim.device, claim.inode);
    if let Some(mib) = &claim.prof_active_mib {
        let mut off = false;
        // SAFETY: "prof.active" is a bool key; the MIB was resolved for it, and `off`
        // lives across the call. See the module header for why the lock is safe here.
        unsafe {
            je::mallctlbymib(
                mib.as_ptr(),
                mib.len(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::from_mut(&mut off).cast(),
                size_of::<bool>(),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::net::UnixStream;

    use super::*;

    fn identity(fd: RawFd) -> (u64, u64) {
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat fills a zeroed struct we own.
        assert_eq!(unsafe { libc::fstat(fd, &mut stat) }, 0);
        (stat.st_dev, stat.st_ino)
    }

    /// What a forked child drops is the agent's socket, never what the program put under
    /// the same number since.
    #[test]
    fn a_child_closes_a_number_only_while_it_names_the_channel() {
        let (channel, agent) = UnixStream::pair().expect("socketpair");
        let (device, inode) = identity(channel.as_raw_fd());
        let programs = File::open("/dev/null").expect("open /dev/null");
        assert!(!close_if_still(programs.as_raw_fd(), device, inode));
        identity(programs.as_raw_fd()); // still open
        assert!(
            !close_if_still(agent.as_raw_fd(), device, inode),
            "another socket (the pair's other end)"
        );
        assert!(
            !close_if_still(channel.as_raw_fd(), device, 0),
            "identity unknown"
        );

        let copy = channel.try_clone().expect("dup").into_raw_fd();
        let fd = channel.into_raw_fd();
        assert!(close_if_still(fd, device, inode));
        assert!(close_if_still(copy, device, inode), "every copy goes");
        // Closed: whatever this number names now (another test's file), it is not the
        // channel.
        assert!(!close_if_still(fd, device, inode));
    }
}
