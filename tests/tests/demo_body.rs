//! The demo's request bodies have a read deadline (issue 11, item 12): a PUT whose body
//! trickles in a byte at a time gets 408 once the deadline passes and its connection is
//! closed, instead of holding the connection (and a task) for as long as the client likes.

mod demo_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use demo_support::*;
use heapwarden_tests::{Sandbox, TimeoutGuard};

/// `BODY_READ_TIMEOUT` of the demo.
const DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn a_trickled_request_body_is_cut_off_with_408() {
    let _guard = TimeoutGuard::new("demo_body_timeout", Duration::from_secs(60));
    let sandbox = Sandbox::new();
    let demo = start_demo(&sandbox, "seed-rows = 1", &[]);
    let mut stream = TcpStream::connect(demo.addr).expect("connect");
    stream
        .write_all(
            b"PUT /items/1 HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n",
        )
        .expect("head");
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let started = Instant::now();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    // One byte every 2 s (never the 40 announced), reading whatever comes back.
    let closed = loop {
        assert!(
            started.elapsed() < DEADLINE + Duration::from_secs(8),
            "no answer {:?} after the body deadline",
            started.elapsed()
        );
        if started.elapsed().as_millis() % 2000 < 100 {
            let _ = stream.write_all(b" ");
        }
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break true,
        }
    };
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&response);
    assert!(closed);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        took >= DEADLINE - Duration::from_secs(1),
        "cut off before the deadline: {took:?}"
    );
}
