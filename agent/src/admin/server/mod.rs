//! The admin server's own thread and runtime (as linkerd's admin runs on its own small
//! runtime), so nothing a client does — slow bodies, big scrapes, floods of connections —
//! runs on the thread that supervises and samples the workers. It owns the connection
//! limits: `header-timeout` (hyper's header read timer, which also closes idle keep-alive
//! connections), `idle-timeout` (no byte moved while no request is in hand), and a cap on
//! open connections sized to the fd limit so admin clients can never take the fds the
//! supervisor needs. At the cap the longest-idle connection is closed for the new one
//! (so idle and slow clients cannot lock out `/healthz`); when every connection is busy
//! the new one is closed at once.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use slog::{Logger, info, warn};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

use crate::metric_names::{ADMIN_CONNECTIONS_CLOSED, ADMIN_CONNECTIONS_OPEN};

mod io;

use crate::log::Causes;
use io::TrackedIo;

/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// How long the accept loop waits for an evicted connection to let go of its descriptor
/// before taking the next one: a burst of connects then waits in the kernel's backlog
/// instead of piling up descriptors that are closing.
const EVICT_WAIT: Duration = Duration::from_millis(200);
/// File descriptors kept for the agent itself whatever the admin clients do.
const FD_RESERVE: u64 = 64;
/// Per worker: control socket, stdout/stderr pipes, notify socket, a replacement's set
/// (16), and what the sampler keeps open for its tree: up to 8 `stat` files
/// (`sampler::tree::KEPT_OPEN`) and up to 8 of the worker's threads' `children` files
/// (`procfs::KEPT_THREADS`).
const FD_PER_WORKER: u64 = 32;
/// Blocking threads of the admin runtime (metrics rendering, profile diffs).
const BLOCKING_THREADS: usize = 2;

/// How the server treats its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

pub use crate::metric_names::labels::ConnectionClose as CloseReason;

/// Counts a closed connection.
fn count_closed(reason: CloseReason) {
    metrics::counter!(ADMIN_CONNECTIONS_CLOSED.name, "reason" => reason.as_str()).increment(1);
}

/// Raises the soft fd limit to the hard one; returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// The connection cap that leaves the supervisor its fds: half of what is left after the
/// reserve and the workers' share (a connection may hold a profile file open too).
pub fn connection_budget(max_connections: usize, fd_limit: u64, workers: usize) -> usize {
    let reserved = FD_RESERVE.saturating_add(FD_PER_WORKER.saturating_mul(workers as u64));
    let spare = fd_limit.saturating_sub(reserved) / 2;
    max_connections
        .min(usize::try_from(spare).unwrap_or(usize::MAX))
        .max(1)
}

