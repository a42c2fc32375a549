//! The demo service run alone (`heapwarden demo`, SQLite in its state directory): the
//! cache layers and writes, bad input, redacted request logs, CPU work off the request
//! path, durable jobs with retries and dead letters, the export stream and the leak
//! switch.
#![forbid(unsafe_code)]

mod demo_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use demo_support::*;
use heapwarden_tests::{Sandbox, TimeoutGuard, msg};

#[test]
fn reads_fill_the_cache_and_writes_invalidate_it() {
    let _timeout = TimeoutGuard::new("reads_fill_the_cache", Duration::from_secs(60));
    let sandbox = Sandbox::new();
    let demo = start_demo(&sandbox, "seed-rows = 10", &[]);

    let first = get(&demo.url("/items/3"));
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.header("x-cache"), Some("db"));
    assert_eq!(first.json()["name"], "item-3");
    let second = get(&demo.url("/items/3"));
    assert_eq!(second.header("x-cache"), Some("l1"));
    // An L1 hit is answered before the router (`serve.rs`'s fast path): it still carries
    // what every answer does, and a request id of its own.
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert_eq!(second.header("x-worker"), first.header("x-worker"));
    let id = second
        .header("x-request-id")
        .expect("an L1 hit has a request id");
    assert!(
        id.len() > 2 && id != first.header("x-request-id").unwrap(),
        "{id}"
    );
    let given = call(
        "GET",
        &demo.url("/items/3"),
        &[("x-request-id", "given-7")],
        None,
    );
    assert_eq!(given.header("x-cache"), Some("l1"));
    assert_eq!(given.header("x-request-id"), Some("given-7"));

    let put = call(
        "PUT",
        &demo.url("/items/3"),
        &[],
        Some(r#"{"name":"renamed","value":42}"#),
    );
    assert_eq!(put.status, 200, "{put:?}");
    assert_eq!(put.json()["version"], 2);
    let after = get(&demo.url("/items/3"));
    assert_eq!(
        after.header("x-cache"),
        Some("db"),
        "the write dropped the L1 entry"
    );
    assert_eq!(after.json()["name"], "renamed");
    assert_eq!(get(&demo.url("/items/3")).json()["version"], 2);

    let deleted = call("DELETE", &demo.url("/items/3"), &[], None);
    assert_eq!(deleted.status, 204);
    assert_eq!(get(&demo.url("/items/3")).status, 404);
    assert_eq!(call("DELETE", &demo.url("/items/3"), &[], None).status, 404);
    assert_eq!(get(&demo.url("/items/999")).status, 404);

    // Re-creating a deleted item continues its version sequence.
    let again = call(
        "PUT",
        &demo.url("/items/3"),
        &[],
        Some(r#"{"name":"back","value":1}"#),
    );
    assert_eq!(again.json()["version"], 4);
    assert_eq!(get(&demo.url("/items/3")).json()["name"], "back");

    let metrics = get(&demo.url("/metrics")).body;
    for layer in ["l1", "db", "miss"] {
        let n = metric(
            &metrics,
            "demo_cache_lookups_total",
            &[("layer", layer), ("worker", "0")],
        );
        assert!(
            n.is_some_and(|n| n >= 1.0),
            "layer {layer} not counted:\n{metrics}"
        );
    }
    let served = metric(
        &metrics,
        "http_requests_total",
        &[
            ("route", "/items/{id}"),
            ("method", "GET"),
            ("status", "200"),
        ],
    );
    assert!(served.is_some_and(|n| n >= 4.0), "{metrics}");
    assert!(
        metrics.contains("http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("route=\"/items/3\""),
        "raw paths must not be labels"
    );
    assert!(metric(&metrics, "demo_cache_invalidations_total", &[]).is_some_and(|n| n >= 3.0));
    assert!(metric(&metrics, "demo_db_pool_connections", &[("state", "idle")]).is_some());
}

#[test]
fn bad_input_gets_json_errors_never_500() {
    let _timeout = TimeoutGuard::new("bad_input", Duration::from_secs(60));
    let sandbox = Sandbox::new();
    let demo = start_demo(&sandbox, "seed-rows = 5\nmax-body = \"1KiB\"", &[]);
    let cases: Vec<(&str, &str, Option<String>, u16)> = vec![
        ("GET", "/items/abc", None, 400),
        ("GET", "/items/99999999999999999999999", None, 400),
        (
            "PUT",
            "/items/x",
            Some(r#"{"name":"a","value":1}"#.into()),
            400,
        ),
        ("PUT", "/items/1", Some(r#"{"name":"a","#.into()), 400),
        (
            "PUT",
            "/items/1",
            Some(r#"{"name":"a","value":"one"}"#.into()),
            400,
        ),
        (
            "PUT",
            "/items/1",
            Some(r#"{"name":"a","value":1,"admin":true}"#.into()),
            400,
        ),
        (
            "PUT",
            "/items/1",
            Some(format!(r#"{{"name":"{}","value":1}}"#, "a".repeat(4096))),
            413,
        ),
        ("POST", "/compute", Some("not json".into()), 400),
        (
            "POST",
            "/compute",
            Some(r#"{"password":"p","rounds":0}"#.into()),
            400,
        ),
        ("POST", "/jobs", Some("[1,2".into()), 400),
        ("GET", "/jobs/nope", None, 400),
        ("GET", "/jobs/12345", None, 404),
        ("GET", "/no/such/route", None, 404),
        ("POST", "/debug/leak?bytes=10", None, 404),
    ];
    for (method, path, body, want) in cases {
        let reply = call(method, &demo.url(path), &[], body.as_deref());
        assert_eq!(reply.status, want, "{method} {path}: {reply:?}");
        let json = reply.json();
        assert!(json["error"].is_string(), "{method} {path}: {json}");
        assert_eq!(json["status"], want);
    }
    assert_eq!(get(&demo.url("/items/1")).status, 200, "still serving");
}

#[test]
fn request_logs_carry_ids_and_redact_secrets() {
    let _timeout = TimeoutGuard::new("request_logs", Duration::from_secs(60));
    let sandbox = Sandbox::new();
    let demo = start_demo(&sandbox, "seed-rows = 5", &[]);
    let headers = [
        ("authorization", "Bearer sekrit-bearer-value"),
        ("cookie", "session=sekrit-cookie-value"),
        ("x-request-id", "test-req-42"),
    ];
    let reply = call("GET", &demo.url("/items/1"), &headers, None);
    assert_eq!(reply.header("x-request-id"), Some("test-req-42"));
    let job = r#"{"password":"sekrit-password-value","rounds":10,"metadata":{"token":"sekrit-token-value"}}"#;
    let queued = call("POST", &demo.url("/jobs"), &headers, Some(job));
    assert_eq!(queued.status, 202, "{queued:?}");
    let generated = get(&demo.url("/items/2"));
    let generated_id = generated
        .header("x-request-id")
        .expect("generated id")
        .to_string();

    let logs = &demo.proc.logs;
    let record = logs.wait_for(
        Duration::from_secs(5),
        "the request log of GET /items/1",
        |r| {
            r["msg"] == "Served a request."
                && r["request_id"] == "test-req-42"
                && r["method"] == "GET"
        },
    );
    assert_eq!(record["route"], "/items/{id}");
    assert_eq!(record["status"], 200);
    assert!(record["latency_ms"].is_number());
    assert_eq!(record["worker"], 0);
    assert_eq!(record["headers"]["authorization"], "[REDACTED]");
    assert_eq!(record["headers"]["cookie"], "[REDACTED]");
    logs.wait_for(Duration::from_secs(5), "the generated id logged", |r| {
        r["request_id"] == generated_id.as_str()
    });
    let queued_log = logs.wait_for(Duration::from_secs(5), "the job log", msg("Queued a job."));
    assert_eq!(queued_log["payload"]["password"], "[REDACTED]");
    assert_eq!(queued_log["payload"]["metadata"]["token"], "[REDACTED]");
    let raw = logs.raw();
    assert!(!raw.contains("sekrit"), "a secret reached the log:\n{raw}");
}

#[test]
fn saturated_compute_pool_answers_503_and_leaves_the_runtime_responsive() {
    let _timeout = TimeoutGuard::new("compute_saturation", Duration::from_secs(120));
    let sandbox = Sandbox::new();
    let demo = start_demo(
        &sandbox,
        "seed-rows = 5\ncompute-threads = 1\ncompute-queue = 1",
        &[],
    );
    assert_eq!(get(&demo.url("/items/1")).status, 200); // warm L1

    let url = demo.url("/compute");
    let heavy = r#"{"password":"pw","rounds":50000000}"#;
    // Four senders keep the pool saturated until the test has what it needs: one heavy
    // computation runs, one waits in the queue, the others are refused. A light request
    // that finds the queue free waits behind the running one (and answers 200); one
    // that finds it full is refused at once, so it is polled until a 503 comes.
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let reply = call("POST", &url, &[], Some(heavy));
                    answers.push((reply.status, started.elapsed()));
                    if reply.status == 503 {
                        // Refused at once: pace the retries instead of spinning a core.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                answers
            })
        })
        .collect();
    let light = r#"{"password":"pw","rounds":1}"#;
    let refused = poll(Duration::from_secs(60), "a 503 from /compute", || {
        let r = call("POST", &url, &[], Some(light));
        (r.status == 503).then_some(r)
    });
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
    assert!(refused.json()["error"].is_string());

    // Responsive = not waiting for a computation: a light request's p90 stays a small
    // fraction of what one heavy computation takes (a ratio, so machine load, which slows
    // both, cannot fail it; a blocked runtime makes them equal).
    let mut light_times = Vec::new();
    for _ in 0..10 {
        for path in ["/healthz", "/items/1"] {
            let started = Instant::now();
            let reply = get(&demo.url(path));
            light_times.push(started.elapsed());
            assert_eq!(reply.status, 200, "{path}: {reply:?}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let answers: Vec<(u16, Duration)> = senders
        .into_iter()
        .flat_map(|t| t.join().expect("sender"))
        .collect();
    assert!(
        answers
            .iter()
            .all(|(status, _)| [200, 503].contains(status)),
        "a heavy request got neither its answer nor a refusal: {answers:?}"
    );
    let heavy_time = answers
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, took)| *took)
        .min()
        .unwrap_or_else(|| panic!("no heavy computation finished: {answers:?}"));
    light_times.sort_unstable();
    let p90 = light_times[light_times.len() * 9 / 10];
    println!("light p90 {p90:?}, one heavy computation {heavy_time:?}");
    assert!(
        p90 * 4 < heavy_time,
        "light requests (p90 {p90:?}) waited like a computation ({heavy_time:?}): {light_times:?}"
    );
}

#[test]
fn jobs_retry_with_backoff_then_dead_letter() {
    let _timeout = TimeoutGuard::new("jobs_retry", Duration::from_secs(60));
    let sandbox = Sandbox::new();
    let demo = start_demo(
        &sandbox,
        "seed-rows = 0\njob-max-attempts = 3\njob-backoff = \"50ms\"\njobs-poll = \"50ms\"",
        &[],
    );
    let flaky = call(
        "POST",
        &demo.url("/jobs"),
        &[],
        Some(r#"{"rounds":100,"fail_attempts":2}"#),
    );
    assert_eq!(flaky.status, 202);
    assert_eq!(
        flaky.header("location"),
        Some(format!("/jobs/{}", flaky.json()["id"]).as_str())
    );
    let doomed = call(
        "POST",
        &demo.url("/jobs"),
        &[],
        Some(r#"{"rounds":100,"fail_attempts":9}"#),
    );
    let (flaky_id, doomed_id) = (flaky.json()["id"].clone(), doomed.json()["id"].clone());

    let done = poll(Duration::from_secs(20), "the flaky job to complete", || {
        let s = get(&demo.url(&format!("/jobs/{flaky_id}"))).json();
        (s["state"] == "completed").then_some(s)
    });
    assert_eq!(done["attempts"], 3, "{done}");
    assert!(
        done["result"].as_str().is_some_and(|r| r.len() == 16),
        "{done}"
    );
    let dead = poll(Duration::from_secs(20), "the doomed job to go dead", || {
        let s = get(&demo.url(&format!("/jobs/{doomed_id}"))).json();
        (s["state"] == "dead").then_some(s)
    });
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert!(
        dead["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("on purpose"))
    );

    let metrics = get(&demo.url("/metrics")).body;
    assert_eq!(
        metric(&metrics, "demo_jobs_total", &[("outcome", "completed")]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "demo_jobs_total", &[("outcome", "failed")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "demo_jobs_total", &[("outcome", "retried")]),
        Some(4.0)
    );
}

#[test]
fn a_job_taken_by_a_killed_worker_runs_again_after_restart() {
    let _timeout = TimeoutGuard::new("jobs_survive_restart", Duration::from_secs(90));
    let sandbox = Sandbox::new();
    let config = "seed-rows = 0\njob-lease = \"1s\"\njobs-poll = \"50ms\"";
    let demo = start_demo(&sandbox, config, &[]);
    let job = call(
        "POST",
        &demo.url("/jobs"),
        &[],
        Some(r#"{"rounds":100,"sleep_ms":3000}"#),
    );
    let id = job.json()["id"].clone();
    poll(Duration::from_secs(10), "the job to start", || {
        (get(&demo.url(&format!("/jobs/{id}"))).json()["state"] == "running").then_some(())
    });
    let port = demo.addr.port();
    drop(demo); // SIGKILL mid-job: no chance to give it back

    let demo = start_demo_on(&sandbox, port, config, &[]);
    let done = poll(
        Duration::from_secs(30),
        "the job to complete after restart",
        || {
            let s = get(&demo.url(&format!("/jobs/{id}"))).json();
            (s["state"] == "completed").then_some(s)
        },
    );
    assert_eq!(
        done["attempts"], 2,
        "the dead worker's attempt counts: {done}"
    );
}

#[test]
fn export_streams_every_row_as_ndjson() {
    let _timeout = TimeoutGuard::new("export", Duration::from_secs(90));
    let sandbox = Sandbox::new();
    let demo = start_demo(&sandbox, "seed-rows = 10", &["--seed", "20000"]);
    assert_eq!(call("DELETE", &demo.url("/items/7"), &[], None).status, 204);
    assert_eq!(count_ndjson(&demo.url("/items/export")), 19_999);
}

#[test]
fn leak_endpoint_leaks_when_enabled_and_sigterm_stops_cleanly() {
    let _timeout = TimeoutGuard::new("leak_and_sigterm", Duration::from_secs(60));
    let sandbox = Sandbox::new();
    let mut demo = start_demo(&sandbox, "seed-rows = 0\nleak-endpoint = true", &[]);
    let reply = call("POST", &demo.url("/debug/leak?bytes=1048576"), &[], None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["leaked_total"], 1_048_576);
    let again = call("POST", &demo.url("/debug/leak?bytes=1048576"), &[], None);
    assert_eq!(again.json()["leaked_total"], 2 * 1_048_576);
    assert_eq!(
        call("POST", &demo.url("/debug/leak?bytes=lots"), &[], None).status,
        400
    );

    demo.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let status = demo
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    demo.proc.logs.wait_for(
        Duration::from_secs(2),
        "the stop record",
        msg("The demo worker stopped."),
    );
}
