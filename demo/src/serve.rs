//! The HTTP/1 server loop: accepts on the (shared) listening socket, serves each
//! connection with hyper, answers L1 hits of `GET /items/{id}` before the router, and
//! drains without failing a request.
//!
//! Why not `axum::serve`: it sniffs every connection for HTTP/2 (the demo speaks HTTP/1)
//! and, on shutdown, closes idle keep-alive connections at once, which races with a
//! request the client is already sending on one: under load that request fails. Here a
//! draining worker stops accepting (the kernel hands queued and new connections to the
//! other workers on the shared socket), answers each open connection's next request with
//! `Connection: close`, and only closes what is still open and idle after
//! `IDLE_CLOSE_AFTER`.
//!
//! Why a fast path: an L1 hit is a map lookup and a reference-count increment; going
//! through the router for it (boxed route services cloned per request, extensions for the
//! matched path and URL parameters, the path extractor's decoding) cost more than the
//! rest of the request together. Everything else, including L1 misses and malformed ids,
//! goes through the router, so answers stay the same.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use axum::response::Response;
use futures_util::future::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use slog::{Logger, warn};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

use super::App;
use super::items::Layer;
use super::{observe, routes};

/// After `stop`, connections still open and idle this long are closed.
const IDLE_CLOSE_AFTER: Duration = Duration::from_secs(1);
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
const ITEM_ROUTE: &str = "/items/{id}";

#[derive(Clone)]
struct DemoService {
    app: Arc<App>,
    router: Router,
}

impl hyper::service::Service<Request<Incoming>> for DemoService {
    type Response = Response;
    type Error = Infallible;
    type Future =
        Either<Ready<Result<Response, Infallible>>, axum::routing::future::RouteFuture<Infallible>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(response) = l1_hit(&self.app, &mut request) {
            return Either::Left(ready(Ok(response)));
        }
        // The router is always ready and cloning it is one reference count.
        Either::Right(self.router.clone().call(request.map(Body::new)))
    }
}

/// `GET /items/{id}` answered from L1, or None for the router to handle.
fn l1_hit<B>(app: &App, request: &mut Request<B>) -> Option<Response> {
    if request.method() != Method::GET {
        return None;
    }
    let id = item_id(request.uri().path())?;
    let cached = app.l1.get(id)?;
    let begun = observe::begin(app, request, false);
    app.handles.count_lookup(Some(Layer::L1));
    let mut response = routes::item_response(cached.body, Layer::L1);
    begun.finish(app, Some(ITEM_ROUTE), &mut response);
    Some(response)
}

/// The id of `/items/<integer>`; anything else (percent-encoding included) is left to
/// the router.
fn item_id(path: &str) -> Option<i64> {
    let raw = path.strip_prefix("/items/")?;
    if raw.is_empty()
        || !raw
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'-' || b == b'+')
    {
        return None;
    }
    raw.parse().ok()
}

/// Serves until `stop`, then drains; returns once every connection closed.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    router: Router,
    stop: CancellationToken,
    log: Logger,
) {
    let service = DemoService { app, router };
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(log, "Accepting a connection failed."; "error" => error.to_string());
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Small answers go out at once instead of waiting for the peer's ACK.
        let _ = stream.set_nodelay(true);
        let connection =
            graceful.watch(http.serve_connection(TokioIo::new(stream), service.clone()));
        tokio::spawn(connection);
    }
    drop(listener);
    drain(graceful).await;
}

/// Gives open connections `IDLE_CLOSE_AFTER` to close themselves (each closes after its
/// next answer), then closes the idle rest and waits for requests in flight.
async fn drain(graceful: GracefulShutdown) {
    let idle_deadline = tokio::time::Instant::now() + IDLE_CLOSE_AFTER;
    while graceful.count() > 0 && tokio::time::Instant::now() < idle_deadline {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::item_id;

    #[test]
    fn only_plain_integer_ids_take_the_fast_path() {
        assert_eq!(item_id("/items/17"), Some(17));
        assert_eq!(item_id("/items/-3"), Some(-3));
        assert_eq!(item_id("/items/export"), None);
        assert_eq!(item_id("/items/"), None);
        assert_eq!(item_id("/items/1/"), None);
        assert_eq!(item_id("/items/%31"), None);
        assert_eq!(item_id("/items/99999999999999999999"), None);
        assert_eq!(item_id("/jobs/1"), None);
    }
}
