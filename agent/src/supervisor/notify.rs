//! sd_notify in both directions: each worker gets its own notification socket (so a
//! plain program can say `READY=1`), and the agent reports to systemd (`READY=1` once
//! all workers are ready, `STATUS=`, `WATCHDOG=1`, `STOPPING=1`).
//!
//! A worker's socket lives in its private 0700 directory (`rundir`), so no other user can
//! reach it, and every datagram's sender is checked with `SO_PASSCRED`: it must run as the
//! agent's user and be the worker or one of its descendants (or in the worker's process
//! group). Anything else is dropped and logged: a stray `READY=1` must never drain the
//! old worker of a replacement early.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt,
};
use slog::{Logger, debug, warn};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::procstat;

/// A notification's sender, as the kernel vouches for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    pub pid: u32,
    pub uid: u32,
}

/// Why a notification was not believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoCredentials,
    OtherUser { uid: u32 },
    OutsideTree { pid: u32 },
}

impl Refusal {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Refusal::NoCredentials => "no credentials",
            Refusal::OtherUser { .. } => "another user",
            Refusal::OutsideTree { .. } => "outside the worker's process tree",
        }
    }
}

/// The decision: the agent's own user, and a process of the worker's tree.
pub fn check_sender(
    sender: Option<Sender>,
    agent_uid: u32,
    in_worker_tree: impl FnOnce(u32) -> bool,
) -> Result<(), Refusal> {
    let sender = sender.ok_or(Refusal::NoCredentials)?;
    if sender.uid != agent_uid {
        return Err(Refusal::OtherUser { uid: sender.uid });
    }
    if !in_worker_tree(sender.pid) {
        return Err(Refusal::OutsideTree { pid: sender.pid });
    }
    Ok(())
}

/// The worker itself, a descendant, or a process still in its group (an orphan the
/// agent adopted). A sender that already exited cannot be placed and is refused.
pub(super) fn in_tree(proc_root: &Path, pid: u32, worker_pid: u32) -> bool {
    pid == worker_pid
        || procstat::stat(proc_root, pid).is_some_and(|s| s.pgid == worker_pid)
        || procstat::descends_from(proc_root, pid, worker_pid)
}

/// Binds a worker's notification socket at `path` with `SO_PASSCRED` on.
pub fn bind(path: &Path) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::bind(path)?;
    setsockopt(&socket, sockopt::PassCred, &true).map_err(io::Error::from)?;
    Ok(socket)
}

/// A believed `READY=1` from the worker with this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifiedReady(pub u64);

/// Reads a worker's notifications until aborted (when the worker is reaped); a believed
/// `READY=1` becomes a readiness report ([`NotifiedReady`]) for `worker_id` on `ready`.
/// `worker_uid`: the user the worker runs as (`pool.user`); `None`: the agent's own.
pub fn watch_worker<E: From<NotifiedReady> + Send + 'static>(
    socket: UnixDatagram,
    worker_id: u64,
    worker_pid: u32,
    worker_uid: Option<u32>,
    ready: mpsc::Sender<E>,
    log: Logger,
) -> AbortHandle {
    let agent_uid = worker_uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw());
    let task = tokio::spawn(async move {
        let proc_root = Path::new("/proc");
        loop {
            let Ok((text, sender)) = receive(&socket).await else {
                break;
            };
            if let Err(why) =
                check_sender(sender, agent_uid, |pid| in_tree(proc_root, pid, worker_pid))
            {
                warn!(log, "A notification on a worker's socket was refused.";
                    "worker_id" => worker_id, "reason" => why.as_str(),
                    "sender_pid" => sender.map(|s| s.pid), "sender_uid" => sender.map(|s| s.uid));
                continue;
            }
            if text.lines().any(|l| l.trim() == "READY=1") {
                // A slot first, then the message: see `link::closed`.
                let Ok(slot) = ready.reserve().await else {
                    break;
                };
                slot.send(NotifiedReady(worker_id).into());
            } else {
                debug!(log, "A worker sent an sd_notify message."; "message" => %text.trim());
            }
        }
    });
    task.abort_handle()
}

