//! The floor under the demo's L1 hit: hyper answering every request with the same 52-byte
//! JSON body and nothing else (no cache, no metrics, no request id, no log).
//!
//! Run as the agent's workers (`probe = "off"`), it is the demo's deployment without the
//! demo: the agent's listening socket (connections dealt to the workers in turn), one
//! current-thread runtime per worker, hyper's HTTP/1 with the same timer. `bench/demo.sh
//! node` runs it beside the demo and the seeds' Node design, so the demo's own cost per
//! request can be told from what any hyper server pays on the same machine.
//!
//! Alone: `cargo run --release -p heapwarden-demo --example floor -- 127.0.0.1:8080`.

use std::convert::Infallible;
use std::net::TcpListener;

use axum::body::Body;
use axum::http::{HeaderValue, Response, header};
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};

const BODY: &[u8] = br#"{"id":17,"name":"item-17","value":34623,"version":1}"#;

fn main() -> anyhow::Result<()> {
    let listener = match heapwarden_probes::take_listen_socket()? {
        Some(inherited) => inherited,
        None => {
            let addr = std::env::args()
                .nth(1)
                .unwrap_or_else(|| "127.0.0.1:8080".into());
            TcpListener::bind(addr)?
        }
    };
    listener.set_nonblocking(true)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listener))
}

async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new());
    let answer = hyper::service::service_fn(|_request| async {
        let mut response = Response::new(Body::from(Bytes::from_static(BODY)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok::<_, Infallible>(response)
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // EMFILE and the like: pause instead of spinning.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(http.serve_connection(TokioIo::new(stream), answer));
    }
}
