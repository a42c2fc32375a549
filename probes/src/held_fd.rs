//! The descriptors the probe holds inside someone else's process: the control socket's
//! reader and writer copies. One of the modules allowed `unsafe`: it duplicates, checks,
//! reads, writes and closes raw descriptor numbers with libc, because the point is to
//! never touch a number the program reused.
//!
//! A program owns its descriptor table: a wrapper does `exec 5>file`, a daemon calls
//! `closefrom(3)` and opens a socketpair, a library `dup2`s over a number it thinks free.
//! So every copy the probe holds
//! - sits at or above [`PRIVATE_FD_FLOOR`], far from the numbers programs pick;
//! - remembers the socket's device and inode, and is re-checked (`fstat`) before each
//!   read, write, shutdown and close: a number that no longer names the agent's socket is
//!   left alone, the call fails, and the probe goes quiet;
//! - is listed in a fixed table of atomics, so a forked child's handler can close every
//!   copy without allocating ([`close_held_in_forked_child`]).

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

/// Lowest number tried for the probe's copies: far above what shells and programs pick
/// for themselves (`exec 5>file`, `dup2(fd, 10)`).
pub const PRIVATE_FD_FLOOR: RawFd = 500;

/// Copies the fork handler can find (a probe holds two: reader and writer). Beyond it a
/// copy still works but a forked child would keep it; only test processes that run
/// many probes at once get there.
const SLOTS: usize = 16;
/// `HeldFd::slot` of a copy the table had no room for.
const UNLISTED: usize = usize::MAX;

struct Slot {
    fd: AtomicI32,
    device: AtomicU64,
    inode: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    fd: AtomicI32::new(-1),
    device: AtomicU64::new(0),
    inode: AtomicU64::new(0),
};
static HELD: [Slot; SLOTS] = [EMPTY; SLOTS];

/// One copy of the agent's socket held by the probe. Dropping it closes the number only
/// while it still names that socket.
#[derive(Debug)]
pub struct HeldFd {
    fd: RawFd,
    device: u64,
    inode: u64,
    slot: usize,
}

fn identity(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: fstat writes into a zeroed struct we own; a closed number is an error.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd, &mut stat) } == 0).then_some((stat.st_dev, stat.st_ino))
}

/// A close-on-exec duplicate of `fd` at or above the floor; when the process's
/// descriptor limit is below the floor, as high as the limit allows. Syscalls only
/// (`getrlimit`, `fcntl`): a fork handler may call it.
pub fn duplicate_high(fd: RawFd) -> io::Result<RawFd> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a struct we own.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        RawFd::try_from(limit.rlim_cur).unwrap_or(RawFd::MAX)
    } else {
        1024
    };
    let floor = PRIVATE_FD_FLOOR.min((soft - 16).max(3));
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we hold returns a new number nobody owns,
    // or -1.
    let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
    if high < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(high)
}

impl HeldFd {
    /// Takes `fd` (a connected socket), moved at or above the floor when it is below.
    pub fn adopt(fd: OwnedFd) -> io::Result<HeldFd> {
        let raw = fd.as_raw_fd();
        let high = if raw >= PRIVATE_FD_FLOOR {
            fd.into_raw_fd()
        } else {
            let high = duplicate_high(raw)?;
            drop(fd); // our own copy below the floor, just duplicated
            high
        };
        HeldFd::register(high)
    }

    fn register(fd: RawFd) -> io::Result<HeldFd> {
        let Some((device, inode)) = identity(fd) else {
            let error = io::Error::last_os_error();
            // SAFETY: `fd` was created for us by `adopt`/`try_clone` and is ours alone.
            unsafe { libc::close(fd) };
            return Err(error);
        };
        for (slot, held) in HELD.iter().enumerate() {
            if held
                .fd
                .compare_exchange(-1, fd, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                held.device.store(device, Ordering::SeqCst);
                held.inode.store(inode, Ordering::SeqCst);
                return Ok(HeldFd {
                    fd,
                    device,
                    inode,
                    slot,
                });
            }
        }
        Ok(HeldFd {
            fd,
            device,
            inode,
            slot: UNLISTED,
        })
    }

    /// Another copy of the same socket, also above the floor.
    pub fn try_clone(&self) -> io::Result<HeldFd> {
        self.check()?;
        HeldFd::register(duplicate_high(self.fd)?)
    }

    /// Whether the number still names the agent's socket.
    pub fn is_ours(&self) -> bool {
        identity(self.fd) == Some((self.device, self.inode))
    }

