//! The app's own heap profiling and the probe's (issue #16, defect 7): an app (an APM
//! agent, DevTools) that stops V8's sampling heap profiler does not break the probe's
//! dumps (the probe restarts it and retries once, and counts it: `sampling_restarts` in
//! its stats, exported by the agent), and under `node --heap-prof` the
//! probe stands aside so node writes its own profile.

mod node_support;

use heapwarden_tests::http::http_get;
use heapwarden_tests::{TimeoutGuard, msg, poll_until};
use node_support::{SECS, start};

const STOPPER: &str = "setTimeout(() => { const s = new (require('inspector').Session)(); s.connect(); s.post('HeapProfiler.stopSampling', (e) => console.log('app stopped sampling ' + (e ? e.message : 'ok'))); }, 200); require('./app.js');";

#[test]
fn a_dump_after_the_app_stopped_sampling_restarts_it_and_succeeds() {
    let _guard = TimeoutGuard::new("node stop sampling", SECS(120));
    let command = serde_json::to_string(&["node", "-e", STOPPER]).unwrap();
    let setup = start(&command, 1, "");
    setup
        .agent
        .logs
        .wait_for(SECS(30), "the app's stopSampling", |r| {
            r["msg"].as_str() == Some("app stopped sampling ok")
        });
    let meta = setup.cli(&["dump", "0"]).expect("the dump succeeds");
    assert_eq!(meta["kind"], "profile", "{meta}");
    setup.agent.logs.wait_for(
        SECS(10),
        "the restart line",
        msg("The sampling heap profiler was stopped by someone else; the probe restarted it."),
    );
    // The probe counts it in its stats, and the agent exports the count.
    let series = "heapwarden_worker_probe_sampling_restarts_total{worker=\"0\"} 1";
    poll_until(SECS(10), "the sampling_restarts count on /metrics", || {
        http_get(setup.admin, "/metrics", SECS(5))
            .is_ok_and(|(_, body)| body.lines().any(|l| l == series))
    });
    // And the next dump needs no restart: the count stays at one.
    setup.cli(&["dump", "0"]).expect("the second dump");
    let restarted = setup.agent.logs.matching(msg(
        "The sampling heap profiler was stopped by someone else; the probe restarted it.",
    ));
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert_eq!(restarted[0]["fields"]["restarts"], 1, "{restarted:?}");
    let (_, body) = http_get(setup.admin, "/metrics", SECS(5)).unwrap();
    assert!(
        body.lines().any(|l| l == series),
        "{series} missing after the second dump"
    );
}

#[test]
fn under_heap_prof_the_probe_stands_aside_and_node_writes_its_profile() {
    let _guard = TimeoutGuard::new("node heap-prof", SECS(120));
    let command = serde_json::to_string(&[
        "node",
        "--heap-prof",
        "--heap-prof-dir",
        "heapprof",
        "-e",
        "process.on('SIGTERM', () => process.exit(0)); require('./app.js');",
    ])
    .unwrap();
    let setup = start(&command, 1, "");
    setup
        .agent
        .logs
        .wait_for(SECS(30), "the stand-aside line", |r| {
            r["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("The app runs with node --heap-prof"))
        });
    let err = setup.cli(&["dump", "0"]).unwrap_err();
    assert!(err.contains("--heap-prof"), "{err}");
    // Node writes its profile when the worker exits normally.
    let pid = setup.workers()[0]["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let dir = setup.sandbox.path().join("heapprof");
    poll_until(SECS(30), "node's own .heapprofile", || {
        std::fs::read_dir(&dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".heapprofile"))
        })
    });
}
