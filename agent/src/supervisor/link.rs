//! The agent's end of one worker's control channel. One task owns the socket: it writes
//! requests, matches replies to waiting callers by `seq`, and forwards everything the
//! worker says on its own (hello, ready, invalidations) to the supervisor as events.
//! Frames over [`DECODE_OFF_THREAD`] (a worker's metrics text) are decoded on the
//! blocking pool: a 3 MB frame takes ~50 ms of JSON decoding, which must not stall the
//! runtime thread the supervisor and sampler share.
//!
//! Claims: every `hello` starts a fresh claim (a successor process took the channel
//! over), so requests still waiting on the previous claimant are failed at once instead
//! of waiting out their timeouts. A worker given a probe that says no hello within its
//! grace period gets one log line saying why only procfs figures are sampled.
//!
//! Pushed stats: a probe whose hello says `push` is told once per claim and interval to
//! push its stats on a timer ([`ControlLink::keep_reporting`]); the link keeps the latest
//! push for the sampler ([`ControlLink::take_pushed`]) instead of routing it anywhere, so
//! a round costs such a worker no request and the agent no write.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use heapwarden_protocol::channel::{
    AgentMsg, FrameDecoder, FrameError, PUSHED_SEQ, WorkerMsg, decode_raw, encode,
};
use heapwarden_protocol::clock;

use super::attach::Attached;
use crate::log::Causes;
use slog::{Logger, debug, warn};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Sleep;

/// Requests waiting for a reply beyond this are a sign of a stuck worker; the oldest
/// caller has long timed out, so its slot is reclaimed.
const MAX_PENDING: usize = 1024;
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;

thread_local! {
    /// Every link on a thread reads into this one buffer and hands the bytes to its own
    /// decoder at once, so an idle link holds no read buffer (a pushed stats is ~200 bytes
    /// a second; 8 KiB per worker was most of a link's memory).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; READ_CHUNK]);
}
/// Frames larger than this are decoded off the runtime thread.
pub const DECODE_OFF_THREAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("control channel of worker {worker_id} is closed")]
    Closed { worker_id: u64 },
    #[error("worker {worker_id} did not answer within {timeout:?}")]
    Timeout { worker_id: u64, timeout: Duration },
    #[error("control channel of worker {worker_id} is congested")]
    Congested { worker_id: u64 },
}

type BuildMsg = Box<dyn FnOnce(u64) -> AgentMsg + Send>;

/// Kept small: tokio allocates a channel's first block of 32 slots up front, so a link
/// that never sends holds 32 of these for the worker's life (56 bytes each with the
/// message inline, 24 with it boxed).
enum LinkCommand {
    Request {
        build: BuildMsg,
        reply: oneshot::Sender<WorkerMsg>,
    },
    Send(Box<AgentMsg>),
}

/// What a link reports to the supervisor.
#[derive(Debug)]
pub enum LinkEvent {
    Message { worker_id: u64, msg: WorkerMsg },
    Closed { worker_id: u64 },
}

/// A cheap handle to a worker's control channel.
#[derive(Clone, Debug)]
pub struct ControlLink {
    worker_id: u64,
    tx: mpsc::Sender<LinkCommand>,
    /// Set while the worker writes a heap snapshot (its event loop is blocked), so the
    /// sampler neither asks nor counts a miss, and the leak rules skip the spike.
    dumping: Arc<AtomicBool>,
    /// The current claimant's pushes, shared by the link task (writes) and the sampler.
    pushes: Arc<Mutex<Pushes>>,
}

/// What the link knows of the current claimant's pushed stats.
#[derive(Debug, Default)]
struct Pushes {
    /// Counts hellos, so a successor process is told again.
    claim: u64,
    /// The claimant's hello said it pushes.
    capable: bool,
    /// The claim and interval (ms) the claimant was last told.
    told: Option<(u64, u64)>,
    /// The latest pushed stats and when they arrived; taken by the sampler.
    latest: Option<(Instant, WorkerMsg)>,
}

/// Clears the link's dumping mark when dropped.
pub struct DumpingMark(Arc<AtomicBool>);

impl Drop for DumpingMark {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for LinkCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkCommand")
    }
}

impl ControlLink {
    pub fn worker_id(&self) -> u64 {
        self.worker_id
    }

    /// Whether the worker is writing a heap snapshot right now.
    pub fn is_dumping(&self) -> bool {
        self.dumping.load(Ordering::Relaxed)
    }

