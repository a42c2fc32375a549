//! V8 sampling profiles → pprof: names, lines, trimming, totals, and hostile input.

use std::time::SystemTime;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::profiles::diff_profiles;

fn profile(nodes: serde_json::Value, samples: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "format": "heapwarden-v8-sampling", "version": 1, "pid": 7,
        "sampling_interval": 32768, "nodes": nodes, "samples": samples,
    }))
    .unwrap()
}

fn leak_profile(leaked: u64) -> Vec<u8> {
    profile(
        json!([
            [1, 0, "(root)", "", -1, -1, 0],
            [2, 1, "main", "file:///srv/app.js", 40, 0, 0],
            [
                3,
                2,
                "leakInNamedFunction",
                "file:///srv/app.js",
                9,
                4,
                leaked
            ],
            [4, 2, "", "file:///srv/app.js", 20, 2, 4096],
            [
                5,
                1,
                "sample",
                "/var/lib/heapwarden/probes/heapwarden-probe.cjs",
                100,
                0,
                512
            ],
            [
                6,
                5,
                "flatten",
                "/var/lib/heapwarden/probes/heapwarden-probe.cjs",
                150,
                0,
                256
            ],
        ]),
        json!([[3, 1000], [3, 1000], [4, 4096], [5, 512]]),
    )
}

fn names(p: &pprof::Profile, sample: &pprof::Sample) -> Vec<String> {
    sample
        .location_id
        .iter()
        .map(|id| {
            let loc = &p.location[*id as usize - 1];
            let f = &p.function[loc.line[0].function_id as usize - 1];
            format!("{}:{}", p.string_table[f.name as usize], loc.line[0].line)
        })
        .collect()
}

