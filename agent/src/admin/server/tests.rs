use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use axum::routing::get;

use super::*;

#[test]
fn the_budget_leaves_the_supervisor_its_fds() {
    assert_eq!(connection_budget(64, 1 << 20, 8), 64);
    // 320 fds, 2 workers: (320 - 64 - 64) / 2 = 96, capped by the configured 64.
    assert_eq!(connection_budget(64, 320, 2), 64);
    assert_eq!(connection_budget(64, 160, 2), 16);
    assert_eq!(connection_budget(64, 10, 100), 1, "never zero");
}

fn start(limits: Limits) -> (AdminServer, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().route("/fast", get(|| async { "ok" })).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            "late"
        }),
    );
    let log = Logger::root(slog::Discard, slog::o!());
    (
        AdminServer::spawn(listener, router, limits, log).expect("server"),
        addr,
    )
}

fn get_on(stream: &mut TcpStream, path: &str) -> std::io::Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")?;
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn closed(stream: &mut TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    matches!(stream.read(&mut [0u8; 1]), Ok(0) | Err(_))
}

#[test]
fn at_the_cap_the_longest_idle_connection_makes_room() {
    let limits = Limits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        max_connections: 3,
    };
    let (server, addr) = start(limits);
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect");
            std::thread::sleep(Duration::from_millis(50));
            s
        })
        .collect();
    let mut fresh = TcpStream::connect(addr).expect("connect");
    assert!(
        get_on(&mut fresh, "/fast")
            .expect("answer")
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        closed(&mut idle[0]),
        "the oldest idle connection was closed"
    );
    server.stop();
}

#[test]
fn when_every_connection_is_busy_a_new_one_is_refused() {
    let limits = Limits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        max_connections: 1,
    };
    let (server, addr) = start(limits);
    let mut busy = TcpStream::connect(addr).expect("connect");
    write!(busy, "GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").expect("request");
    std::thread::sleep(Duration::from_millis(300));
    let mut refused = TcpStream::connect(addr).expect("connect");
    assert!(closed(&mut refused), "no room: closed at once");
    let mut buf = [0u8; 256];
    busy.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let n = busy.read(&mut buf).expect("the busy request finishes");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("late"));
    server.stop();
}

#[test]
fn a_connection_that_stopped_moving_bytes_is_closed_after_the_idle_timeout() {
    let limits = Limits {
        header_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_millis(300),
        max_connections: 8,
    };
    let (server, addr) = start(limits);
    let mut stream = TcpStream::connect(addr).expect("connect");
    let started = Instant::now();
    assert!(closed(&mut stream));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed too early: {took:?}"
    );
    server.stop();
}
