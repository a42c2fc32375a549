//! End to end: C workers under `probe = "native"` — the real agent, the preload library
//! it finds next to itself, and programs compiled here with `cc -O1 -g` that know
//! nothing of heapwarden (sd_notify only): a leak in a named C function is caught,
//! profiled, diffed and replaced; a steady worker never trips; a static binary runs
//! without the probe and the agent says why.

mod native_support;

use heapwarden_tests::{Sandbox, TimeoutGuard, msg, poll, poll_until};
use native_support::*;

const LEAK_FN: &str = "leak_in_named_c_function";
const MIB: u64 = 1024 * 1024;

/// Both tests run the same rules; only the leak differs, so the steady test's "no trip"
/// is the same configuration that catches a 4 MiB/s leak in a few seconds.
const RULES: &str = r#"
[watchdog]
warmup = "2s"
max-memory = "1GiB"
growth = "64MiB"
strikes = 3
trend-window = "4s"
trend-min-rate = "1MiB/s"
action = "restart"
"#;

fn wrapped(worker: &std::path::Path, mode: &str) -> String {
    // A shell wrapper that execs the program: the program, not the shell, ends up
    // attached (same pid; the agent takes the program's hello as the new claimant).
    format!(
        r#"["/bin/sh", "-c", "exec \"$0\" {mode}", {:?}]"#,
        worker.display().to_string()
    )
}

#[test]
fn a_c_worker_leaking_in_a_named_function_is_caught_profiled_diffed_and_replaced() {
    let _guard = TimeoutGuard::new("native_c_leak", SECS(150));
    let sandbox = Sandbox::new();
    let worker = compile_worker(&sandbox, "c-worker", &[]);
    let env = "[pool.env]\nLEAK_SLOT = \"1\"\nLEAK_KIB = \"40\"\nNATIVE_DRAIN_HANDLER = \"1\"\n";
    let native = start_native(
        sandbox,
        2,
        &wrapped(&worker, "leak"),
        &format!("{env}{RULES}"),
    );
    let logs = &native.agent.logs;
    logs.wait_for(SECS(30), "the native plan", |r| {
        r["msg"] == "Workers get a probe." && r["probe"] == "native"
    });

    // Heap figures for every slot, from jemalloc inside the C program (the shell that
    // exec'd it held far less than the ~8 MiB working set).
    let heaps = poll(SECS(30), "heap figures of both slots", || {
        native
            .heap_of_every_slot()
            .filter(|h| h.len() == 2 && h.iter().all(|b| *b >= 4 * MIB))
    });
    println!("heap_allocated per slot: {heaps:?}");

    let detection = logs.wait_for(SECS(60), "leak detection on worker 1", |r| {
        r["msg"] == "A memory leak was detected." && r["worker"] == 1
    });
    assert_eq!(detection["rule"], "trend", "{detection}");
    let top_site = detection["top_growing_sites"][0]["function"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(top_site, LEAK_FN, "{detection}");
    let leak_id = detection["profile_id"].as_u64().expect("leak profile id");
    let base_id = detection["baseline_profile_id"]
        .as_u64()
        .expect("baseline profile id");

    let profiles = native.cli(&["profiles"]);
    let of_slot_1 = |trigger: &str| {
        profiles
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["slot"] == 1 && p["trigger"] == trigger && p["id"].as_u64().is_some())
    };
    assert!(of_slot_1("baseline") && of_slot_1("leak"), "{profiles}");

    let diff = native.cli(&["diff", &leak_id.to_string()]);
    assert_eq!(diff["base_id"], base_id, "{diff}");
    assert_eq!(diff["top"][0]["function"], LEAK_FN, "{diff}");

    let dir = native.sandbox.path();
    let (base, leak) = (dir.join("base.pb.gz"), dir.join("leak.pb.gz"));
    for (id, file) in [(base_id, &base), (leak_id, &leak)] {
        native.cli(&["pull", &id.to_string(), "-o", file.to_str().unwrap()]);
    }
    let top = go_pprof(
        dir,
        &[
            "-top",
            "-base",
            base.to_str().unwrap(),
            leak.to_str().unwrap(),
        ],
    );
    assert_eq!(top_entry(&top), LEAK_FN, "go tool pprof -top -base:\n{top}");
    let plain = go_pprof(dir, &["-top", leak.to_str().unwrap()]);
    assert!(
        !plain.contains("prof_backtrace") && !plain.contains("_rjem_"),
        "jemalloc's frames were not trimmed:\n{plain}"
    );

    // The leaking worker is replaced; its drain reached the handler it registered.
    logs.wait_for(SECS(30), "the old worker 1 drained by its handler", |r| {
        r["msg"] == "native worker drained by its handler" && r["worker"] == 1
    });
    poll_until(SECS(30), "worker 1 replaced and ready", || {
        let rows = native.cli(&["ps"]);
        rows[1]["restarts"].as_u64().unwrap_or(0) >= 1 && rows[1]["ready"] == true
    });
}