#[test]
fn functions_carry_names_files_and_one_based_lines_leaf_first() {
    let (p, totals) = parse_and_build(&leak_profile(1 << 20), SystemTime::now()).unwrap();
    assert_eq!(totals.bytes, (1 << 20) + 4096 + 512 + 256);
    let stacks: Vec<Vec<String>> = p.sample.iter().map(|s| names(&p, s)).collect();
    assert_eq!(stacks[0], ["leakInNamedFunction:10", "main:41"]);
    assert_eq!(stacks[1], ["(anonymous app.js:21:3):21", "main:41"]);
    // The probe's own frames are trimmed: its allocations show as the probe's.
    assert_eq!(stacks[2], ["(heapwarden probe):0"]);
    assert_eq!(stacks[3], ["(heapwarden probe):0"]);
    let f = &p.function[0];
    assert_eq!(p.string_table[f.filename as usize], "file:///srv/app.js");
    let types: Vec<&str> = p
        .sample_type
        .iter()
        .map(|t| p.string_table[t.r#type as usize].as_str())
        .collect();
    assert_eq!(types, ["inuse_objects", "inuse_space"]);
    assert_eq!(p.sample[0].value[1], 1 << 20);
    assert!(
        p.sample[0].value[0] >= 2,
        "two sampled objects, unbiased upwards"
    );
}

#[test]
fn the_diff_names_the_leaking_js_function_first() {
    let (base, _) = parse_and_build(&leak_profile(1 << 20), SystemTime::now()).unwrap();
    let (leak, _) = parse_and_build(&leak_profile(64 << 20), SystemTime::now()).unwrap();
    let report = diff_profiles(1, &base, 2, &leak).unwrap();
    assert_eq!(report.top[0].function, "leakInNamedFunction");
    assert_eq!(report.top[0].delta_bytes, 63 << 20);
    let bytes = pprof::encode_gz(&leak).unwrap();
    assert_eq!(pprof::decode(&bytes).unwrap(), leak);
}

/// An Express-like stack: the app's route handler calls a dependency that calls a V8
/// builtin; a second allocation happens in a dependency callback with no app frame.
fn express_like(handler_bytes: u64, orphan_bytes: u64) -> Vec<u8> {
    profile(
        json!([
            [1, 0, "(root)", "", -1, -1, 0],
            [
                2,
                1,
                "processTicksAndRejections",
                "node:internal/process/task_queues",
                60,
                0,
                0
            ],
            [3, 2, "", "file:///srv/app/server.js", 13, 22, 0],
            [
                4,
                3,
                "parse",
                "file:///srv/app/node_modules/body-parser/lib/types/json.js",
                76,
                2,
                0
            ],
            [5, 4, "parse", "", -1, -1, handler_bytes],
            [6, 2, "", "file:///srv/app/server.js", 30, 4, 4096],
            [
                7,
                2,
                "onEnd",
                "file:///srv/app/node_modules/raw-body/index.js",
                240,
                2,
                0
            ],
            [8, 7, "parse", "", -1, -1, orphan_bytes],
        ]),
        json!([]),
    )
}

/// A Fastify route handler before and after the optimising compiler inlined it into the
/// framework's dispatcher (V8 then credits its allocations to the dispatcher), the body
/// parser's bytes beside it; `second_route` makes the dispatcher call two handlers.
fn fastify_like(direct: u64, inlined: u64, parser: u64, second_route: bool) -> Vec<u8> {
    let dispatcher = "file:///srv/app/node_modules/fastify/lib/handle-request.js";
    let mut nodes = vec![
        json!([1, 0, "(root)", "", -1, -1, 0]),
        json!([
            2,
            1,
            "processTicksAndRejections",
            "node:internal/process/task_queues",
            60,
            0,
            0
        ]),
        json!([3, 2, "preHandlerCallbackInner", dispatcher, 170, 0, inlined]),
        json!([
            4,
            3,
            "recordAudit",
            "file:///srv/app/server.js",
            7,
            40,
            direct
        ]),
        json!([
            5,
            2,
            "onEnd",
            "file:///srv/app/node_modules/fastify/lib/content-type-parser.js",
            200,
            0,
            0
        ]),
        json!([6, 5, "parse", "", -1, -1, parser]),
    ];
    if second_route {
        nodes.push(json!([
            7,
            3,
            "listAudit",
            "file:///srv/app/server.js",
            12,
            40,
            4096
        ]));
    }
    profile(json!(nodes), json!([]))
}

#[test]
fn a_handler_inlined_into_a_dependency_keeps_its_bytes_in_the_app_frame_view() {
    let build = |p: Vec<u8>| parse_and_build(&p, SystemTime::now()).unwrap().0;
    let base = build(fastify_like(1 << 20, 0, 1 << 20, false));
    let leak = build(fastify_like(2 << 20, 30 << 20, 20 << 20, false));
    let report = diff_profiles(1, &base, 2, &leak).unwrap();
    let top = &report.top[0];
    assert_eq!((top.function.as_str(), top.line), ("recordAudit", 8));
    assert!(top.in_app);
    assert_eq!(top.delta_bytes, 31 << 20);
    assert_eq!(top.inlined_into, "preHandlerCallbackInner");
    // The parser's bytes have no application function to go to: they stay its own.
    let parser = &report.top[1];
    assert_eq!((parser.function.as_str(), parser.in_app), ("parse", false));
    assert_eq!(parser.inlined_into, "");
    // The raw view is V8's: the dispatcher allocated them.
    assert_eq!(report.top_sites[0].function, "preHandlerCallbackInner");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["top"][0]["inlined_into"], "preHandlerCallbackInner");
    assert!(json["top"][1].get("inlined_into").is_none(), "{json}");

    // A dispatcher seen calling two handlers does not say which one it inlined.
    let base = build(fastify_like(1 << 20, 0, 1 << 20, true));
    let leak = build(fastify_like(2 << 20, 30 << 20, 20 << 20, true));
    let report = diff_profiles(1, &base, 2, &leak).unwrap();
    assert_eq!(report.top[0].function, "recordAudit");
    assert_eq!(report.top[0].delta_bytes, 1 << 20);
    assert_eq!(report.top[0].inlined_into, "");
    let dispatcher = report
        .top
        .iter()
        .find(|e| e.function == "preHandlerCallbackInner")
        .unwrap();
    assert!(!dispatcher.in_app);
    assert_eq!(dispatcher.delta_bytes, 30 << 20);
}

#[test]
fn anonymous_functions_of_one_file_are_told_apart_by_line_and_column() {
    let (p, totals) = parse_and_build(&express_like(1 << 20, 0), SystemTime::now()).unwrap();
    let names: Vec<&str> = p
        .function
        .iter()
        .map(|f| p.string_table[f.name as usize].as_str())
        .collect();
    assert!(names.contains(&"(anonymous server.js:14:23)"), "{names:?}");
    assert!(names.contains(&"(anonymous server.js:31:5)"), "{names:?}");
    // Two builtins without a script stay two functions only when named differently.
    assert_eq!(
        names.iter().filter(|n| **n == "parse").count(),
        2,
        "{names:?}"
    );
    assert_eq!(totals.functions, names.len());
}

#[test]
fn node_diffs_lead_with_the_first_application_frame_with_file_and_line() {
    let (base, _) = parse_and_build(&express_like(1 << 20, 1 << 20), SystemTime::now()).unwrap();
    let (leak, _) = parse_and_build(&express_like(40 << 20, 3 << 20), SystemTime::now()).unwrap();
    let report = diff_profiles(1, &base, 2, &leak).unwrap();
    assert_eq!(report.view, crate::profiles::DiffView::AppFrame);
    let top = crate::profiles::top_entry_for_page(&report).unwrap();
    assert_eq!(top.function, "(anonymous server.js:14:23)");
    assert_eq!((top.file.as_str(), top.line), ("/srv/app/server.js", 14));
    assert_eq!(top.short_location(), "server.js:14");
    assert_eq!(top.delta_bytes, 39 << 20);
    assert!(top.in_app);
    // Bytes allocated with no application frame on the stack keep their site, marked.
    let orphan = &report.top[1];
    assert_eq!((orphan.function.as_str(), orphan.in_app), ("parse", false));
    assert_eq!(orphan.delta_bytes, 2 << 20);
    // The raw allocation sites: V8's builtin first, merged across both callers.
    assert_eq!(report.top_sites[0].function, "parse");
    assert_eq!(report.top_sites[0].delta_bytes, 41 << 20);
    assert_eq!(
        crate::profiles::top_sites(&report, 1),
        "(anonymous server.js:14:23) (server.js:14) +39.0MiB"
    );
    // The application's code leads even when a dependency's callback allocated more.
    let (leak, _) = parse_and_build(&express_like(2 << 20, 90 << 20), SystemTime::now()).unwrap();
    let report = diff_profiles(1, &base, 2, &leak).unwrap();
    assert_eq!(report.top[0].function, "(anonymous server.js:14:23)");
    assert_eq!(
        (report.top[1].function.as_str(), report.top[1].in_app),
        ("parse", false)
    );
    assert_eq!(report.top[1].delta_bytes, 89 << 20);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["view"], "app_frame");
    assert_eq!(json["top"][0]["line"], 14);
}