    /// Marks the worker busy with a heap snapshot until the mark is dropped.
    pub fn mark_dumping(&self) -> DumpingMark {
        self.dumping.store(true, Ordering::Relaxed);
        DumpingMark(self.dumping.clone())
    }

    /// Tells a probe that pushes to send its stats every `every`, the first at
    /// `first_push` (named on the host's monotonic clock, so every probe pushes at that
    /// same instant, and as a delay from now for older probes), unless its current
    /// claimant was told this interval already. A probe that does not push (an older
    /// one) is never told, and stays asked. True when a report was sent.
    pub fn keep_reporting(&self, every: Duration, first_push: Instant) -> bool {
        let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        let mut pushes = self.pushes();
        if !pushes.capable || pushes.told == Some((pushes.claim, every_ms)) {
            return false;
        }
        let first = first_push.saturating_duration_since(Instant::now());
        let report = AgentMsg::Report {
            every_ms,
            first_ms: u64::try_from(first.as_millis()).unwrap_or(u64::MAX),
            at_us: Some(clock::monotonic_us_at(first_push)),
        };
        if self.send(report).is_err() {
            return false;
        }
        pushes.told = Some((pushes.claim, every_ms));
        true
    }

    /// The latest pushed stats if they arrived after `since`; each push is taken once.
    pub fn take_pushed(&self, since: Instant) -> Option<WorkerMsg> {
        let mut pushes = self.pushes();
        match pushes.latest.take() {
            Some((at, msg)) if at > since => Some(msg),
            _ => None,
        }
    }

    fn pushes(&self) -> MutexGuard<'_, Pushes> {
        // Nothing panics while holding it; a poisoned lock still holds whole values.
        self.pushes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a request built around a fresh sequence number and waits for the reply
    /// carrying the same number.
    pub async fn request(
        &self,
        build: impl FnOnce(u64) -> AgentMsg + Send + 'static,
        timeout: Duration,
    ) -> Result<WorkerMsg, LinkError> {
        let (reply, wait) = oneshot::channel();
        let command = LinkCommand::Request {
            build: Box::new(build),
            reply,
        };
        self.tx.try_send(command).map_err(|e| self.send_error(e))?;
        let worker_id = self.worker_id;
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(msg)) => Ok(msg),
            Ok(Err(_)) => Err(LinkError::Closed { worker_id }),
            Err(_) => Err(LinkError::Timeout { worker_id, timeout }),
        }
    }

    /// Sends a message that expects no reply; never waits.
    pub fn send(&self, msg: AgentMsg) -> Result<(), LinkError> {
        self.tx
            .try_send(LinkCommand::Send(Box::new(msg)))
            .map_err(|e| self.send_error(e))
    }

    fn send_error<T>(&self, e: mpsc::error::TrySendError<T>) -> LinkError {
        let worker_id = self.worker_id;
        match e {
            mpsc::error::TrySendError::Full(_) => LinkError::Congested { worker_id },
            mpsc::error::TrySendError::Closed(_) => LinkError::Closed { worker_id },
        }
    }
}

/// Starts the task that owns `stream` and returns its handle.
///
/// `hello_grace`: the probe the worker was given and how long it has to say hello.
///
/// Events go to `events` as `E` (the supervisor's one inbox, or plain [`LinkEvent`]s).
pub fn spawn_link<E: From<LinkEvent> + Send + 'static>(
    stream: UnixStream,
    worker_id: u64,
    events: mpsc::Sender<E>,
    hello_grace: Option<(Attached, Duration)>,
    log: Logger,
) -> ControlLink {
    let (tx, rx) = mpsc::channel(256);
    let pushes: Arc<Mutex<Pushes>> = Arc::default();
    let link = ControlLink {
        worker_id,
        tx,
        dumping: Arc::default(),
        pushes,
    };
    tokio::spawn(run_link(stream, link.clone(), rx, events, hello_grace, log));
    link
}

