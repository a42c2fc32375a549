//! The agent's end of a worker's forked children's channels (pre-fork servers: gunicorn,
//! uwsgi, celery prefork). Each worker gets a Unix stream socket in its private
//! directory (`w<id>/probe`, path in `HEAPWARDEN_CHILD_SOCKET`); a forked child that
//! keeps running connects there with the native probe and speaks the ordinary control
//! protocol on its own connection (see `probes/preload/src/children.rs` for why a
//! connection per child rather than frames over the worker's channel).
//!
//! One task per worker owns the listener and the children's links and publishes the live
//! set on a `watch` channel that the sampler (heap figures) and the watchdog (the leak
//! profile of the child that grew) read. A connection is believed only when the kernel
//! says (`SO_PEERCRED`) it comes from the agent's user and from a process of the worker's
//! own tree; the pid is the kernel's, never the hello's.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use slog::{Logger, debug, o, warn};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::link::{ControlLink, LinkEvent, spawn_link};
use super::notify::{Sender, check_sender, in_tree};

/// A fork bomb in a worker must not cost the agent unbounded links.
pub const MAX_CHILD_LINKS: usize = 256;

/// One connected child.
#[derive(Debug, Clone)]
pub struct ChildLink {
    pub pid: u32,
    pub link: ControlLink,
}

/// The worker's connected children, newest state first published.
pub type ChildLinks = watch::Receiver<Arc<[ChildLink]>>;

/// Binds the worker's socket for children at `path` (in its 0700 directory).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    UnixListener::bind(path)
}

/// Starts the task that accepts `worker_pid`'s children on `listener`; it stops when
/// aborted (the worker was reaped).
pub fn spawn_listener(
    listener: UnixListener,
    worker_pid: u32,
    log: Logger,
) -> (AbortHandle, ChildLinks) {
    let (publish, links) = watch::channel::<Arc<[ChildLink]>>(Arc::from([]));
    let task = tokio::spawn(run(listener, worker_pid, publish, log));
    (task.abort_handle(), links)
}

async fn run(
    listener: UnixListener,
    worker_pid: u32,
    publish: watch::Sender<Arc<[ChildLink]>>,
    log: Logger,
) {
    let agent_uid = nix::unistd::geteuid().as_raw();
    let proc_root = Path::new("/proc");
    // Made at the first child: most workers never fork one, and the channel's first
    // block of slots is ~6 KiB per worker.
    let mut events: Option<(mpsc::Sender<LinkEvent>, mpsc::Receiver<LinkEvent>)> = None;
    // connection number → child; the number tells a closed old connection of a reused
    // pid from the live one.
    let mut children: BTreeMap<u64, ChildLink> = BTreeMap::new();
    let mut next_connection: u64 = 1;
    let mut warned_full = false;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let sender = stream.peer_cred().ok().and_then(|c| {
                    Some(Sender { pid: u32::try_from(c.pid()?).ok()?, uid: c.uid() })
                });
                if let Err(why) =
                    check_sender(sender, agent_uid, |pid| in_tree(proc_root, pid, worker_pid))
                {
                    warn!(log, "A connection on a worker's socket for children was refused.";
                        "reason" => why.as_str(), "sender_pid" => sender.map(|s| s.pid),
                        "sender_uid" => sender.map(|s| s.uid));
                    continue;
                }
                let pid = sender.map_or(0, |s| s.pid);
                if children.len() >= MAX_CHILD_LINKS {
                    if !std::mem::replace(&mut warned_full, true) {
                        warn!(log, "A worker has too many forked children reporting; further ones are sampled from procfs only.";
                            "limit" => MAX_CHILD_LINKS);
                    }
                    continue;
                }
                let connection = next_connection;
                next_connection += 1;
                let (events_tx, _) = events.get_or_insert_with(|| mpsc::channel(64));
                let link = spawn_link(stream, connection, events_tx.clone(), None,
                    log.new(o!("child_pid" => pid)));
                debug!(log, "A forked child of the worker connected."; "child_pid" => pid);
                children.insert(connection, ChildLink { pid, link });
                publish.send_replace(children.values().cloned().collect());
            }
            Some(event) = async {
                match events.as_mut() {
                    Some((_, rx)) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                // Children's own messages (hello, ready) decide nothing; only their end
                // matters.
                if let LinkEvent::Closed { worker_id: connection } = event
                    && children.remove(&connection).is_some()
                {
                    publish.send_replace(children.values().cloned().collect());
                }
            }
        }
    }
}