    fn check(&self) -> io::Result<()> {
        if self.is_ours() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "descriptor {} no longer is the agent's socket; the probe leaves it alone",
                    self.fd
                ),
            ))
        }
    }

    /// Blocks until the socket has something to read, or the peer hung up. A reader parked
    /// here is woken for input only; one parked in `read(2)` on a stream socket is also
    /// woken every time the agent consumes a frame this side wrote (the kernel's
    /// write-space wake-up reaches a blocked `read` unfiltered), which cost the agent a
    /// wake-up of this thread, and often a preemption, for every pushed report.
    pub fn wait_readable(&self) -> io::Result<()> {
        self.check()?;
        let mut poll = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: polls one descriptor we hold and just checked, through a struct we own.
            if unsafe { libc::poll(&mut poll, 1, -1) } >= 0 {
                return Ok(());
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }

    /// `shutdown(2)` both directions, only while the number is still ours.
    pub fn shutdown(&self) {
        if self.is_ours() {
            // SAFETY: shutdown on a socket number we hold and just checked.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        }
    }

    /// The number, for tests.
    #[cfg(test)]
    pub fn raw(&self) -> RawFd {
        self.fd
    }
}

impl io::Read for HeldFd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        // SAFETY: reads into a buffer we own, of its length, from a number just checked.
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

impl io::Write for HeldFd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        // SAFETY: writes from a buffer we own, of its length, to a number just checked.
        // MSG_NOSIGNAL: a closed peer is an error, never a SIGPIPE to the program.
        let n = unsafe { libc::send(self.fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for HeldFd {
    fn drop(&mut self) {
        // A slot emptied by the fork handler means this is a forked child's copy of the
        // struct whose number was already closed (and may be reused since).
        let listed = match HELD.get(self.slot) {
            Some(held) => held
                .fd
                .compare_exchange(self.fd, -1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok(),
            None => true,
        };
        if listed && self.is_ours() {
            // SAFETY: the number still names our socket and our slot still listed it.
            unsafe { libc::close(self.fd) };
        }
    }
}

/// For a `pthread_atfork` child handler: closes every copy the probe holds that still
/// names the agent's socket, and forgets them all. Async-signal-safe: atomics, `fstat`
/// and `close` only; no allocation, no lock.
pub fn close_held_in_forked_child() {
    for held in &HELD {
        let fd = held.fd.swap(-1, Ordering::SeqCst);
        if fd < 0 {
            continue;
        }
        if identity(fd)
            == Some((
                held.device.load(Ordering::SeqCst),
                held.inode.load(Ordering::SeqCst),
            ))
        {
            // SAFETY: the number still names the agent's socket; in the child nothing of
            // the probe runs any more (its threads did not survive the fork).
            unsafe { libc::close(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;

    use super::*;

    /// The thread's voluntary context switches: each is a sleep it was woken from.
    fn sleeps_of(tid: i32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_reader_waiting_for_input_is_not_woken_by_the_agent_consuming_our_writes() {
        let (ours, mut agent) = UnixStream::pair().unwrap();
        let reader = HeldFd::adopt(OwnedFd::from(ours)).unwrap();
        let mut writer = reader.try_clone().unwrap();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let parked = std::thread::spawn(move || {
            // SAFETY (test): gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            reader.wait_readable().unwrap();
            let mut one = [0u8; 1];
            let mut reader = reader;
            reader.read_exact(&mut one).unwrap();
            one[0]
        });
        let tid = tid_rx.recv().unwrap();
        // Parked: the thread sleeps (state S) in poll.
        let state = |tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
                .map(|s| s.rsplit(')').next().unwrap_or("").trim().starts_with('S'))
                .unwrap_or(false)
        };
        while !state(tid) {
            std::thread::yield_now();
        }
        let before = sleeps_of(tid);
        let frame = [b'x'; 200];
        let mut taken = [0u8; 200];
        for _ in 0..200 {
            writer.write_all(&frame).unwrap();
            agent.read_exact(&mut taken).unwrap();
        }
        let woken = sleeps_of(tid) - before;
        agent.write_all(&[7]).unwrap();
        assert_eq!(parked.join().unwrap(), 7);
        // Parked in read(2) instead, this thread was woken about once per frame (200).
        assert!(
            woken < 20,
            "the parked reader was woken {woken} times by 200 frames the agent consumed"
        );
    }

    #[test]
    fn copies_sit_above_the_floor_and_leave_a_reused_number_alone() {
        let (ours, mut agent) = UnixStream::pair().unwrap();
        let mut held = HeldFd::adopt(OwnedFd::from(ours)).unwrap();
        let mut writer = held.try_clone().unwrap();
        assert!(held.raw() >= PRIVATE_FD_FLOOR && writer.raw() >= PRIVATE_FD_FLOOR);
        writer.write_all(b"hi").unwrap();
        let mut two = [0u8; 2];
        agent.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"hi");
        agent.write_all(b"yo").unwrap();
        held.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"yo");

        // The program replaces the writer's number with a socket of its own.
        let (theirs, mut their_peer) = UnixStream::pair().unwrap();
        // SAFETY (test): dup2 onto a number the HeldFd holds, as a program would.
        assert!(unsafe { libc::dup2(theirs.as_raw_fd(), writer.raw()) } >= 0);
        assert!(writer.write(b"frame").is_err());
        writer.shutdown();
        let number = writer.raw();
        drop(writer);
        // Still open (not closed by the drop), still the program's, nothing written.
        assert!(identity(number).is_some());
        their_peer.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        assert!(
            their_peer.read(&mut buf).is_err(),
            "no bytes reached the program's socket"
        );
        // SAFETY (test): the number is the test's own dup, closed once.
        unsafe { libc::close(number) };
    }
}
