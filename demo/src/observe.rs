//! The wrapper every route runs inside: request ids, metrics and the request log.
//!
//! Each request gets an id (`x-request-id` propagated when it is sane, else generated),
//! echoed on the response together with `x-worker`; it is counted and timed under its
//! route *template* through pre-built metric handles; and, when the log level lets info
//! records through, one "Served a request." record is written. With the request log off
//! nothing of the log record is built: no header copy, no strings.
//!
//! A hand-written tower layer rather than `axum::middleware::from_fn`: `from_fn` clones
//! the boxed inner service and boxes the future on every request; here the inner future
//! is created at once and wrapped in the one box the response path needs.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::header::CONNECTION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::response::Response;
use heapwarden_probes::Nested;
use serde::ser::SerializeMap;
use slog::info;
use tower_layer::Layer;
use tower_service::Service;

use super::App;
use super::log::{REDACTED, Redactor};
use super::metrics::names::UNMATCHED;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const WORKER: HeaderName = HeaderName::from_static("x-worker");
const MAX_GIVEN_ID: usize = 128;
const CLOSE: HeaderValue = HeaderValue::from_static("close");

/// Generates request ids `<pid>-<start ms>-<n>` (hex): unique per process start.
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        RequestIds {
            prefix: format!("{:x}-{:x}-", std::process::id(), crate::db::now_ms()),
            next: AtomicU64::new(1),
        }
    }

    fn generate(&self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut digits = [0u8; 16];
        let mut start = digits.len();
        let mut rest = n;
        loop {
            start -= 1;
            digits[start] = HEX[(rest & 0xf) as usize];
            rest >>= 4;
            if rest == 0 {
                break;
            }
        }
        let mut id = [0u8; 64];
        let prefix = self.prefix.as_bytes();
        let len = prefix.len() + digits.len() - start;
        // The prefix is at most 27 bytes (pid and milliseconds in hex, two dashes).
        let Some(out) = id.get_mut(..len) else {
            return HeaderValue::from_static("unknown");
        };
        out[..prefix.len()].copy_from_slice(prefix);
        out[prefix.len()..].copy_from_slice(&digits[start..]);
        HeaderValue::from_bytes(out).unwrap_or(HeaderValue::from_static("unknown"))
    }

    /// The request's id: the client's `x-request-id` when sane, else a new one.
    fn assign(&self, headers: &HeaderMap) -> (HeaderValue, bool) {
        let given = headers.get(&REQUEST_ID).filter(|v| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= MAX_GIVEN_ID && b.iter().all(u8::is_ascii_graphic)
        });
        match given {
            Some(id) => (id.clone(), false),
            None => (self.generate(), true),
        }
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

/// The request id, for handlers that log it.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let id = parts.headers.get(&REQUEST_ID).cloned();
        Ok(RequestId(id.unwrap_or(HeaderValue::from_static(""))))
    }
}

#[derive(Clone)]
pub struct ObserveLayer {
    app: Arc<App>,
}

impl ObserveLayer {
    pub fn new(app: Arc<App>) -> ObserveLayer {
        ObserveLayer { app }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            app: self.app.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    app: Arc<App>,
}

/// What the request log needs from the request, copied only when it is on: the path and
/// the headers as text in one buffer, sensitive header values already redacted. Copied
/// rather than shared: hyper's header values and path are slices of the connection's read
/// buffer, and a slice still held by the log thread makes hyper allocate a fresh 8 KiB
/// read buffer for the next request.
struct Logged {
    text: String,
    path_end: usize,
    /// (name start, value start, value end) of each header in `text`.
    headers: Vec<(usize, usize, usize)>,
}

impl Logged {
    fn copy(path: &str, headers: &HeaderMap, redactor: &Redactor) -> Logged {
        let mut text = String::with_capacity(path.len() + 32 * headers.len());
        text.push_str(path);
        let path_end = text.len();
        let spans = headers
            .iter()
            .map(|(name, value)| {
                let start = text.len();
                text.push_str(name.as_str());
                let value_start = text.len();
                if redactor.is_sensitive(name.as_str()) {
                    text.push_str(REDACTED);
                } else {
                    text.push_str(&String::from_utf8_lossy(value.as_bytes()));
                }
                (start, value_start, text.len())
            })
            .collect();
        Logged {
            text,
            path_end,
            headers: spans,
        }
    }

