//! End-to-end tests of Node.js workers under the real agent, with the real Node probe
//! loaded through NODE_OPTIONS into a plain http app that knows nothing of heapwarden:
//! figures, claims under `npm start` and a forked child, snapshots, the fallback for a
//! worker that never loads the probe.

mod node_support;

use heapwarden_tests::*;
use node_support::*;
use serde_json::Value;

#[test]
fn heap_figures_match_the_apps_own_memory_usage_and_user_node_options_are_kept() {
    let _guard = TimeoutGuard::new("node figures", SECS(120));
    let setup = start(
        r#"["node", "app.js"]"#,
        1,
        "[pool.env]\nNODE_OPTIONS = \"--max-old-space-size=123\"\nMETRICS = \"1\"\n[sampling]\ninterval = \"250ms\"",
    );
    let mem = setup.app_mem();
    assert!(mem["claimed"].as_bool().unwrap(), "{mem}");
    assert!(
        !mem["controlFdLeft"].as_bool().unwrap(),
        "HEAPWARDEN_* left in process.env"
    );
    let options = mem["nodeOptions"].as_str().unwrap();
    assert!(options.starts_with("--require "), "{options}");
    assert!(options.ends_with("--max-old-space-size=123"), "{options}");
    let limit = mem["heapLimit"].as_f64().unwrap();
    assert!(
        limit < 200.0 * 1024.0 * 1024.0,
        "the user's option took effect: {limit}"
    );

    // Both reads move with the app's own allocations: compare pairs taken close together.
    let close = poll(SECS(30), "heap figures within 5%", || {
        let mem = setup.app_mem();
        let row = setup.workers().remove(0);
        let agent = row["heap_allocated_bytes"].as_f64()?;
        let app = mem["heapUsed"].as_f64()?;
        ((agent - app).abs() / app < 0.05).then_some((agent, app, row, mem))
    });
    let (_, _, row, mem) = close;
    let metrics = http_get(setup.admin, "/metrics", SECS(5)).unwrap().1;
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{worker=\"0\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    let external = gauge("heapwarden_worker_external_bytes");
    let app_external = mem["external"].as_f64().unwrap();
    assert!(
        (external - app_external).abs() / app_external < 0.25,
        "external {external} vs {app_external}"
    );
    assert!(gauge("heapwarden_worker_array_buffers_bytes") > 0.0);
    assert!(gauge("heapwarden_worker_runtime_lag_seconds") >= 0.0);
    assert!(
        gauge("heapwarden_worker_heap_active_bytes")
            >= gauge("heapwarden_worker_heap_allocated_bytes") * 0.5
    );
    assert!(
        !metrics.contains("heapwarden_worker_heap_resident_bytes{worker=\"0\"}"),
        "jemalloc-only figures are not faked for Node"
    );
    assert_eq!(row["probe"], true);
    // The app's own registry, merged under the worker label.
    let merged = poll(SECS(10), "the app's metrics in /metrics", || {
        let text = http_get(setup.admin, "/metrics", SECS(5)).ok()?.1;
        text.lines()
            .find(|l| l.starts_with("app_hits_total{worker=\"0\"}"))
            .map(str::to_string)
    });
    assert!(
        merged.rsplit(' ').next().unwrap().parse::<f64>().unwrap() >= 1.0,
        "{merged}"
    );
}

#[test]
fn under_npm_start_only_the_app_claims_and_its_forked_child_never_does() {
    let _guard = TimeoutGuard::new("npm start", SECS(120));
    let setup = start(r#"["npm", "start"]"#, 1, "[pool.env]\nFORK_CHILD = \"1\"");
    let claim = setup.agent.logs.wait_for(
        SECS(30),
        "the claim",
        msg("A worker's probe claimed its control channel."),
    );
    let app = setup.agent.logs.wait_for(SECS(30), "the app", |r| {
        r["msg"] == "The test app is listening."
    });
    let child = setup.agent.logs.wait_for(SECS(30), "the child", |r| {
        r["msg"] == "The forked child reports its probe."
    });
    let worker_pid = claim["worker_pid"].as_i64().unwrap();
    assert_eq!(claim["runtime"], "node");
    assert_ne!(
        claim["claimant_pid"].as_i64(),
        Some(worker_pid),
        "npm (the worker pid) must not claim"
    );
    assert_eq!(
        claim["claimant_pid"], app["fields"]["app_pid"],
        "the app claims: {claim} {app}"
    );
    assert_eq!(child["fields"]["probe_loaded"], true, "{child}");
    assert_eq!(child["fields"]["claimed"], false, "{child}");
    assert_eq!(child["fields"]["control_fd_env"], false, "{child}");
    let mem = setup.app_mem();
    assert_eq!(mem["claimed"], true);
    let row = &setup.workers()[0];
    assert!(row["heap_allocated_bytes"].as_u64().is_some(), "{row}");
    assert!(
        setup
            .agent
            .logs
            .matching(msg("A new process claimed a worker's control channel."))
            .is_empty()
    );
    let profile = setup
        .cli(&["dump", "0"])
        .expect("a profile of the npm-started app");
    assert_eq!(profile["kind"], "profile");
}

#[test]
fn snapshots_are_stored_as_v8_heap_snapshots_and_refused_without_memory_headroom() {
    let _guard = TimeoutGuard::new("node snapshot", SECS(120));
    let setup = start(r#"["node", "app.js"]"#, 1, "");
    let meta = setup.cli(&["dump", "0", "--snapshot"]).expect("snapshot");
    assert_eq!(meta["kind"], "snapshot", "{meta}");
    let id = meta["id"].to_string();
    let listed: Vec<Value> = setup
        .profiles()
        .into_iter()
        .filter(|p| p["kind"] == "snapshot")
        .collect();
    assert_eq!(listed.len(), 1);
    let out = setup.sandbox.path().join("w0.heapsnapshot");
    setup
        .cli(&["pull", &id, "-o", out.to_str().unwrap()])
        .expect("pull");
    let text = std::fs::read_to_string(&out).unwrap();
    let snapshot: Value = serde_json::from_str(&text).expect("a snapshot is JSON");
    assert!(
        snapshot["snapshot"]["meta"]["node_fields"].is_array(),
        "V8's snapshot header"
    );
    assert!(snapshot["nodes"].as_array().is_some_and(|n| !n.is_empty()));
    let err = setup.cli(&["diff", &id]).unwrap_err();
    assert!(err.contains("heap snapshot"), "{err}");

    let short = start(
        r#"["node", "app.js"]"#,
        1,
        "[profiles]\nsnapshot-headroom = 1000000.0",
    );
    poll_until(SECS(20), "a heap sample", || {
        short.workers()[0]["heap_allocated_bytes"].is_u64()
    });
    let err = short.cli(&["dump", "0", "--snapshot"]).unwrap_err();
    assert!(
        err.contains("HTTP 409") && err.contains("available"),
        "{err}"
    );
    assert!(short.profiles().iter().all(|p| p["kind"] != "snapshot"));
}

#[test]
fn a_worker_that_never_loads_the_probe_falls_back_to_procfs_with_one_log_line() {
    let _guard = TimeoutGuard::new("no probe", SECS(90));
    // `probe = "node"` on a Python program: NODE_OPTIONS means nothing to it.
    let command = py_worker_command();
    let command = command.trim_start_matches("command = ");
    let setup = start(command, 1, "probe = \"node\"\nready-timeout = \"3s\"");
    let line = setup.agent.logs.wait_for(
        SECS(20),
        "the fallback line",
        msg("The worker did not load its probe; only procfs figures are sampled."),
    );
    assert_eq!(line["probe"], "node");
    let row = &setup.workers()[0];
    assert_eq!(row["probe"], false);
    assert!(row["rss_bytes"].as_u64().is_some_and(|b| b > 0), "{row}");
    assert_eq!(
        setup
            .agent
            .logs
            .matching(msg(
                "The worker did not load its probe; only procfs figures are sampled."
            ))
            .len(),
        1
    );
}