#[test]
fn a_steady_c_worker_never_trips_and_a_drain_arrives_as_sigterm() {
    let _guard = TimeoutGuard::new("native_c_steady", SECS(120));
    let sandbox = Sandbox::new();
    let worker = compile_worker(&sandbox, "c-worker", &[]);
    let native = start_native(sandbox, 2, &wrapped(&worker, "steady"), RULES);
    let logs = &native.agent.logs;
    // Both baselines written: warm-up is over and the rules are running.
    logs.wait_for_n(2, SECS(30), "both baseline profiles", |r| {
        r["msg"] == "A heap profile was written." && r["trigger"] == "baseline"
    });
    let started = std::time::Instant::now();
    // 20 s at 100 ms: 200 samples per worker, five trend windows, each sample judged.
    let mut samples = 0;
    while started.elapsed() < SECS(20) {
        assert!(
            logs.matching(msg("A memory leak was detected.")).is_empty(),
            "a steady worker tripped a rule:\n{}",
            logs.raw()
        );
        let heaps = native
            .heap_of_every_slot()
            .expect("heap figures of both slots");
        assert!(heaps.iter().all(|b| *b >= 4 * MIB), "{heaps:?}");
        samples += 1;
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(samples >= 20);
    assert!(logs.matching(msg("A memory leak was detected.")).is_empty());

    // A drain (make-before-break restart) reaches a program without a handler as SIGTERM.
    native.cli(&["restart", "0"]);
    logs.wait_for(SECS(10), "worker 0 got SIGTERM from the drain", |r| {
        r["msg"] == "native worker got SIGTERM" && r["worker"] == 0
    });
}

#[test]
fn a_statically_linked_worker_runs_without_the_probe_and_the_agent_says_so() {
    let _guard = TimeoutGuard::new("native_c_static", SECS(60));
    let sandbox = Sandbox::new();
    let worker = compile_worker(&sandbox, "static-worker", &["-static"]);
    let command = format!(r#"[{:?}, "steady"]"#, worker.display().to_string());
    let native = start_native(sandbox, 1, &command, "");
    let logs = &native.agent.logs;
    let refused = logs.wait_for(SECS(30), "the refusal", |r| {
        r["msg"] == "The probe cannot be attached; workers run as plain programs with procfs figures only."
            && r["probe"] == "native"
    });
    assert!(
        refused["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("statically linked"),
        "{refused}"
    );
    logs.wait_for(
        SECS(30),
        "the static worker running",
        msg("native worker ready"),
    );
    poll_until(SECS(30), "the static worker ready", || {
        native.cli(&["ps"])[0]["ready"] == true
    });
    let rows = native.cli(&["ps"]);
    assert!(rows[0]["heap_allocated_bytes"].is_null(), "{rows}");
    assert_eq!(rows[0]["probe"], false, "{rows}");
    assert!(rows[0]["rss_bytes"].as_u64() > Some(0), "{rows}");
    assert!(logs.matching(msg(ATTACHED)).is_empty());
}
