//! One push to Pyroscope's Connect endpoint: `POST <url>/push.v1.PusherService/Push`
//! with an `application/proto` body, over a fresh HTTP/1.1 connection (hyper's client,
//! no pool) that is closed when the answer is read — a push every few seconds at most
//! does not need keep-alive, and a sink that is down leaves no socket behind. An
//! `https://` URL puts TLS (rustls, settings from `tls`) between the socket and HTTP. The
//! whole exchange, connect to last byte, runs under one timeout. The answer is
//! classified for the delivery loop: sent, retry (with the server's `Retry-After` when it
//! gave one; a failed TLS handshake is a retry too), or refused with the server's
//! message.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// The Connect procedure path, appended to the configured URL's path.
pub const PUSH_PATH: &str = "/push.v1.PusherService/Push";
/// How much of an error answer is kept for the log.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// A `Retry-After` beyond this is capped: the 1-hour age limit would pass meanwhile.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Where and how to push (from `[export.pyroscope]`).
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub tenant: String,
    /// The `Authorization` header's value (`Bearer …` or `Basic …`).
    pub authorization: Option<String>,
    pub timeout: Duration,
    /// For an `https://` URL: the TLS client settings, and the `ca-file` they trust
    /// (empty: the host's store), named when a certificate is refused.
    pub tls: Option<(Arc<rustls::ClientConfig>, PathBuf)>,
}

/// What the sink said.
#[derive(Debug, Clone, PartialEq)]
pub enum PushResult {
    Sent,
    /// Connection error, timeout, 5xx or 429; `after` is the server's `Retry-After`.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Any other status: the server's message, never retried.
    Refused {
        status: u16,
        message: String,
    },
}

/// Sends one push body.
pub async fn push(target: &Target, body: Vec<u8>) -> PushResult {
    match tokio::time::timeout(target.timeout, exchange(target, body)).await {
        Ok(result) => result,
        Err(_) => PushResult::Retry {
            reason: format!(
                "no answer within {}",
                humantime::format_duration(target.timeout)
            ),
            after: None,
        },
    }
}

async fn exchange(target: &Target, body: Vec<u8>) -> PushResult {
    let retry = |reason: String| PushResult::Retry {
        reason,
        after: None,
    };
    let uri = match push_uri(&target.url) {
        Ok(uri) => uri,
        Err(e) => {
            return PushResult::Refused {
                status: 0,
                message: e,
            };
        }
    };
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let stream = match tokio::net::TcpStream::connect((host, port)).await {
        Ok(s) => s,
        Err(e) => return retry(format!("cannot connect to {authority}: {e}")),
    };
    let _ = stream.set_nodelay(true);
    if !https {
        return send(stream, &authority, &uri, target, body).await;
    }
    let Some((tls, ca_file)) = &target.tls else {
        return PushResult::Refused {
            status: 0,
            message: format!("{authority}: an https:// URL without TLS settings"),
        };
    };
    let name = match rustls::pki_types::ServerName::try_from(host.to_owned()) {
        Ok(name) => name,
        Err(e) => {
            return PushResult::Refused {
                status: 0,
                message: format!("{host:?} cannot be checked against a certificate: {e}"),
            };
        }
    };
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    match connector.connect(name, stream).await {
        Ok(stream) => send(stream, &authority, &uri, target, body).await,
        Err(e) => retry(super::tls::handshake_error(&authority, &e, ca_file)),
    }
}

