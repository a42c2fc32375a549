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
use std::io::Write as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::response::Response;
use serde::ser::SerializeMap;
use slog::{Key, Record, SerdeValue, Serializer, info};
use tower_layer::Layer;
use tower_service::Service;

use super::App;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const WORKER: HeaderName = HeaderName::from_static("x-worker");
const MAX_GIVEN_ID: usize = 128;

/// Generates request ids `<pid>-<start ms>-<n>` (hex): unique per process start.
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> RequestIds {
        RequestIds {
            prefix: format!("{:x}-{:x}-", std::process::id(), crate::demo::db::now_ms()),
            next: AtomicU64::new(1),
        }
    }

    fn generate(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 64];
        let mut out = &mut buf[..];
        // 64 bytes hold the prefix (at most 8 + 1 + 16 + 1 hex digits) and a u64 in hex.
        let _ = write!(out, "{}{n:x}", self.prefix);
        let len = 64 - out.len();
        HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static("unknown"))
    }

    /// The request's id; a generated one is also set on the request for handlers.
    fn assign(&self, headers: &mut HeaderMap) -> HeaderValue {
        let given = headers.get(&REQUEST_ID).filter(|v| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= MAX_GIVEN_ID && b.iter().all(u8::is_ascii_graphic)
        });
        if let Some(id) = given {
            return id.clone();
        }
        let id = self.generate();
        headers.insert(REQUEST_ID, id.clone());
        id
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

/// What the request log needs from the request, copied only when it is on.
struct Logged {
    path: Uri,
    headers: Arc<HeaderMap>,
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
        let started = Instant::now();
        let app = self.app.clone();
        let id = app.request_ids.assign(request.headers_mut());
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = request.method().clone();
        let logged = app.log_requests.then(|| Logged {
            path: request.uri().clone(),
            headers: Arc::new(request.headers().clone()),
        });
        let served = self.inner.call(request);
        Box::pin(async move {
            let Ok(mut response) = served.await;
            let elapsed = started.elapsed();
            let status = response.status().as_u16();
            let route = route.as_ref().map(MatchedPath::as_str);
            app.handles.record_request(route, &method, status, elapsed);
            if let Some(logged) = logged {
                info!(app.log, "Served a request.";
                    "method" => method.as_str(), "route" => route.unwrap_or(super::metrics::UNMATCHED),
                    "path" => logged.path.path(), "status" => status,
                    "latency_ms" => elapsed.as_secs_f64() * 1000.0,
                    "request_id" => id.to_str().unwrap_or(""),
                    "headers" => LoggedHeaders(logged.headers));
            }
            let headers = response.headers_mut();
            headers.insert(REQUEST_ID, id);
            headers.insert(WORKER, app.worker_header.clone());
            Ok(response)
        })
    }
}

/// Request headers as a nested JSON object in the log record (the log's redaction drops
/// authorization, cookies and the like). Shared, so handing it to the log thread copies
/// nothing.
#[derive(Clone)]
struct LoggedHeaders(Arc<HeaderMap>);

impl serde::Serialize for LoggedHeaders {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0.iter() {
            map.serialize_entry(name.as_str(), &String::from_utf8_lossy(value.as_bytes()))?;
        }
        map.end()
    }
}

impl slog::Value for LoggedHeaders {
    fn serialize(&self, _: &Record, key: Key, serializer: &mut dyn Serializer) -> slog::Result {
        serializer.emit_serde(key, self)
    }
}

impl SerdeValue for LoggedHeaders {
    fn as_serde(&self) -> &dyn erased_serde::Serialize {
        self
    }

    fn to_sendable(&self) -> Box<dyn SerdeValue + Send + 'static> {
        Box::new(self.clone())
    }
}