    fn path(&self) -> &str {
        &self.text[..self.path_end]
    }
}

/// A request being observed: taken at its start, finished on its response.
pub struct Begun {
    started: Instant,
    id: HeaderValue,
    method: Method,
    logged: Option<Arc<Logged>>,
}

/// Starts observing `request`: assigns its id (set on the request for the handlers when
/// `for_handlers` and it was generated) and, with the request log on, copies what the log
/// record needs.
pub fn begin<B>(app: &App, request: &mut axum::http::Request<B>, for_handlers: bool) -> Begun {
    let started = Instant::now();
    let (id, generated) = app.request_ids.assign(request.headers());
    // Copied before a generated id is added: the log shows the headers the client sent.
    let logged = app.log_requests.then(|| {
        let logged = Logged::copy(request.uri().path(), request.headers(), &app.redactor);
        Arc::new(logged)
    });
    if generated && for_handlers {
        request.headers_mut().insert(REQUEST_ID, id.clone());
    }
    Begun {
        started,
        id,
        method: request.method().clone(),
        logged,
    }
}

impl Begun {
    /// Counts, times and logs the request under `route` (its template; None: no route
    /// matched) and sets the response headers every answer carries.
    pub fn finish(self, app: &App, route: Option<&str>, response: &mut Response) {
        let elapsed = self.started.elapsed();
        let status = response.status().as_u16();
        app.handles
            .record_request(route, &self.method, status, elapsed);
        if let Some(logged) = self.logged {
            info!(app.log, "Served a request.";
                "method" => self.method.as_str(), "route" => route.unwrap_or(UNMATCHED),
                "path" => logged.path(), "status" => status,
                "latency_ms" => elapsed.as_secs_f64() * 1000.0,
                "request_id" => self.id.to_str().unwrap_or(""),
                "headers" => Nested(LoggedHeaders(logged.clone())));
        }
        let headers = response.headers_mut();
        headers.insert(REQUEST_ID, self.id);
        headers.insert(WORKER, app.worker_header.clone());
        if app.draining.load(Ordering::Relaxed) {
            // Draining: this connection closes after this answer, so the client's next
            // request opens a new connection, which another worker accepts. Closing idle
            // keep-alive connections instead races with a request already on its way.
            headers.insert(CONNECTION, CLOSE);
        }
    }
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let app = self.app.clone();
        let begun = begin(&app, &mut request, true);
        let route = request.extensions().get::<MatchedPath>().cloned();
        let served = self.inner.call(request);
        Box::pin(async move {
            let Ok(mut response) = served.await;
            begun.finish(&app, route.as_ref().map(MatchedPath::as_str), &mut response);
            Ok(response)
        })
    }
}

/// Request headers as a JSON object (authorization, cookies and the like already
/// redacted), logged [`Nested`]. Shared, so handing it to the log thread copies nothing.
#[derive(Clone)]
struct LoggedHeaders(Arc<Logged>);

impl serde::Serialize for LoggedHeaders {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        let logged = &self.0;
        let mut map = serializer.serialize_map(Some(logged.headers.len()))?;
        for &(start, value_start, end) in &logged.headers {
            map.serialize_entry(
                &logged.text[start..value_start],
                &logged.text[value_start..end],
            )?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_hex_after_the_prefix() {
        let ids = RequestIds::new();
        let first = ids.generate();
        let second = ids.generate();
        assert_ne!(first, second);
        let text = first.to_str().expect("ascii");
        assert!(text.starts_with(&ids.prefix), "{text}");
        assert_eq!(&text[ids.prefix.len()..], "1");
        for _ in 0..30 {
            ids.generate();
        }
        let later = ids.generate();
        assert_eq!(&later.to_str().unwrap()[ids.prefix.len()..], "21");
    }

    #[test]
    fn logged_headers_serialise_as_an_object() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example"));
        headers.insert("authorization", HeaderValue::from_static("Bearer x"));
        let redactor = Redactor::new(None);
        let logged = LoggedHeaders(Arc::new(Logged::copy("/items/1", &headers, &redactor)));
        assert_eq!(logged.0.path(), "/items/1");
        assert!(!logged.0.text.contains("Bearer"), "the secret was copied");
        let json = serde_json::to_value(&logged).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"host": "example", "authorization": REDACTED})
        );
    }

    #[test]
    fn a_sane_given_id_is_kept_and_a_bad_one_replaced() {
        let ids = RequestIds::new();
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-1"));
        assert_eq!(
            ids.assign(&headers),
            (HeaderValue::from_static("abc-1"), false)
        );
        headers.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        let (id, generated) = ids.assign(&headers);
        assert!(generated);
        assert!(id.to_str().unwrap().starts_with(&ids.prefix));
    }
}
