//! A Pyroscope push receiver for the end-to-end tests: a small hyper server speaking
//! Connect's `POST /push.v1.PusherService/Push` (`application/proto`) as the published
//! schema and Pyroscope's validation rules define it. It decodes the `PushRequest` with
//! its own message definitions (not the agent's), gunzips and decodes each pprof, and
//! refuses what Pyroscope refuses — no `service_name`, invalid or duplicate label names,
//! more than 30 labels, a profile over 4 MiB uncompressed or older than 1 h — with
//! Connect's JSON error body and status. On command it answers 429 + `Retry-After`,
//! 400, 503, hangs, or is down (its port closed). `start_tls` serves the same over TLS
//! with a certificate from a test CA (`crate::tls`), counting failed handshakes.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prost::Message;

/// `push.v1.PushRequest` and friends, field numbers from grafana/pyroscope's
/// `api/push/v1/push.proto` and `api/types/v1/types.proto`.
#[derive(Clone, PartialEq, Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub series: Vec<RawProfileSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RawProfileSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<LabelPair>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<RawSample>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RawSample {
    #[prost(bytes = "vec", tag = "1")]
    pub raw_profile: Vec<u8>,
    #[prost(string, tag = "2")]
    pub id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// The parts of google's `profile.proto` the receiver reads.
#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
}

/// How the receiver answers the next pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Validate, store, 200.
    Accept,
    /// 429 with `Retry-After: secs`.
    TooMany { retry_after_secs: u64 },
    /// 400 `invalid_argument` whatever the request.
    BadRequest,
    /// 503 `unavailable`.
    Unavailable,
    /// Read the request, never answer.
    Hang,
}

/// One accepted profile.
#[derive(Debug, Clone)]
pub struct Received {
    pub labels: BTreeMap<String, String>,
    pub id: String,
    /// Function names of the samples with a non-zero value.
    pub functions: Vec<String>,
    pub time_nanos: i64,
    pub at: Instant,
    /// Wall clock of arrival (comparable with the agent's `created_unix_ms`).
    pub unix_ms: u64,
    /// The push's `Authorization` header ("" without one).
    pub authorization: String,
}

impl Received {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Every push attempt: its time and the status answered (0: hung).
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub at: Instant,
    pub status: u16,
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    received: Vec<Received>,
    attempts: Vec<Attempt>,
    /// TLS handshakes that failed (the client refused the certificate, or spoke plain
    /// HTTP).
    handshake_failures: usize,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Shared,
    tls: Option<tokio_rustls::TlsAcceptor>,
    runtime: tokio::runtime::Runtime,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// Listening on a free loopback port, accepting.
    pub fn start() -> Receiver {
        Receiver::start_with(None)
    }

    /// The same over TLS, presenting `ca`'s server certificate (for 127.0.0.1).
    pub fn start_tls(ca: &crate::tls::TestCa) -> Receiver {
        Receiver::start_with(Some(tokio_rustls::TlsAcceptor::from(ca.server_config())))
    }

    fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("receiver runtime");
        let shared: Shared = Arc::default();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let mut receiver = Receiver {
            addr,
            shared,
            tls,
            runtime,
            server: None,
        };
        receiver.serve(listener);
        receiver
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let shared = self.shared.clone();
        let tls = self.tls.clone();
        self.server = Some(self.runtime.spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let Some(tls) = tls else {
                        return serve_connection(stream, shared).await;
                    };
                    match tls.accept(stream).await {
                        Ok(stream) => serve_connection(stream, shared).await,
                        Err(_) => {
                            let (lock, cvar) = &*shared;
                            lock.lock().unwrap().handshake_failures += 1;
                            cvar.notify_all();
                        }
                    }
                });
            }
            // Aborting the server task drops `connections`: every open connection closes.
        }));
    }

    /// Waits until at least `n` TLS handshakes failed; panics after `timeout`.
    pub fn wait_for_handshake_failures(&self, n: usize, timeout: Duration) -> usize {
        let (lock, cvar) = &*self.shared;
        let guard = lock.lock().unwrap();
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |s| s.handshake_failures < n)
            .unwrap();
        assert!(
            guard.handshake_failures >= n,
            "{} failed TLS handshakes within {timeout:?}, not {n}",
            guard.handshake_failures
        );
        guard.handshake_failures
    }

    /// Closes the port and every connection: pushes fail to connect.
    pub fn down(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = self.runtime.block_on(server);
        }
    }

    /// Listens again on the same port.
    pub fn up(&mut self) {
        let addr = self.addr;
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .expect("rebind the receiver's port");
        self.serve(listener);
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.0.lock().unwrap().mode = Some(mode);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.0.lock().unwrap().received.clone()
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        self.shared.0.lock().unwrap().attempts.clone()
    }

    /// Waits until at least `n` profiles arrived; panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let (lock, cvar) = &*self.shared;
        let guard = lock.lock().unwrap();
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |s| s.received.len() < n)
            .unwrap();
        assert!(
            guard.received.len() >= n,
            "the receiver got {} profiles within {timeout:?}, not {n}: {:?}",
            guard.received.len(),
            guard.received.iter().map(|r| &r.labels).collect::<Vec<_>>()
        );
        guard.received.clone()
    }

    /// Waits until at least `n` push attempts were answered (or hung).
    pub fn wait_for_attempts(&self, n: usize, timeout: Duration) -> Vec<Attempt> {
        let (lock, cvar) = &*self.shared;
        let guard = lock.lock().unwrap();
        let (guard, _) = cvar
            .wait_timeout_while(guard, timeout, |s| s.attempts.len() < n)
            .unwrap();
        assert!(
            guard.attempts.len() >= n,
            "{} push attempts within {timeout:?}, not {n}",
            guard.attempts.len()
        );
        guard.attempts.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

/// One HTTP/1.1 connection (plain, or TLS once the handshake is done).
async fn serve_connection<S>(stream: S, shared: Shared)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, shared).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Connect's error: JSON `{"code", "message"}` with the code's HTTP status.
fn connect_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("error response")
}

async fn handle(req: Request<Incoming>, shared: Shared) -> Response<Full<Bytes>> {
    let mode = shared.0.lock().unwrap().mode.unwrap_or(Mode::Accept);
    let record = |status: u16| {
        let (lock, cvar) = &*shared;
        lock.lock().unwrap().attempts.push(Attempt {
            at: Instant::now(),
            status,
        });
        cvar.notify_all();
    };
    if req.uri().path() != "/push.v1.PusherService/Push" || req.method() != hyper::Method::POST {
        record(404);
        return connect_error(StatusCode::NOT_FOUND, "unimplemented", "no such procedure");
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (content_type, authorization) = (header("content-type"), header("authorization"));
    let body = match Limited::new(req.into_body(), 64 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            record(400);
            return connect_error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "body too large",
            );
        }
    };
    match mode {
        Mode::Accept => {}
        Mode::TooMany { retry_after_secs } => {
            record(429);
            let mut r = connect_error(
                StatusCode::TOO_MANY_REQUESTS,
                "resource_exhausted",
                "rate limited",
            );
            r.headers_mut()
                .insert("retry-after", retry_after_secs.to_string().parse().unwrap());
            return r;
        }
        Mode::BadRequest => {
            record(400);
            return connect_error(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "refused on command by the test receiver",
            );
        }
        Mode::Unavailable => {
            record(503);
            return connect_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "down");
        }
        Mode::Hang => {
            record(0);
            std::future::pending::<()>().await;
        }
    }
    if content_type != "application/proto" {
        record(415);
        return connect_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_argument",
            &format!("content-type {content_type:?}, expected application/proto"),
        );
    }
    match accept(&body) {
        Ok(mut profiles) => {
            for p in &mut profiles {
                p.authorization = authorization.clone();
            }
            let (lock, cvar) = &*shared;
            let mut state = lock.lock().unwrap();
            state.received.extend(profiles);
            state.attempts.push(Attempt {
                at: Instant::now(),
                status: 200,
            });
            cvar.notify_all();
            Response::new(Full::new(Bytes::from_static(b"{}")))
        }
        Err(message) => {
            record(400);
            connect_error(StatusCode::BAD_REQUEST, "invalid_argument", &message)
        }
    }
}