#[test]
fn application_files_exclude_dependencies_node_internals_builtins_and_the_probe() {
    use crate::profiles::{first_app_frame, is_application_file};
    assert!(is_application_file("/srv/app/server.js"));
    assert!(is_application_file("file:///srv/app/routes/users.mjs"));
    for file in [
        "",
        "node:internal/streams/readable",
        "node:events",
        "/srv/app/node_modules/express/lib/router/index.js",
        "/var/lib/heapwarden/probes/heapwarden-probe.cjs",
    ] {
        assert!(!is_application_file(file), "{file}");
    }
    let frames = [
        ("parse", ""),
        ("parse", "/a/node_modules/x.js"),
        ("h", "/a/s.js"),
    ];
    assert_eq!(first_app_frame(&frames), Some(2));
    assert_eq!(first_app_frame(&frames[..2]), None);
}

#[test]
fn malformed_profiles_are_errors() {
    let bad: Vec<Vec<u8>> = vec![
        b"not json".to_vec(),
        br#"{"format":"other","version":1,"sampling_interval":1,"nodes":[]}"#.to_vec(),
        profile(json!([[1, 9, "f", "", 0, 0, 1]]), json!([])),
        profile(
            json!([[1, 2, "a", "", 0, 0, 1], [2, 1, "b", "", 0, 0, 1]]),
            json!([]),
        ),
        profile(
            json!([[1, 0, "a", "", 0, 0, 1], [1, 0, "b", "", 0, 0, 1]]),
            json!([]),
        ),
        profile(json!([[1, 0, "a", "", 0, 0, 1]]), json!([[5, 10]])),
        profile(json!([[1, 0, "a", "", 0, 0, -5]]), json!([])),
        profile(json!([[1, 0, "a"]]), json!([])),
    ];
    for json in bad {
        assert!(
            parse_and_build(&json, SystemTime::now()).is_err(),
            "{}",
            String::from_utf8_lossy(&json)
        );
    }
}

