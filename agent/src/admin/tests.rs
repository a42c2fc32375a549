//! Handler tests through the real router (`tower::ServiceExt::oneshot`), and a
//! `promtool check metrics` run over a rendered page.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use tower::ServiceExt;

use super::exposition::{ExpositionWriter, WorkerText};
use super::*;
use crate::metric_names::build_recorder;
use crate::supervisor::{SlotState, SlotView, WorkerView};

const TOKEN: &str = "test-token-123";

fn slot(n: usize, state: SlotState, ready: Option<bool>, budget_exhausted: bool) -> SlotView {
    SlotView {
        slot: n,
        state,
        worker: ready.map(|ready| WorkerView {
            worker_id: n as u64 + 100,
            pid: 4000 + n as u32,
            started_at: Instant::now(),
            ready_at: None,
            started_wall: SystemTime::now(),
            ready,
            probe: false,
            runtime: None,
            link: None,
            children: None,
        }),
        restarts: 0,
        budget_exhausted,
    }
}

struct Fixture {
    state: AdminState,
    writer: ExpositionWriter,
    _pool: watch::Sender<PoolView>,
    _heartbeat: watch::Sender<Instant>,
}

fn fixture(view: PoolView, last_tick: Instant, open_metrics: bool) -> Fixture {
    let recorder = build_recorder().expect("recorder");
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        metrics::gauge!("heapwarden_worker_up", "worker" => "0").set(1.0);
        metrics::gauge!("heapwarden_worker_cpu_seconds_total", "worker" => "0").set(1.25);
        metrics::histogram!(crate::metric_names::SAMPLE_DURATION.name).record(0.0004);
    });
    let (writer, reader) = exposition_channel(Duration::from_secs(1));
    let (pool_tx, pool) = watch::channel(view);
    let (beat_tx, heartbeat) = watch::channel(last_tick);
    Fixture {
        state: AdminState {
            metrics: handle,
            exposition: reader,
            pool,
            heartbeat,
            heartbeat_max_age: Duration::from_secs(5),
            token: AdminToken::new(TOKEN),
            open_metrics,
            worker_page: WorkerPageCache::default(),
            suspects: tokio::sync::watch::channel(Default::default()).1,
        },
        writer,
        _pool: pool_tx,
        _heartbeat: beat_tx,
    }
}