async fn run_link<E: From<LinkEvent>>(
    mut stream: UnixStream,
    own: ControlLink,
    mut commands: mpsc::Receiver<LinkCommand>,
    events: mpsc::Sender<E>,
    hello_grace: Option<(Attached, Duration)>,
    log: Logger,
) {
    let worker_id = own.worker_id;
    // The handle's sender would keep `commands` open forever; the link only needs the
    // shared push state.
    let pushes = own.pushes.clone();
    drop(own);
    let mut pending: HashMap<u64, oneshot::Sender<WorkerMsg>> = HashMap::new();
    // Requests count from after PUSHED_SEQ, so no answer is taken for a push.
    let mut next_seq: u64 = PUSHED_SEQ + 1;
    let mut decoder = FrameDecoder::new();
    let mut hello_seen = false;
    // Boxed and dropped once over: a timer is ~100 bytes the task would otherwise keep
    // for the worker's life.
    let mut grace = hello_grace.map(|(_, d)| Box::pin(tokio::time::sleep(d)));
    loop {
        tokio::select! {
            () = until(&mut grace), if grace.is_some() => {
                grace = None;
                if !hello_seen && let Some((probe, after)) = hello_grace {
                    warn!(log, "The worker did not load its probe; only procfs figures are sampled.";
                        "probe" => probe.as_str(), "after_seconds" => after.as_secs_f64(),
                        "reason" => "no hello on the control channel within the grace period (an old runtime, a wrapper that does not run node, or NODE_OPTIONS replaced by the app)");
                }
            }
            command = commands.recv() => {
                let Some(command) = command else { break };
                let msg = match command {
                    LinkCommand::Send(msg) => *msg,
                    LinkCommand::Request { build, reply } => {
                        let seq = next_seq;
                        next_seq += 1;
                        if pending.len() >= MAX_PENDING {
                            pending.retain(|_, waiter| !waiter.is_closed());
                        }
                        pending.insert(seq, reply);
                        build(seq)
                    }
                };
                let frame = match encode(&msg) {
                    Ok(f) => f,
                    Err(e) => {
                        warn!(log, "A control message could not be encoded."; "error" => %Causes(&e));
                        continue;
                    }
                };
                if let Err(e) = stream.write_all(&frame).await {
                    debug!(log, "The control channel closed while writing."; "error" => %Causes(&e));
                    break;
                }
            }
            more = read_available(&mut stream, &mut decoder) => {
                if !more {
                    break;
                }
                loop {
                    match decoder.next_raw() {
                        Ok(Some(frame)) => match decode(frame).await {
                            Ok(msg) => {
                                if let WorkerMsg::Hello { push, .. } = msg {
                                    hello_seen = true;
                                    // A fresh claim: the previous claimant will not answer.
                                    pending.clear();
                                    let mut pushes = pushes.lock().unwrap_or_else(|p| p.into_inner());
                                    pushes.claim += 1;
                                    pushes.capable = push;
                                    pushes.latest = None;
                                }
                                if let WorkerMsg::Stats { seq: PUSHED_SEQ, .. } = msg {
                                    pushes.lock().unwrap_or_else(|p| p.into_inner()).latest =
                                        Some((Instant::now(), msg));
                                    continue;
                                }
                                // Boxed: routing is the task's largest state (1,312 bytes of
                                // future with it inline, 968 without), and pushes, most of
                                // a worker's messages, never get here.
                                Box::pin(route(msg, worker_id, &mut pending, &events)).await
                            }
                            Err(e) => {
                                warn!(log, "The worker sent a malformed control message; ignoring it."; "error" => %Causes(&e));
                            }
                        },
                        Ok(None) => break,
                        Err(e) if e.is_fatal() => {
                            warn!(log, "The worker sent an unreadable control frame; closing the channel."; "error" => %Causes(&e));
                            return closed(worker_id, &events).await;
                        }
                        Err(e) => {
                            warn!(log, "The worker sent a malformed control message; ignoring it."; "error" => %Causes(&e));
                        }
                    }
                }
            }
        }
    }
    closed(worker_id, &events).await;
}

/// Tells the supervisor the link is gone. Here and in [`route`] a slot in the inbox is
/// taken before the event is built: the link's task is allocated for the worker's life at
/// the size of its largest state, and a `send` future would add a whole event to it.
async fn closed<E: From<LinkEvent>>(worker_id: u64, events: &mpsc::Sender<E>) {
    if let Ok(slot) = events.reserve().await {
        slot.send(LinkEvent::Closed { worker_id }.into());
    }
}