#[test]
fn only_heap_snapshots_pass_the_snapshot_check() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("a");
    std::fs::write(&good, "{\"snapshot\":{\"meta\":{\"node_fields\":[]}}}").unwrap();
    let bad = dir.path().join("b");
    std::fs::write(&bad, "{\"format\":\"heapwarden-v8-sampling\"}").unwrap();
    assert!(looks_like_heap_snapshot(&good).unwrap());
    assert!(!looks_like_heap_snapshot(&bad).unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_node_tables_never_panic(
        rows in proptest::collection::vec(
            (0u64..40, 0u64..40, "[a-z(]{0,6}", "[a-z:/.]{0,12}", -2i64..500, -2i64..80, -10.0f64..1e7),
            0..60),
        samples in proptest::collection::vec((0u64..40, 0.0f64..1e6), 0..60),
        interval in -5.0f64..1e6,
    ) {
        let nodes: Vec<serde_json::Value> = rows.iter().map(|r| json!([r.0, r.1, r.2, r.3, r.4, r.5, r.6])).collect();
        let json = serde_json::to_vec(&json!({
            "format": "heapwarden-v8-sampling", "version": 1,
            "sampling_interval": interval, "nodes": nodes, "samples": samples,
        })).unwrap();
        if let Ok((p, totals)) = parse_and_build(&json, SystemTime::now()) {
            prop_assert_eq!(p.sample.len(), totals.samples);
            for s in &p.sample {
                prop_assert!(s.location_id.iter().all(|id| *id >= 1 && *id as usize <= p.location.len()));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_and_build(&bytes, SystemTime::now());
    }
}

/// A hostile profile: one chain `depth` nodes deep where every node holds bytes (the
/// shape that made the converter quadratic: 396 KB took 534 MB and 6.3 s).
fn deep_chain(depth: u64) -> Vec<u8> {
    let mut nodes = vec![json!([1, 0, "(root)", "", -1, -1, 0])];
    for id in 2..=depth + 1 {
        nodes.push(json!([
            id,
            id - 1,
            format!("f{id}"),
            "file:///a.js",
            id,
            0,
            64
        ]));
    }
    profile(json!(nodes), json!([]))
}

#[test]
fn a_deep_hostile_chain_converts_in_linear_time_with_stacks_cut_at_the_depth_limit() {
    let json = deep_chain(20_000);
    let started = std::time::Instant::now();
    let (profile, totals) = parse_and_build(&json, SystemTime::now()).expect("converts");
    let took = started.elapsed();
    println!(
        "{} bytes of JSON, 20000 nodes deep: {took:?}, {} samples",
        json.len(),
        totals.samples
    );
    assert_eq!(totals.samples, 20_000);
    let longest = profile.sample.iter().map(|s| s.location_id.len()).max();
    assert_eq!(longest, Some(MAX_STACK_DEPTH));
    let ids: usize = profile.sample.iter().map(|s| s.location_id.len()).sum();
    assert!(ids <= 20_000 * MAX_STACK_DEPTH, "{ids} location ids");
    // Quadratic work (200 million frame steps) took minutes in this debug build; the
    // bound is loose for a loaded machine, the structural bound above is the real one.
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
}

#[test]
fn a_cycle_deep_in_a_chain_is_an_error_not_a_hang() {
    let mut nodes = vec![json!([1, 0, "(root)", "", -1, -1, 0])];
    for id in 2..=5_000u64 {
        nodes.push(json!([id, id - 1, "f", "file:///a.js", 1, 0, 8]));
    }
    // Node 2's parent becomes the last node: 2 → 5000 → … → 2.
    nodes[1] = json!([2, 5_000, "f", "file:///a.js", 1, 0, 8]);
    let err = parse_and_build(&profile(json!(nodes), json!([])), SystemTime::now()).unwrap_err();
    assert!(err.to_string().contains("cycle"), "{err}");
}