/// Pyroscope's rules (pkg/validation): labels, then each profile.
pub fn accept(body: &[u8]) -> Result<Vec<Received>, String> {
    let request =
        PushRequest::decode(body).map_err(|e| format!("cannot decode PushRequest: {e}"))?;
    if request.series.is_empty() {
        return Err("no series".into());
    }
    let mut out = Vec::new();
    for series in request.series {
        let labels = validate_labels(&series.labels)?;
        for sample in series.samples {
            let profile = decode_profile(&sample.raw_profile)?;
            let now_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as i64;
            if profile.time_nanos > 0 && now_ns - profile.time_nanos > 3_600_000_000_000 {
                return Err("profile is older than 1h (reject_older_than)".into());
            }
            out.push(Received {
                labels: labels.clone(),
                id: sample.id,
                functions: functions(&profile),
                time_nanos: profile.time_nanos,
                at: Instant::now(),
                unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                authorization: String::new(),
            });
        }
    }
    Ok(out)
}

fn validate_labels(labels: &[LabelPair]) -> Result<BTreeMap<String, String>, String> {
    if labels.is_empty() {
        return Err("error at least one label pair is required per profile".into());
    }
    if labels.len() > 30 {
        return Err(format!(
            "profile series has {} label names; limit 30",
            labels.len()
        ));
    }
    let mut map = BTreeMap::new();
    for l in labels {
        let mut chars = l.name.chars();
        let valid = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid || l.name.len() > 1024 {
            return Err(format!("invalid label name '{}'", l.name));
        }
        if l.value.len() > 2048 {
            return Err(format!("label value too long: '{}'", l.name));
        }
        if map.insert(l.name.clone(), l.value.clone()).is_some() {
            return Err(format!("duplicate label name: '{}'", l.name));
        }
    }
    if map.get("service_name").is_none_or(String::is_empty) {
        return Err("invalid labels: service name is not provided".into());
    }
    Ok(map)
}

/// Gunzips (≤ 4 MiB) and decodes a pprof.
pub fn decode_profile(raw: &[u8]) -> Result<Profile, String> {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(raw)
        .take(4 * 1024 * 1024 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("raw_profile is not gzip: {e}"))?;
    if bytes.len() > 4 * 1024 * 1024 {
        return Err("the profile exceeds the size limit (max_profile_size_bytes)".into());
    }
    let profile = Profile::decode(&bytes[..]).map_err(|e| format!("malformed profile: {e}"))?;
    for t in &profile.sample_type {
        let name = profile
            .string_table
            .get(t.r#type as usize)
            .map_or("", String::as_str);
        if name.contains('-') {
            return Err("malformed profile: sample type contains -".into());
        }
    }
    Ok(profile)
}

fn functions(profile: &Profile) -> Vec<String> {
    let name_of = |fid: u64| {
        profile
            .function
            .iter()
            .find(|f| f.id == fid)
            .and_then(|f| profile.string_table.get(f.name as usize))
            .cloned()
    };
    let mut names = Vec::new();
    for s in profile
        .sample
        .iter()
        .filter(|s| s.value.iter().any(|v| *v != 0))
    {
        for lid in &s.location_id {
            if let Some(loc) = profile.location.iter().find(|l| l.id == *lid) {
                for line in &loc.line {
                    if let Some(name) = name_of(line.function_id)
                        && !names.contains(&name)
                    {
                        names.push(name);
                    }
                }
            }
        }
    }
    names
}
