//! Real Express 5 and Fastify 5 apps from npm with the commonest Node leak (every request
//! body kept in a module-level array): the detection record, `heapwarden diff` and its
//! page entry lead with the app's own route handler, with file and line, while the raw
//! allocation sites (the frameworks' JSON parsers) stay one flag away (`--sites`).

mod node_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use heapwarden_tests::*;
use node_support::*;
use serde_json::Value;

const EXPRESS_JS: &str = include_str!("../node/frameworks/express-server.js");
const FASTIFY_JS: &str = include_str!("../node/frameworks/fastify-server.js");

const RULES: &str = r#"
[sampling]
interval = "250ms"
[watchdog]
warmup = "3s"
max-memory = "1GiB"
growth = "32MiB"
strikes = 2
trend-min-rate = "off"
action = "profile-only"
[log]
level = "info"
"#;

/// Clients posting JSON bodies (~6 KiB parsed) until dropped. The rule trips after
/// 32 MiB of kept bodies, so the handlers' own share (a few hundred bytes a request) is
/// well sampled at V8's one sample per 32 KiB.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(service: std::net::SocketAddr, path: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let items: Vec<Value> = (0..60)
            .map(|i| serde_json::json!({"sku": format!("sku-{i:06}"), "qty": i, "note": "n".repeat(40)}))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({"user": "u-1", "items": items})).unwrap();
        let threads = (0..2)
            .map(|_| {
                let (stop, sent, body) = (stop.clone(), sent.clone(), body.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((200, _)) = http_request(
                            service,
                            "POST",
                            path,
                            None,
                            &body,
                            Duration::from_secs(10),
                        ) {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            threads,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The line (1-based) of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> i64 {
    text.lines().position(|l| l.contains(needle)).expect(needle) as i64 + 1
}

fn leaking_app(app_js: &str, path: &'static str) -> (NodeSetup, Load, Value) {
    leaking_app_with(app_js, path, RULES)
}

fn leaking_app_with(app_js: &str, path: &'static str, rules: &str) -> (NodeSetup, Load, Value) {
    let modules = framework_modules();
    let setup = start_with(
        &[("server.js", app_js)],
        Some(&modules),
        r#"["node", "server.js"]"#,
        1,
        rules,
    );
    let load = Load::start(setup.service, path);
    let detection = setup.agent.logs.wait_for(
        SECS(120),
        "the detection record",
        msg("A memory leak was detected."),
    );
    assert!(
        load.sent.load(Ordering::Relaxed) > 0,
        "the app served the load"
    );
    (setup, load, detection)
}

/// What every framework case checks: the record, the JSON and text diffs, `--sites`.
fn assert_the_app_frame_leads(
    setup: &NodeSetup,
    detection: &Value,
    handler: &str,
    line: i64,
    parser_files: &[&str],
) {
    assert_eq!(
        detection["sites_view"],
        "app_frame",
        "{detection}\n{}",
        setup.agent.logs.raw()
    );
    let top = &detection["top_growing_sites"][0];
    assert_eq!(top["function"], handler, "{detection}");
    assert_eq!(top["line"], line, "{detection}");
    assert!(
        top["file"].as_str().unwrap().ends_with("/server.js"),
        "{detection}"
    );

    let leak_id = detection["profile_id"].as_u64().expect("a leak profile");
    let diff = setup.cli(&["diff", &leak_id.to_string()]).expect("diff");
    assert_eq!(diff["view"], "app_frame", "{diff}");
    assert_eq!(diff["top"][0]["function"], handler, "{diff}");
    assert_eq!(diff["top"][0]["line"], line, "{diff}");
    // Once hot, a handler that is the only one its framework's dispatcher has called is
    // inlined into it, and V8 credits its allocations to the dispatcher; those bytes are
    // the handler's, marked.
    // The dispatcher need not rank among the sites (its inlined bytes may be few, or in
    // the base profile only); where it does, it is a dependency's. A site of the same name
    // may be Node's own (`next` of a primordials iterator, node:internal/…): not the
    // app's either.
    if let Some(host) = diff["top"][0]["inlined_into"].as_str() {
        assert_ne!(host, handler, "{diff}");
        let sites = diff["top_sites"].as_array().unwrap();
        for site in sites.iter().filter(|e| e["function"] == host) {
            let file = site["file"].as_str().unwrap();
            assert!(
                file.contains("node_modules/") || file.starts_with("node:"),
                "{host} is a dependency's or Node's: {diff}"
            );
        }
    }
    // The parser's allocations (no app frame on their stack) follow, marked; as raw
    // allocation sites they lead.
    let sites = diff["top_sites"].as_array().unwrap();
    let first_site = &sites[0];
    let from_parser = |text: &str| parser_files.iter().any(|f| text.contains(f));
    assert!(
        from_parser(first_site["file"].as_str().unwrap()),
        "the parser allocated the kept bodies: {diff}"
    );
    assert!(
        diff["top"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["in_app"] == false && e["function"] == first_site["function"]),
        "{diff}"
    );

    // The table, as the on-call engineer reads it.
    let text = std::process::Command::new(heapwarden())
        .args(["diff", &leak_id.to_string(), "-c"])
        .arg(&setup.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let first_row = text.lines().nth(2).unwrap_or_default();
    assert!(
        first_row.contains(handler)
            && first_row
                .split("  (with its code inlined into")
                .next()
                .is_some_and(|row| row.ends_with(&format!("server.js:{line}"))),
        "{text}"
    );
    let sites_text = std::process::Command::new(heapwarden())
        .args(["diff", &leak_id.to_string(), "--sites", "-c"])
        .arg(&setup.config)
        .output()
        .unwrap();
    let sites_text = String::from_utf8_lossy(&sites_text.stdout).into_owned();
    assert!(sites_text.contains("ALLOCATION SITE"), "{sites_text}");
    assert!(
        from_parser(sites_text.lines().nth(2).unwrap_or_default()),
        "{sites_text}"
    );
}

#[test]
fn an_express_body_leak_is_named_by_its_route_handler_with_file_and_line() {
    let _guard = TimeoutGuard::new("express body leak", SECS(240));
    let (setup, _load, detection) = leaking_app(EXPRESS_JS, "/sessions");
    let line = line_of(EXPRESS_JS, "function rememberSession");
    assert_the_app_frame_leads(
        &setup,
        &detection,
        "rememberSession",
        line,
        &["body-parser/"],
    );

    // Who holds the bodies: a snapshot, pulled, summarised out of the worker.
    let snap = setup.cli(&["dump", "0", "--snapshot"]).expect("snapshot");
    let file = setup.sandbox.path().join("leak.heapsnapshot");
    let id = snap["id"].to_string();
    setup
        .cli(&["pull", &id, "-o", file.to_str().unwrap()])
        .expect("pull the snapshot");
    let out = std::process::Command::new(heapwarden())
        .args(["retainers", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let top = &summary["holders"][0];
    let path = top["path"].as_str().unwrap();
    // The module-level array, named with its module.
    assert!(
        path.starts_with("sessions (Array) in server.js ← ") && path.contains("rememberSession"),
        "{summary}"
    );
    // The kept bodies are what it holds (the trip counts garbage not yet collected too).
    assert!(top["held_bytes"].as_u64().unwrap() > 8 << 20, "{summary}");
    assert!(top["objects"].as_u64().unwrap() > 10_000, "{summary}");

    // Growth since that snapshot: a second one later, diffed by holder in the agent's
    // helper process (the CLI only asks the API).
    let held_before = top["held_bytes"].as_u64().unwrap();
    poll(SECS(60), "more kept bodies", || {
        let w = &setup.workers()[0];
        (w["heap_allocated_bytes"].as_u64()? > held_before + (24 << 20)).then_some(())
    });
    let later = setup.cli(&["dump", "0", "--snapshot"]).expect("snapshot");
    let diff = setup
        .cli(&["diff", &later["id"].to_string(), "--retainers"])
        .expect("diff --retainers");
    assert_eq!(diff["base_id"], snap["id"], "{diff}");
    let grew = &diff["holders"][0];
    assert!(
        grew["path"]
            .as_str()
            .unwrap()
            .starts_with("sessions (Array) in server.js ← "),
        "{diff}"
    );
    assert!(grew["delta_bytes"].as_i64().unwrap() > 4 << 20, "{diff}");
    let api = setup
        .api_json(&format!("/api/v1/profiles/{}/retainers", later["id"]))
        .expect("the retainers API");
    assert_eq!(api["holders"][0]["path"], grew["path"], "{api}");
    // A pprof profile is no snapshot (400), an unknown id 404: errors, not a hang.
    let not_snapshot = setup
        .api_json(&format!(
            "/api/v1/profiles/{}/retainers",
            detection["profile_id"]
        ))
        .unwrap_err();
    assert!(
        not_snapshot.contains("400") && not_snapshot.contains("not a heap snapshot"),
        "{not_snapshot}"
    );
    let unknown = setup
        .api_json("/api/v1/profiles/999999/retainers")
        .unwrap_err();
    assert!(unknown.contains("404"), "{unknown}");
}

#[test]
fn a_fastify_body_leak_is_named_by_its_route_handler_with_file_and_line() {
    let _guard = TimeoutGuard::new("fastify body leak", SECS(240));
    let (setup, _load, detection) = leaking_app(FASTIFY_JS, "/audit");
    let line = line_of(FASTIFY_JS, "function recordAudit");
    // Fastify parses with secure-json-parse after concatenating the body in its own
    // content-type parser: either may be the larger site.
    assert_the_app_frame_leads(
        &setup,
        &detection,
        "recordAudit",
        line,
        &["secure-json-parse/", "fastify/"],
    );
}

#[test]
fn with_leak_snapshot_the_detection_record_names_the_holder() {
    let _guard = TimeoutGuard::new("express leak snapshot", SECS(240));
    let rules = RULES.replace(
        "action = \"profile-only\"",
        "action = \"profile-only\"\nleak-snapshot = true",
    );
    let (setup, _load, detection) = leaking_app_with(EXPRESS_JS, "/sessions", &rules);
    let holder = &detection["retainers"][0];
    let path = holder["path"].as_str().unwrap_or_default();
    assert!(
        path.starts_with("sessions (Array) in server.js ← ") && path.contains("rememberSession"),
        "{detection}"
    );
    assert!(
        holder["held_bytes"].as_u64().unwrap() > 8 << 20,
        "{detection}"
    );
    // Growth since the worker's warm-up snapshot, taken after its baseline profile.
    let base_id = detection["retainers_base_snapshot_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("a baseline snapshot: {detection}"));
    let profiles = setup.cli(&["profiles"]).expect("profiles");
    let base = profiles
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["id"].as_u64() == Some(base_id))
        .unwrap_or_else(|| panic!("snapshot {base_id} listed: {profiles}"));
    assert_eq!(base["kind"], "snapshot", "{base}");
    assert_eq!(base["trigger"], "baseline", "{base}");
    let grew = holder["delta_bytes"].as_i64().unwrap();
    let before = holder["base_held_bytes"].as_u64().unwrap();
    assert!(
        grew > 4 << 20 && before < holder["held_bytes"].as_u64().unwrap(),
        "grew since warm-up: {detection}"
    );
}