/// A running admin server; stops when dropped.
pub struct AdminServer {
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Starts the thread. `listener` is already bound (so bind errors stop the agent
    /// before anything else starts).
    pub fn spawn(
        listener: std::net::TcpListener,
        router: Router,
        limits: Limits,
        log: Logger,
    ) -> std::io::Result<AdminServer> {
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(BLOCKING_THREADS)
            .thread_name("admin-blocking")
            .build()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => accept_loop(listener, router, limits, log, stopped).await,
                        Err(e) => {
                            warn!(log, "The admin server could not start."; "error" => %Causes(&e))
                        }
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(AdminServer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops accepting, closes every connection and waits for the thread.
    pub fn stop(mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What the accept loop and a connection's task share about it.
struct Conn {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last byte read or written.
    last_active_ms: AtomicU64,
    requests_in_hand: AtomicUsize,
    close: CancellationToken,
    closed: AtomicBool,
    /// Cancelled once the connection's task has dropped its socket.
    finished: CancellationToken,
}

impl Conn {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_active_ms.store(ms, Ordering::Relaxed);
    }

    fn last_active(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_active_ms.load(Ordering::Relaxed))
    }

    fn busy(&self) -> bool {
        self.requests_in_hand.load(Ordering::Relaxed) > 0
    }

    /// Still counted against the cap: open, and not already told to close.
    fn counts(&self) -> bool {
        !self.closed.load(Ordering::Relaxed) && !self.close.is_cancelled()
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    log: Logger,
    stop: CancellationToken,
) {
    info!(log, "The admin server is listening.";
        "max_connections" => limits.max_connections,
        "header_timeout_ms" => limits.header_timeout.as_millis() as u64,
        "idle_timeout_ms" => limits.idle_timeout.as_millis() as u64);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let epoch = Instant::now();
    let mut open: Vec<Arc<Conn>> = Vec::new();
    let mut accept_failing = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if !accept_failing {
                    warn!(log, "The admin server cannot accept connections."; "error" => %Causes(&e));
                    accept_failing = true;
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        accept_failing = false;
        open.retain(|c| !c.closed.load(Ordering::Relaxed));
        if open.iter().filter(|c| c.counts()).count() >= limits.max_connections {
            let victim = open
                .iter()
                .filter(|c| c.counts() && !c.busy())
                .min_by_key(|c| c.last_active());
            match victim {
                Some(victim) => {
                    victim.close.cancel();
                    count_closed(CloseReason::Evicted);
                    let finished = victim.finished.clone();
                    let _ = tokio::time::timeout(EVICT_WAIT, finished.cancelled()).await;
                }
                None => {
                    drop(stream);
                    count_closed(CloseReason::Refused);
                    continue;
                }
            }
        }
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(Conn {
            epoch,
            last_active_ms: AtomicU64::new(epoch.elapsed().as_millis() as u64),
            requests_in_hand: AtomicUsize::new(0),
            close: stop.child_token(),
            closed: AtomicBool::new(false),
            finished: CancellationToken::new(),
        });
        open.push(conn.clone());
        metrics::gauge!(ADMIN_CONNECTIONS_OPEN.name).increment(1.0);
        tokio::spawn(serve_connection(
            http.clone(),
            stream,
            router.clone(),
            conn,
            limits.idle_timeout,
        ));
    }
}

async fn serve_connection(
    http: hyper::server::conn::http1::Builder,
    stream: TcpStream,
    router: Router,
    conn: Arc<Conn>,
    idle_timeout: Duration,
) {
    let io = TokioIo::new(TrackedIo::new(stream, {
        let conn = conn.clone();
        move || conn.touch()
    }));
    let service = TrackedService {
        router,
        conn: conn.clone(),
    };
    // The block owns the connection, so its socket is closed when the block ends.
    let reason = {
        let connection = http.serve_connection(io, service);
        tokio::pin!(connection);
        loop {
            let idle_deadline = conn.last_active() + idle_timeout;
            tokio::select! {
                result = connection.as_mut() => {
                    break result.err().filter(hyper::Error::is_timeout).map(|_| CloseReason::HeaderTimeout);
                }
                () = conn.close.cancelled() => break None,
                () = tokio::time::sleep_until(idle_deadline) => {
                    if !conn.busy() && conn.last_active() + idle_timeout <= Instant::now() {
                        break Some(CloseReason::Idle);
                    }
                }
            }
        }
    };
    if let Some(reason) = reason {
        count_closed(reason);
    }
    conn.closed.store(true, Ordering::Relaxed);
    conn.finished.cancel();
    metrics::gauge!(ADMIN_CONNECTIONS_OPEN.name).decrement(1.0);
}

/// The router, counting requests in hand on the connection.
#[derive(Clone)]
struct TrackedService {
    router: Router,
    conn: Arc<Conn>,
}

/// Decrements the connection's requests in hand when the handler is done or dropped.
struct InHand(Arc<Conn>);

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.requests_in_hand.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for TrackedService {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.conn.requests_in_hand.fetch_add(1, Ordering::Relaxed);
        let in_hand = InHand(self.conn.clone());
        let response = self.router.clone().call(request.map(Body::new));
        Box::pin(async move {
            let response = response.await;
            drop(in_hand);
            response
        })
    }
}

#[cfg(test)]
mod tests;
