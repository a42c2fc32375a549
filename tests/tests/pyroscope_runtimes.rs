//! End to end: Node and native workers' heap profiles reach Pyroscope like the Rust
//! demo's (same store, same exporter, `runtime` label set), and the test receiver itself
//! refuses what Pyroscope refuses, with Connect's error body.

mod native_support;
mod node_support;

use std::io::Write;
use std::time::Duration;

use heapwarden_tests::pyroscope::{LabelPair, PushRequest, RawProfileSeries, RawSample, Receiver};
use heapwarden_tests::{Sandbox, TimeoutGuard, http, msg, poll};
use prost::Message;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn export_section(receiver: &Receiver) -> String {
    format!(
        "[export.pyroscope]\nurl = {:?}\nservice-name = \"mixed\"\ntimeout = \"5s\"\n",
        receiver.url()
    )
}

#[test]
fn a_node_workers_profile_arrives_labelled_node() {
    let _guard = TimeoutGuard::new("pyroscope_node", SECS(120));
    let receiver = Receiver::start();
    let setup = node_support::start(
        r#"["node", "app.js"]"#,
        1,
        &format!("[watchdog]\nwarmup = \"1h\"\n{}", export_section(&receiver)),
    );
    poll(SECS(30), "the node probe's heap figures", || {
        setup.workers()[0]["heap_allocated_bytes"].as_u64()
    });
    let meta = setup.cli(&["dump", "0"]).expect("dump");
    let arrived = receiver.wait_for(1, SECS(60));
    assert_eq!(
        arrived[0].label("runtime"),
        "node",
        "{:?}",
        arrived[0].labels
    );
    assert_eq!(arrived[0].label("trigger"), "manual");
    assert_eq!(arrived[0].label("service_name"), "mixed");
    assert!(
        !arrived[0].functions.is_empty(),
        "the V8 profile has frames"
    );
    let stored = poll(SECS(30), "the profile marked sent", || {
        setup
            .profiles()
            .into_iter()
            .find(|p| p["id"] == meta["id"] && p["export"]["outcome"] == "sent")
    });
    assert_eq!(stored["runtime"], "node");
}

#[test]
fn a_native_workers_profile_arrives_labelled_native() {
    let _guard = TimeoutGuard::new("pyroscope_native", SECS(120));
    let receiver = Receiver::start();
    let sandbox = Sandbox::new();
    let worker = native_support::compile_worker(&sandbox, "c-worker", &[]);
    let native = native_support::start_native(
        sandbox,
        1,
        &format!(r#"[{:?}, "steady"]"#, worker.display().to_string()),
        &format!("[watchdog]\nwarmup = \"1h\"\n{}", export_section(&receiver)),
    );
    native
        .agent
        .logs
        .wait_for(SECS(30), "the C worker", msg("native worker ready"));
    poll(SECS(30), "the native probe's heap figures", || {
        native.cli(&["ps"])[0]["heap_allocated_bytes"].as_u64()
    });
    native.cli(&["dump", "0"]);
    let arrived = receiver.wait_for(1, SECS(60));
    assert_eq!(
        arrived[0].label("runtime"),
        "native",
        "{:?}",
        arrived[0].labels
    );
    assert!(
        arrived[0]
            .functions
            .iter()
            .any(|f| f.contains("steady_working_set_alloc")),
        "the pushed pprof names the C function: {:?}",
        arrived[0].functions
    );
}

/// A push body with `labels` and one gzipped pprof stamped `age` ago.
fn push_body(labels: &[(&str, &str)], age: Duration) -> Vec<u8> {
    let time = std::time::SystemTime::now() - age;
    let nanos = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let profile = heapwarden_tests::pyroscope::Profile {
        string_table: vec![String::new()],
        time_nanos: nanos,
        ..Default::default()
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&profile.encode_to_vec()).unwrap();
    PushRequest {
        series: vec![RawProfileSeries {
            labels: labels
                .iter()
                .map(|(n, v)| LabelPair {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: vec![RawSample {
                raw_profile: gz.finish().unwrap(),
                id: String::new(),
            }],
        }],
    }
    .encode_to_vec()
}

#[test]
fn the_receiver_refuses_what_pyroscope_refuses_with_connect_errors() {
    let _guard = TimeoutGuard::new("pyroscope_receiver", SECS(30));
    let receiver = Receiver::start();
    let url = format!("{}/push.v1.PusherService/Push", receiver.url());
    let client = http::client(SECS(5));
    let post = |body: Vec<u8>| {
        http::fetch(
            &client,
            "POST",
            &url,
            &[("content-type", "application/proto")],
            Some(&body),
        )
        .expect("push")
    };
    let good = [("service_name", "s"), ("__name__", "memory")];
    assert_eq!(post(push_body(&good, SECS(1))).status, 200);
    let many: Vec<(String, String)> = (0..30).map(|i| (format!("l{i}"), "v".into())).collect();
    let mut too_many: Vec<(&str, &str)> =
        many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    too_many.extend(good);
    for (labels, age, says) in [
        (vec![("__name__", "memory")], SECS(1), "service name"),
        (
            vec![("service_name", "s"), ("bad-name", "v")],
            SECS(1),
            "invalid label name",
        ),
        (
            vec![("service_name", "s"), ("service_name", "t")],
            SECS(1),
            "duplicate",
        ),
        (too_many, SECS(1), "limit 30"),
        (good.to_vec(), SECS(3700), "older than 1h"),
    ] {
        let reply = post(push_body(&labels, age));
        assert_eq!(reply.status, 400, "{labels:?}: {}", reply.body);
        let error = reply.json();
        assert_eq!(error["code"], "invalid_argument");
        assert!(
            error["message"].as_str().unwrap_or_default().contains(says),
            "{labels:?}: {error}"
        );
    }
    assert_eq!(receiver.received().len(), 1);
}

/// `heapwarden check-config -c PATH`, which must exit 64: its standard error.
fn check_config_refuses(path: &std::path::Path) -> String {
    let out = std::process::Command::new(heapwarden_tests::heapwarden())
        .args(["check-config", "-c"])
        .arg(path)
        .output()
        .expect("run check-config");
    assert_eq!(out.status.code(), Some(64));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_export_section_exits_64_naming_each_key() {
    let sandbox = Sandbox::new();
    let path = sandbox.write(
        "bad.toml",
        "[export.pyroscope]\nurl = \"https://pyroscope:4040\"\nlabels = { \"a-b\" = \"v\" }\nurll = \"x\"\n",
    );
    let stderr = check_config_refuses(&path);
    // The unknown key stops the load before the semantic checks, as for any section.
    assert!(stderr.contains("export.pyroscope.urll"), "{stderr}");
    let path = sandbox.write(
        "bad.toml",
        "[export.pyroscope]\nurl = \"https://pyroscope:4040\"\nlabels = { \"a-b\" = \"v\" }\n",
    );
    let stderr = check_config_refuses(&path);
    for key in [
        "export.pyroscope.url",
        "export.pyroscope.service-name",
        "export.pyroscope.labels.a-b",
    ] {
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
}