/// The HTTP/1.1 exchange over a connected (and, for https, TLS) stream.
async fn send<S>(
    stream: S,
    authority: &str,
    uri: &Uri,
    target: &Target,
    body: Vec<u8>,
) -> PushResult
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let retry = |reason: String| PushResult::Retry {
        reason,
        after: None,
    };
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(e) => return retry(format!("HTTP handshake with {authority} failed: {e}")),
        };
    // Drives the connection; aborted (closing the socket) when the exchange is done or
    // when the timeout drops this future — a hanging sink keeps no socket open.
    let driver = AbortOnDrop(tokio::spawn(connection));
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(uri.path_and_query().map_or(PUSH_PATH, |p| p.as_str()))
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/proto")
        .header("connect-protocol-version", "1")
        .header(
            "user-agent",
            concat!("heapwarden/", env!("CARGO_PKG_VERSION")),
        );
    if !target.tenant.is_empty() {
        request = request.header("X-Scope-OrgID", target.tenant.as_str());
    }
    if let Some(authorization) = &target.authorization {
        request = request.header(AUTHORIZATION, authorization.as_str());
    }
    let request = match request.body(Full::new(Bytes::from(body))) {
        Ok(r) => r,
        Err(e) => {
            return PushResult::Refused {
                status: 0,
                message: format!("cannot build the request: {e}"),
            };
        }
    };
    let result = match sender.send_request(request).await {
        Ok(response) => classify(response).await,
        Err(e) => retry(format!("the push to {authority} failed: {e}")),
    };
    drop(sender);
    drop(driver);
    result
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn classify(response: hyper::Response<hyper::body::Incoming>) -> PushResult {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
    let answer = match Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if status.is_success() {
        return PushResult::Sent;
    }
    let message = connect_message(&answer);
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return PushResult::Retry {
            reason: format!("HTTP {}: {message}", status.as_u16()),
            after: retry_after,
        };
    }
    PushResult::Refused {
        status: status.as_u16(),
        message,
    }
}

/// Connect's error body is `{"code": "...", "message": "..."}`; anything else is shown
/// as text.
fn connect_message(answer: &[u8]) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(answer).ok();
    if let Some(message) = json
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(|m| m.as_str())
    {
        let code = json
            .as_ref()
            .and_then(|v| v.get("code"))
            .and_then(|c| c.as_str())
            .unwrap_or("unknown");
        return format!("{code}: {message}");
    }
    let text = String::from_utf8_lossy(answer);
    text.chars()
        .take(1024)
        .collect::<String>()
        .trim()
        .to_string()
}

/// `<url>` with the push path appended to its own path (a proxy may serve Pyroscope
/// under a prefix).
pub fn push_uri(url: &str) -> Result<Uri, String> {
    let base: Uri = url
        .trim()
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let prefix = base.path().trim_end_matches('/');
    let authority = base
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    let scheme = match base.scheme_str() {
        Some(s @ ("http" | "https")) => s,
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    };
    format!("{scheme}://{authority}{prefix}{PUSH_PATH}")
        .parse()
        .map_err(|e| format!("{url:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_path_follows_the_urls_own_path() {
        assert_eq!(
            push_uri("http://127.0.0.1:4040").unwrap().to_string(),
            "http://127.0.0.1:4040/push.v1.PusherService/Push"
        );
        assert_eq!(
            push_uri("http://alloy:9999/pyroscope/").unwrap().path(),
            "/pyroscope/push.v1.PusherService/Push"
        );
        assert_eq!(
            push_uri("https://profiles.example/").unwrap().to_string(),
            "https://profiles.example/push.v1.PusherService/Push"
        );
        assert!(push_uri("ftp://x").is_err());
    }

    #[test]
    fn connect_errors_show_code_and_message() {
        assert_eq!(
            connect_message(br#"{"code":"invalid_argument","message":"no service_name"}"#),
            "invalid_argument: no service_name"
        );
        assert_eq!(connect_message(b" plain text "), "plain text");
    }

    #[tokio::test]
    async fn a_closed_port_is_a_retry_and_leaves_no_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let target = Target {
            url: format!("http://{addr}"),
            tenant: String::new(),
            authorization: None,
            timeout: Duration::from_secs(2),
            tls: None,
        };
        assert!(matches!(
            push(&target, vec![1]).await,
            PushResult::Retry { .. }
        ));
    }
}