/// Waits for the hello grace period to end; forever when there is none.
async fn until(grace: &mut Option<Pin<Box<Sleep>>>) {
    match grace {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

/// Waits for `stream` to have bytes and moves up to one chunk of them into `decoder`
/// through the thread's scratch buffer; false at the end of the stream or on an error. A
/// large frame (metrics text) takes several turns of the link's loop, as other tasks run
/// in between.
///
/// Read through `AsyncRead`, not `readable` and `try_read`: tokio takes a short read as
/// a drained socket, so a pushed report costs one `recv`, not a second that says `EAGAIN`
/// (16 workers' pushes were a sixth of the agent's system calls).
fn read_available<'a>(
    stream: &'a mut UnixStream,
    decoder: &'a mut FrameDecoder,
) -> impl Future<Output = bool> + 'a {
    std::future::poll_fn(move |cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(false),
                Poll::Ready(Ok(())) => {
                    decoder.push(buf.filled());
                    Poll::Ready(true)
                }
                Poll::Ready(Err(e)) => Poll::Ready(e.kind() == std::io::ErrorKind::Interrupted),
            }
        })
    })
}

/// Decodes a frame, a large one on the blocking pool. The link waits for it (one at a
/// time, so a flood of large frames holds one frame's memory, not many) while the
/// runtime thread runs everything else.
async fn decode(frame: Vec<u8>) -> Result<WorkerMsg, FrameError> {
    if frame.len() <= DECODE_OFF_THREAD {
        return decode_raw(&frame);
    }
    tokio::task::spawn_blocking(move || decode_raw(&frame))
        .await
        .unwrap_or_else(|e| Err(FrameError::Malformed(e.to_string())))
}

async fn route<E: From<LinkEvent>>(
    msg: WorkerMsg,
    worker_id: u64,
    pending: &mut HashMap<u64, oneshot::Sender<WorkerMsg>>,
    events: &mpsc::Sender<E>,
) {
    let reply_seq = match &msg {
        WorkerMsg::Stats { seq, .. }
        | WorkerMsg::ProfileWritten { seq, .. }
        | WorkerMsg::Pong { seq }
        | WorkerMsg::Invalidated { seq } => Some(*seq),
        _ => None,
    };
    if let Some(waiter) = reply_seq.and_then(|seq| pending.remove(&seq)) {
        let _ = waiter.send(msg);
        return;
    }
    if let Ok(slot) = events.reserve().await {
        slot.send(LinkEvent::Message { worker_id, msg }.into());
    }
}

#[cfg(test)]
mod tests {
    use heapwarden_protocol::channel::{WorkerMsg, encode};
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixStream;
    use tokio::sync::mpsc;

    use super::{LinkEvent, spawn_link};

    /// What a worker writes comes out whole and in order however the reads split it: a
    /// frame of many read chunks (decoded off the thread), a small one in the same write,
    /// then the end of the stream as `Closed`.
    #[tokio::test]
    async fn frames_split_across_reads_arrive_whole_then_the_close() {
        let (agent_end, mut worker_end) = UnixStream::pair().unwrap();
        let (events, mut events_rx) = mpsc::channel::<LinkEvent>(16);
        let _link = spawn_link(
            agent_end,
            7,
            events,
            None,
            slog::Logger::root(slog::Discard, slog::o!()),
        );
        let key = "k".repeat(3 * super::DECODE_OFF_THREAD);
        let mut bytes = encode(&WorkerMsg::Invalidate {
            seq: 1,
            key: key.clone(),
            version: 2,
        })
        .unwrap();
        bytes.extend(encode(&WorkerMsg::Ready).unwrap());
        worker_end.write_all(&bytes).await.unwrap();
        drop(worker_end);
        let mut seen = Vec::new();
        let wait = std::time::Duration::from_secs(10);
        while let Ok(Some(event)) = tokio::time::timeout(wait, events_rx.recv()).await {
            seen.push(match event {
                LinkEvent::Message {
                    worker_id: 7,
                    msg: WorkerMsg::Invalidate { key: got, .. },
                } => {
                    assert_eq!(got.len(), key.len());
                    "invalidate"
                }
                LinkEvent::Message {
                    worker_id: 7,
                    msg: WorkerMsg::Ready,
                } => "ready",
                LinkEvent::Closed { worker_id: 7 } => "closed",
                other => panic!("unexpected {other:?}"),
            });
        }
        assert_eq!(seen, ["invalidate", "ready", "closed"]);
    }

    /// A link's command channel allocates room for 32 commands when it is made, and most
    /// links never send one: the command must stay small (see [`super::LinkCommand`]).
    #[test]
    fn a_link_command_is_three_words() {
        assert!(std::mem::size_of::<super::LinkCommand>() <= 24);
    }
}