async fn get_path(router: Router, path: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = Request::get(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = router
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn ready_pool() -> PoolView {
    PoolView {
        slots: vec![slot(0, SlotState::Ready, Some(true), false)],
        stopping: false,
    }
}

#[tokio::test]
async fn readyz_lists_every_unready_slot_and_spent_budget() {
    let view = PoolView {
        slots: vec![
            slot(0, SlotState::Ready, Some(true), false),
            slot(1, SlotState::Starting, Some(false), false),
            slot(2, SlotState::Backoff, None, false),
            slot(3, SlotState::Ready, Some(true), true),
        ],
        stopping: false,
    };
    let f = fixture(view, Instant::now(), true);
    let (status, body) = get_path(router(f.state), "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["ready"], false);
    assert_eq!(
        json["reason"],
        "slot 1 is starting; slot 2 has no worker (backoff); slot 3 leak-restart budget spent (it serves; leaks no longer replace it)"
    );
}

#[tokio::test]
async fn readyz_stays_200_but_names_slots_whose_leak_budget_is_spent() {
    let view = PoolView {
        slots: vec![
            slot(0, SlotState::Ready, Some(true), false),
            slot(1, SlotState::Ready, Some(true), true),
        ],
        stopping: false,
    };
    let f = fixture(view, Instant::now(), true);
    let (status, body) = get_path(router(f.state), "/readyz", None).await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(json["ready"], true);
    assert_eq!(json["leak_budget_spent"], serde_json::json!([1]));
    assert!(
        json["reason"]
            .as_str()
            .unwrap()
            .contains("slot 1 leak-restart budget spent"),
        "{json}"
    );
}

#[tokio::test]
async fn readyz_is_200_when_all_ready_and_503_when_stopping() {
    let f = fixture(ready_pool(), Instant::now(), true);
    let (status, body) = get_path(router(f.state.clone()), "/readyz", None).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"ready":true}"#)
    );
    let mut stopping = ready_pool();
    stopping.stopping = true;
    f._pool.send_replace(stopping);
    let (status, body) = get_path(router(f.state), "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("shutting down"), "{body}");
}

#[tokio::test]
async fn healthz_follows_the_heartbeat() {
    let f = fixture(ready_pool(), Instant::now(), true);
    assert_eq!(
        get_path(router(f.state.clone()), "/healthz", None).await.0,
        StatusCode::OK
    );
    let stale = Instant::now()
        .checked_sub(Duration::from_secs(60))
        .expect("uptime");
    f._heartbeat.send_replace(stale);
    let (status, body) = get_path(router(f.state), "/healthz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("last ticked"), "{body}");
}

#[tokio::test]
async fn closed_metrics_need_the_token_and_the_api_always_does() {
    let f = fixture(ready_pool(), Instant::now(), false);
    let api = Router::new().route("/ping", get(|| async { "pong" }));
    let app = router_with_api(f.state, api);
    let (status, body) = get_path(app.clone(), "/metrics", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("\"error\":\"unauthorized\""), "{body}");
    assert_eq!(
        get_path(app.clone(), "/readyz", Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_path(app.clone(), "/metrics", Some(TOKEN)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get_path(app.clone(), "/api/v1/ping", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_path(app, "/api/v1/ping", Some(TOKEN)).await,
        (StatusCode::OK, "pong".into())
    );
}

#[tokio::test]
async fn open_metrics_serve_without_a_token_but_the_api_stays_closed() {
    let f = fixture(ready_pool(), Instant::now(), true);
    let api = Router::new().route("/ping", get(|| async { "pong" }));
    let app = router_with_api(f.state, api);
    assert_eq!(
        get_path(app.clone(), "/metrics", None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get_path(app, "/api/v1/ping", None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn oversized_api_bodies_are_refused() {
    let f = fixture(ready_pool(), Instant::now(), true);
    let api = Router::new().route(
        "/echo",
        axum::routing::post(|body: String| async move { body.len().to_string() }),
    );
    let app = router_with_api(f.state, api);
    let request = Request::post("/api/v1/echo")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::from(vec![b'x'; BODY_LIMIT + 1]))
        .expect("request");
    let response = app.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

fn sample_exposition() -> Exposition {
    let worker = |slot: usize| WorkerText {
        worker_id: slot as u64,
        text: Arc::from(format!(
            "# HELP http_requests_total Requests served.\n# TYPE http_requests_total counter\n\
http_requests_total{{method=\"GET\",route=\"/items/{{id}}\",status=\"200\"}} {}\n\
# HELP demo_cache_lookups_total Cache lookups by layer.\n# TYPE demo_cache_lookups_total counter\n\
demo_cache_lookups_total{{worker=\"{slot}\",layer=\"l1\"}} 3\n",
            slot + 1
        )),
    };
    Exposition {
        workers: [(0, worker(0)), (1, worker(1))].into_iter().collect(),
        ..Exposition::default()
    }
}

#[tokio::test]
async fn metrics_merge_worker_families_under_the_worker_label() {
    let f = fixture(ready_pool(), Instant::now(), true);
    f.writer.publish(sample_exposition());
    let (status, body) = get_path(router(f.state), "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body.matches("# TYPE http_requests_total counter").count(),
        1,
        "{body}"
    );
    assert!(
        body.contains("http_requests_total{worker=\"1\",method=\"GET\""),
        "{body}"
    );
    assert!(
        body.contains("heapwarden_worker_cpu_seconds_total{worker=\"0\"} 1.25"),
        "{body}"
    );
    assert!(
        body.contains("heapwarden_sample_duration_seconds_bucket{le=\"0.0005\"} 1"),
        "{body}"
    );
}

/// `promtool check metrics` over a page with every kind of part. Fails (naming the
/// Debian package) when promtool is not installed.
#[test]
fn rendered_metrics_pass_promtool() {
    let recorder = build_recorder().expect("recorder");
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        crate::metric_names::describe_all();
        metrics::gauge!("heapwarden_worker_up", "worker" => "0").set(1.0);
        metrics::gauge!("heapwarden_system_memory_bytes", "state" => "used").set(1e9);
        metrics::histogram!(crate::metric_names::SAMPLE_DURATION.name).record(0.002);
        metrics::counter!("heapwarden_worker_restarts_total", "worker" => "0", "reason" => "leak")
            .increment(1);
        metrics::gauge!("heapwarden_worker_cpu_seconds_total", "worker" => "1").set(0.5);
        metrics::gauge!("heapwarden_agent_cpu_seconds_total").set(0.75);
    });
    let page = render_metrics(&handle.render(), &sample_exposition());
    promtool_check(&page, Lint::Clean);
}

/// What a buggy or hostile worker may hand over as its metrics text.
const HOSTILE_WORKER_TEXT: &str = "# TYPE ok_total counter\nok_total 1\n\
x{this is not a label} 1\n\
dup{a=\"1\",a=\"2\"} 1\n\
heapwarden_worker_up{worker=\"0\"} 0\n\
# TYPE heapwarden_agent_rss_bytes gauge\nheapwarden_agent_rss_bytes 1\n\
stolen{worker=\"0\"} 7\n\
bad_escape{a=\"\\q\"} 1\n\
# TYPE ok_total gauge\n\
nan_sign +nan\n\
# TYPE h histogram\nh_bucket{x=\"1\"} 1\nh_sum 1\nh_count 1\n\
h_sum 2\n\
__reserved{__name__=\"x\"} 1\n";

fn render_hostile() -> String {
    let recorder = build_recorder().expect("recorder");
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        crate::metric_names::describe_all();
        metrics::gauge!("heapwarden_worker_up", "worker" => "0").set(1.0);
        metrics::gauge!("heapwarden_agent_rss_bytes").set(1e7);
    });
    let snapshot = Exposition {
        workers: [(
            1,
            WorkerText {
                worker_id: 1,
                text: Arc::from(HOSTILE_WORKER_TEXT),
            },
        )]
        .into_iter()
        .collect(),
        ..Exposition::default()
    };
    render_metrics(&handle.render(), &snapshot)
}

#[test]
fn a_hostile_worker_cannot_break_or_forge_the_page() {
    let page = render_hostile();
    promtool_check(&page, Lint::OnlyWorkerFamilies);
    assert!(page.contains("ok_total{worker=\"1\"} 1"), "{page}");
    assert!(
        page.contains("stolen{worker=\"1\"} 7") && !page.contains("stolen{worker=\"0\"}"),
        "the slot sets the worker label: {page}"
    );
    assert_eq!(
        page.matches("heapwarden_worker_up{").count(),
        1,
        "only the agent's own series: {page}"
    );
    assert!(!page.contains("heapwarden_agent_rss_bytes 1\n"), "{page}");
    assert!(!page.contains("dup{"), "{page}");
}

/// What `promtool check metrics` may report besides parse errors, which always fail.
#[derive(Clone, Copy, PartialEq)]
pub enum Lint {
    /// Nothing at all: the agent's own families follow every convention.
    Clean,
    /// Naming findings about worker families (a worker's names are its own business),
    /// never about the agent's.
    OnlyWorkerFamilies,
}

/// Runs `promtool check metrics` on `page`; fails naming the Debian package when
/// promtool is missing.
pub fn promtool_check(page: &str, lint: Lint) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!("promtool is required (Debian package `prometheus`): {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page.as_bytes())
        .expect("write page");
    // Its output is read while it runs: a page with many lint findings fills the pipe,
    // and a promtool blocked on a full pipe would never exit.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let output = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("promtool did not finish in 30 s")
        .expect("output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // promtool exits 1 on a parse error and 3 when only lint findings were reported.
    let code = output.status.code();
    let ok = match lint {
        Lint::Clean => code == Some(0),
        Lint::OnlyWorkerFamilies => {
            (code == Some(0) || code == Some(3))
                && !report.contains("error")
                && !report.lines().any(|l| l.starts_with("heapwarden_"))
        }
    };
    assert!(
        ok,
        "promtool rejected the page ({code:?}):\n{report}\n---\n{page}"
    );
}

// Whatever the workers send, promtool parses the page (one promtool run per case, so
// the default is small; `bench/fuzz.sh` runs more).
proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
        std::env::var("HEAPWARDEN_PROMTOOL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16)
    ))]
    #[test]
    fn random_worker_text_never_breaks_the_page_for_promtool(
        texts in proptest::collection::vec(super::exposition::tests::arb_exposition(), 1..4)
    ) {
        let snapshot = Exposition {
            workers: texts
                .iter()
                .enumerate()
                .map(|(slot, text)| (slot, WorkerText { worker_id: slot as u64, text: Arc::from(text.as_str()) }))
                .collect(),
            ..Exposition::default()
        };
        promtool_check(&render_metrics("", &snapshot), Lint::OnlyWorkerFamilies);
    }
}

#[tokio::test]
async fn metrics_carry_the_leak_suspects_and_promtool_accepts_them() {
    use crate::metric_names::labels::Rule;
    use crate::watchdog::{Suspect, SuspectKind, SuspectView};
    let mut f = fixture(ready_pool(), Instant::now(), true);
    let (suspects_tx, suspects) = watch::channel(SuspectView::new());
    f.state.suspects = suspects;
    let (_, empty) = get_path(router(f.state.clone()), "/metrics", None).await;
    assert!(
        empty.contains("# TYPE heapwarden_leak_suspect_info gauge"),
        "{empty}"
    );
    suspects_tx.send_modify(|view| {
        view.insert(
            1,
            Suspect {
                worker_id: 101,
                rule: Rule::Trend,
                function: "<impl Drop for \"q\\x\">::drop".to_owned(),
                profile_id: Some(12),
                kind: SuspectKind::Heap,
                growth_bytes: 42991616,
                profile_link: "http://pyro:4040/explore?query=memory%3Ainuse_space".to_owned(),
                detected_at: Instant::now(),
            },
        );
    });
    let (status, body) = get_path(router(f.state), "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let line = r#"heapwarden_leak_suspect_info{worker="1",rule="trend",function="<impl Drop for \"q\\x\">::drop",profile_id="12",kind="heap",profile_link="http://pyro:4040/explore?query=memory%3Ainuse_space"} 42991616"#;
    assert!(body.contains(line), "{body}");
    // The family as the watchdog renders it follows every convention (the fixture's
    // recorder has no HELP texts, so the whole page would not).
    let family = crate::watchdog::suspect::render(&suspects_tx.borrow());
    promtool_check(&family, Lint::Clean);
}

/// A label value as the text format escapes it, read back.
fn unescape(value: &str) -> String {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        out.push(match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => '\n',
                Some(other) => other,
                None => '\\',
            },
            (c, false) => c,
        });
    }
    out
}

// The series the agent renders itself (per-worker families, float counters) are strict
// text format whatever their label values and figures, and read back as recorded.
proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
    ))]
    #[test]
    fn the_agents_own_series_are_strict_text_and_read_back_as_recorded(
        worker in proptest::prelude::any::<String>(),
        value in proptest::num::f64::ANY,
        count in proptest::prelude::any::<u64>(),
    ) {
        use crate::metric_names::{WORKER_FAILED, WORKER_RSS};
        use super::exposition::{Line, parse_line};
        let recorder = build_recorder().expect("recorder");
        metrics::with_local_recorder(&recorder, || {
            metrics::gauge!(WORKER_RSS.name, "worker" => worker.clone()).set(value);
            metrics::counter!(WORKER_FAILED.name, "worker" => worker.clone()).absolute(count);
        });
        let page = recorder.handle().render();
        let mut read = 0;
        for line in page.lines() {
            let sample = match parse_line(line) {
                Ok(Line::Sample(sample)) => sample,
                Ok(_) => continue,
                Err(e) => return Err(proptest::test_runner::TestCaseError::fail(format!("{line:?}: {e:?}"))),
            };
            if sample.name != WORKER_RSS.name && sample.name != WORKER_FAILED.name {
                continue;
            }
            proptest::prop_assert_eq!(sample.labels.len(), 1);
            proptest::prop_assert_eq!(unescape(sample.label("worker").unwrap_or_default()), worker.clone());
            if sample.name == WORKER_FAILED.name {
                proptest::prop_assert_eq!(sample.value.parse::<u64>().ok(), Some(count));
            } else {
                let back: f64 = match sample.value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    text => text.parse().unwrap_or(f64::NAN),
                };
                proptest::prop_assert!(
                    back == value || (back.is_nan() && value.is_nan()),
                    "{} for {value}", sample.value
                );
            }
            read += 1;
        }
        proptest::prop_assert_eq!(read, 2, "{}", page);
    }
}
