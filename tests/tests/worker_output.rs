//! End-to-end tests of the worker output relay: a line far over the cap is cut with a
//! marker and counted while the relay keeps reading (the worker never dies of SIGPIPE),
//! and relayed records can never pose as the agent's own.

use std::net::SocketAddr;
use std::time::Duration;

use heapwarden_tests::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The value of a sample `name{labels}` in Prometheus text, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn a_one_mib_line_is_cut_and_counted_and_the_relay_reads_on_to_eof() {
    let _guard = TimeoutGuard::new("long_line", SECS(60));
    let sandbox = Sandbox::new();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // 1 MiB without a newline, then more lines; a dead relay would close the pipe and
    // the next `echo` would kill the shell with SIGPIPE. `sleep` gets /dev/null so stdout
    // reaches end of file and the unterminated last line must come through.
    let agent = sandbox.agent(&format!(
        r#"
[admin]
listen = "{admin}"
[pool]
workers = 1
listen = "127.0.0.1:{port}"
command = ["sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x; echo; echo after the long line; sleep 0.3; echo still alive; printf 'last words without a newline'; exec sleep 600 >/dev/null"]
min-uptime = "200ms"
"#,
        port = free_port()
    ));
    let cut = agent.logs.wait_for(SECS(20), "the cut line", |r| {
        r["stream"] == "stdout" && r["truncated_bytes"].is_u64()
    });
    let text = cut["msg"].as_str().expect("msg");
    assert!(
        text.starts_with("xxxx") && text.ends_with("[truncated]"),
        "marker at the end: …{}",
        &text[text.len().saturating_sub(40)..]
    );
    assert!(
        text.len() <= 64 * 1024 + 16,
        "cut near 64 KiB: {}",
        text.len()
    );
    assert_eq!(
        cut["truncated_bytes"].as_u64().unwrap() + 64 * 1024,
        1024 * 1024,
        "every byte over the cap is accounted for"
    );
    agent
        .logs
        .wait_for(SECS(10), "a line after the long one", |r| {
            r["msg"] == "after the long line"
        });
    agent
        .logs
        .wait_for(SECS(10), "a later line", |r| r["msg"] == "still alive");
    agent
        .logs
        .wait_for(SECS(10), "the unterminated last line", |r| {
            r["msg"] == "last words without a newline"
        });
    let metrics = poll(SECS(10), "the truncation counter", || {
        let (_, body) = http_get(admin, "/metrics", SECS(5)).ok()?;
        let n = sample(
            &body,
            "heapwarden_worker_log_lines_truncated_total{worker=\"0\"}",
        )?;
        (n >= 1.0).then_some(body)
    });
    assert_eq!(
        sample(
            &metrics,
            "heapwarden_worker_log_lines_truncated_total{worker=\"0\"}"
        ),
        Some(1.0)
    );
    assert!(
        agent
            .logs
            .matching(|r| r["msg"] == "A worker was killed by a signal.")
            .is_empty(),
        "the worker died: {:?}",
        agent.logs.matching(msg("A worker was killed by a signal."))
    );
    assert_eq!(
        worker_pids(&agent.logs).len(),
        1,
        "the worker was never restarted"
    );
}

#[test]
fn relayed_records_cannot_pose_as_the_agents_own() {
    let _guard = TimeoutGuard::new("relayed_records", SECS(60));
    let sandbox = Sandbox::new();
    let agent = sandbox.agent(&format!(
        r#"
[pool]
workers = 1
listen = "127.0.0.1:{port}"
command = ["sh", "-c", "echo '{{\"msg\":\"Every worker is ready.\",\"level\":\"INFO\",\"module\":\"supervisor\",\"worker\":7,\"pid\":1,\"ts\":\"then\"}}'; echo 'A worker slot restarted.'; exec sleep 600"]
min-uptime = "200ms"
"#,
        port = free_port()
    ));
    let forged = agent
        .logs
        .wait_for(SECS(10), "the forged JSON record", |r| {
            r["stream"] == "stdout" && r["fields"]["module"] == "supervisor"
        });
    assert_eq!(forged["module"], "worker", "{forged}");
    assert_eq!(
        forged["worker"], 0,
        "the slot comes from the agent: {forged}"
    );
    assert_ne!(forged["pid"], 1, "the pid comes from the agent: {forged}");
    let plain = agent.logs.wait_for(SECS(10), "the forged plain line", |r| {
        r["stream"] == "stdout" && r["msg"] == "A worker slot restarted."
    });
    assert_eq!(plain["module"], "worker", "{plain}");
    // The agent's own records never come from the relay.
    let ready = agent.logs.wait_for(SECS(10), "the agent's record", |r| {
        r["msg"] == "Every worker is ready." && r["module"] == "supervisor"
    });
    assert!(ready.get("stream").is_none(), "{ready}");
    for r in agent.logs.matching(|r| r["stream"].is_string()) {
        assert_eq!(
            r["module"], "worker",
            "a relayed record without the mark: {r}"
        );
    }
}
