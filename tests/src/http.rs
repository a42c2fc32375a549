//! The tests' one HTTP client (ureq, statuses as values, a deadline per call), a client
//! loop that keeps load on a service while a test replaces its workers, and one
//! raw-socket request for the few tests that need what a client library hides (a server
//! that answers and resets before it has read the body).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One HTTP answer, whatever its status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// An agent (connection pool) whose calls fail after `timeout` and return 4xx/5xx as values.
pub fn client(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// `method url` with headers and an optional body on `agent`.
pub fn fetch(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Reply, ureq::Error> {
    let mut request = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut response = match body {
        Some(body) => agent.run(request.body(body.to_vec())?)?,
        None => agent.run(request.body(())?)?,
    };
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let bytes = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()?;
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// One request to `addr` with an optional bearer token and JSON body; (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String), ureq::Error> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer.as_str()));
    }
    let body = (!body.is_empty()).then_some(body);
    let url = format!("http://{addr}{path}");
    let reply = fetch(&client(timeout), method, &url, &headers, body)?;
    Ok((reply.status, reply.body))
}

/// `GET path` on `addr`; (status, body).
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), ureq::Error> {
    http_request(addr, "GET", path, None, b"", timeout)
}

/// A request written by hand on a fresh connection, for what a client library will not
/// do: read the answer of a server that refuses a body (413) and resets the connection
/// before reading it all. Returns (status, body) of whatever answer arrived.
pub fn raw_request(
    addr: SocketAddr,
    head: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response)
        && response.is_empty()
    {
        return Err(e);
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// GETs in a loop on fresh connections until stopped (a 200 counts as ok); failures are
/// kept with what went wrong.
pub struct ClientLoop {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ClientLoop {
    /// `path(n)`: the path of the n-th request of a thread.
    pub fn start(
        addr: SocketAddr,
        threads: usize,
        path: impl Fn(usize) -> String + Send + Sync + 'static,
    ) -> ClientLoop {
        let path = Arc::new(path);
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut n = t;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        match http_get(addr, &path(n), Duration::from_secs(10)) {
                            Ok((200, _)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => failed.lock().unwrap().push(format!("{other:?}")),
                        }
                    }
                })
            })
            .collect();
        ClientLoop {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops the loop; returns the requests that succeeded and the failures.
    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.lock().unwrap().clone(),
        )
    }
}