/// Room for the credentials and the most descriptors one message can carry
/// (`SCM_MAX_FD`), so the control data is never truncated and every passed descriptor is
/// seen and closed.
const MAX_PASSED_FDS: usize = 253;

async fn receive(socket: &UnixDatagram) -> io::Result<(String, Option<Sender>)> {
    let fd = socket.as_raw_fd();
    loop {
        socket.readable().await?;
        // Made once a message is there: a worker's socket waits idle for its life, and
        // ~5 KiB of buffers per worker would wait with it.
        let mut buf = vec![0u8; 4096];
        let mut cmsg = nix::cmsg_space!(UnixCredentials, [RawFd; MAX_PASSED_FDS]);
        let received = socket.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
                .map_err(io::Error::from)?;
            let mut sender = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    match c {
                        ControlMessageOwned::ScmCredentials(cred) => {
                            sender = Some(Sender {
                                pid: cred.pid() as u32,
                                uid: cred.uid(),
                            })
                        }
                        // sd_notify_barrier(3) passes a pipe and waits for it to close.
                        ControlMessageOwned::ScmRights(fds) => {
                            for fd in fds {
                                let _ = nix::unistd::close(fd);
                            }
                        }
                        _ => {}
                    }
                }
            }
            Ok((msg.bytes, sender))
        });
        match received {
            Ok((n, sender)) => {
                return Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), sender));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The agent's own notifications to systemd; silent when not run by systemd.
pub struct SystemdNotifier {
    enabled: bool,
    ready_sent: bool,
}

impl SystemdNotifier {
    pub fn from_env() -> SystemdNotifier {
        SystemdNotifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            ready_sent: false,
        }
    }

    pub fn ready(&mut self, status: &str) {
        if self.enabled && !self.ready_sent {
            self.ready_sent = true;
            let _ = sd_notify::notify(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(status),
            ]);
        }
    }

    pub fn status(&self, status: &str) {
        if self.enabled {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(status)]);
        }
    }

    pub fn watchdog(&self) {
        if self.enabled {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }

    pub fn stopping(&self) {
        if self.enabled {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agents_user_inside_the_worker_tree_is_believed() {
        let me = Sender { pid: 10, uid: 1000 };
        assert_eq!(check_sender(Some(me), 1000, |_| true), Ok(()));
        assert_eq!(
            check_sender(Some(Sender { uid: 65534, ..me }), 1000, |_| true),
            Err(Refusal::OtherUser { uid: 65534 })
        );
        assert_eq!(
            check_sender(Some(me), 1000, |_| false),
            Err(Refusal::OutsideTree { pid: 10 })
        );
        assert_eq!(
            check_sender(None, 1000, |_| true),
            Err(Refusal::NoCredentials)
        );
    }

    #[tokio::test]
    async fn credentials_come_with_every_datagram_and_passed_fds_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = bind(&path).unwrap();
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1", &path).unwrap();
        let (text, sender) = receive(&socket).await.unwrap();
        assert_eq!(text, "READY=1");
        assert_eq!(sender.map(|s| s.pid), Some(std::process::id()));
        assert!(in_tree(
            Path::new("/proc"),
            std::process::id(),
            std::process::id()
        ));
        // A barrier: a passed pipe end must be closed by the receiver.
        let (read_end, write_end) = nix::unistd::pipe().unwrap();
        let fds = [write_end.as_raw_fd()];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        let iov = [std::io::IoSlice::new(b"BARRIER=1")];
        let addr = nix::sys::socket::UnixAddr::new(&path).unwrap();
        nix::sys::socket::sendmsg(
            client.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            Some(&addr),
        )
        .unwrap();
        drop(write_end);
        let (text, _) = receive(&socket).await.unwrap();
        assert_eq!(text, "BARRIER=1");
        let mut byte = [0u8; 1];
        let n = nix::unistd::read(&read_end, &mut byte).unwrap();
        assert_eq!(n, 0, "the passed write end was closed: EOF");
    }
}
