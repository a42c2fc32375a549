//! Fuzz target (`bench/fuzz.sh`): arbitrary requests — methods, paths near the real
//! routes (slot numbers, ids, escapes, `..`, percent-encoding), queries, bearer headers of
//! every shape, bodies up to past the limit — through the whole admin router with its
//! real API, profile store and pool view: an answer below 500 (or the probes' designed
//! 503: the fixture's slot 1 is in backoff, its heartbeat goes stale), never a panic.

use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

use super::api::{ApiState, api_router};
use super::exposition::exposition_channel;
use super::*;
use crate::metric_names::build_recorder;
use crate::profiles::{ProfileStore, ProfileStoreHandle};
use crate::supervisor::{
    PoolView, ReloadOutcome, Request as SupervisorRequest, SlotState, SlotView, WorkerView,
};

const TOKEN: &str = "fuzz-token";

fn arb_request() -> impl Strategy<Value = (String, String, Option<String>, Vec<u8>)> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]);
    let segment = prop_oneof![
        prop::sample::select(vec![
            "api",
            "v1",
            "workers",
            "profiles",
            "profile",
            "restart",
            "reload",
            "diff",
            "metrics",
            "healthz",
            "readyz",
            "0",
            "1",
            "2",
            "-1",
            "007",
            "18446744073709551616",
            "..",
            "%2e%2e",
            "%00",
            "abc",
            "1.pb.gz",
            "",
            "%ZZ",
        ])
        .prop_map(str::to_string),
        "[a-z0-9%._-]{0,12}",
    ];
    let path = (
        prop::collection::vec(segment, 0..6),
        prop::option::of("[a-z=&0-9%]{0,16}"),
    )
        .prop_map(|(segments, query)| {
            let mut path = format!("/{}", segments.join("/"));
            if let Some(q) = query {
                path.push('?');
                path.push_str(&q);
            }
            path
        });
    let auth = prop::option::of(prop_oneof![
        Just(format!("Bearer {TOKEN}")),
        Just(format!("bearer {TOKEN}")),
        Just(format!("Bearer {TOKEN}x")),
        Just("Bearer".to_string()),
        Just("Basic Zm9v".to_string()),
        "[ -~]{0,40}",
    ]);
    let body = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..64),
        1 => (0usize..2).prop_map(|extra| vec![b'x'; BODY_LIMIT + extra]),
    ];
    (method, path, auth, body).prop_map(|(m, p, a, b)| (m.to_string(), p, a, b))
}

fn pool() -> PoolView {
    let worker = WorkerView {
        worker_id: 1,
        pid: std::process::id(),
        started_at: Instant::now(),
        ready_at: None,
        started_wall: SystemTime::now(),
        ready: true,
        probe: false,
        link: None,
        children: None,
        runtime: None,
    };
    PoolView {
        slots: vec![
            SlotView {
                slot: 0,
                state: SlotState::Ready,
                worker: Some(worker),
                restarts: 0,
                budget_exhausted: false,
            },
            SlotView {
                slot: 1,
                state: SlotState::Backoff,
                worker: None,
                restarts: 3,
                budget_exhausted: true,
            },
        ],
        stopping: false,
    }
}

/// The path without its query, as the router matches it.
fn request_path(uri: &str) -> &str {
    uri.split('?').next().unwrap_or(uri)
}

#[test]
fn fuzz_admin_routes() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let state_dir = tempfile::tempdir().expect("tempdir");
    let store = ProfileStore::open(state_dir.path(), Default::default()).expect("store");
    let (store, _thread) = ProfileStoreHandle::spawn(store);
    let (requests, mut supervisor) = mpsc::channel(16);
    let (_pool_tx, pool_rx) = watch::channel(pool());
    let (_figures_tx, figures) = watch::channel(Default::default());
    let (_beat_tx, heartbeat) = watch::channel(Instant::now());
    let (_writer, exposition) = exposition_channel(Duration::from_secs(1));
    let recorder = build_recorder().expect("recorder");
    let router = runtime.block_on(async {
        // Stands in for the supervisor: takes every request it is sent.
        tokio::spawn(async move {
            while let Some(request) = supervisor.recv().await {
                if let SupervisorRequest::Reload { reply: Some(reply) } = request {
                    let _ = reply.send(ReloadOutcome::Applied {
                        needs_restart: Vec::new(),
                        replaces_workers: true,
                    });
                }
            }
        });
        let api = api_router(ApiState {
            pool: pool_rx.clone(),
            figures,
            requests,
            store,
            // `profiles.snapshot-headroom`'s default.
            snapshot_headroom: 2.0,
            log: slog::Logger::root(slog::Discard, slog::o!()),
        });
        router_with_api(
            AdminState {
                metrics: recorder.handle(),
                exposition,
                pool: pool_rx,
                heartbeat,
                heartbeat_max_age: Duration::from_secs(5),
                token: AdminToken::new(TOKEN),
                open_metrics: false,
                worker_page: WorkerPageCache::default(),
                suspects: tokio::sync::watch::channel(Default::default()).1,
            },
            api,
        )
    });
    crate::fuzzing::fuzz(
        "admin routes",
        arb_request(),
        |(method, path, auth, body)| {
            let mut request = Request::builder()
                .method(method.as_str())
                .uri(path.as_str());
            if let Some(auth) = &auth {
                request = request.header("authorization", auth.as_str());
            }
            // Paths the HTTP layer itself refuses never reach the router.
            let Ok(request) = request.body(Body::from(body)) else {
                return Ok(());
            };
            let status = runtime.block_on(async {
                let response = router.clone().oneshot(request).await.expect("infallible");
                let status = response.status();
                let _ = axum::body::to_bytes(response.into_body(), 8 << 20).await;
                status
            });
            let probe = request_path(&path);
            let designed = status.as_u16() == 503 && (probe == "/readyz" || probe == "/healthz");
            prop_assert!(
                status.as_u16() < 500 || designed,
                "{} {} ({:?}) → {}",
                method,
                path,
                auth,
                status
            );
            Ok(())
        },
    );
}
