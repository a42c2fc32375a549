//! Production artefacts stay deployable: the systemd units pass `systemd-analyze verify`
//! and a hardening score, the sysusers/tmpfiles snippets apply, the Prometheus alert
//! rules pass `promtool check` and their own unit tests, and the Grafana dashboard is
//! importable and uses exactly the metric names of the contract (DESIGN.md).
//!
//! The external tools are required, not optional: a missing tool fails the test with the
//! Debian package that provides it (CI installs them).
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use heapwarden_tests::promql::{
    dashboard_expressions, dashboard_metric_names, histogram_base, promql_series_names,
};
use serde_json::Value;

/// Every metric of DESIGN.md "Metric names" (histograms by their base name).
const CONTRACT_METRICS: &[&str] = &[
    "heapwarden_worker_up",
    "heapwarden_worker_rss_bytes",
    "heapwarden_worker_pss_bytes",
    "heapwarden_worker_uss_bytes",
    "heapwarden_worker_swap_bytes",
    "heapwarden_worker_heap_allocated_bytes",
    "heapwarden_worker_heap_active_bytes",
    "heapwarden_worker_heap_resident_bytes",
    "heapwarden_worker_heap_retained_bytes",
    "heapwarden_worker_cpu_seconds_total",
    "heapwarden_worker_runtime_lag_seconds",
    "heapwarden_worker_growth_bytes_per_second",
    "heapwarden_worker_seconds_to_limit",
    "heapwarden_worker_restarts_total",
    "heapwarden_leak_detections_total",
    "heapwarden_heap_profiles_total",
    "heapwarden_heap_profile_duration_seconds",
    "heapwarden_profiles_stored_bytes",
    "heapwarden_drain_duration_seconds",
    "heapwarden_sample_duration_seconds",
    "heapwarden_agent_rss_bytes",
    "heapwarden_agent_cpu_seconds_total",
    "heapwarden_system_memory_bytes",
    "heapwarden_system_load",
    "heapwarden_cgroup_memory_pressure",
    "http_requests_total",
    "http_request_duration_seconds",
    "demo_cache_lookups_total",
    "demo_cache_invalidations_total",
    "demo_jobs_total",
    "demo_db_pool_connections",
];

/// The contract's histograms: only these may be queried as `_bucket`, `_sum`, `_count`.
const CONTRACT_HISTOGRAMS: &[&str] = &[
    "heapwarden_heap_profile_duration_seconds",
    "heapwarden_drain_duration_seconds",
    "heapwarden_sample_duration_seconds",
    "http_request_duration_seconds",
];

/// Series the alert rules may use beyond the contract: the slot-state and profile-limit
/// gauges the agent exports for alerting, and Prometheus's own `up`.
const ALERT_ONLY_METRICS: &[&str] = &[
    "heapwarden_worker_state",
    "heapwarden_profiles_limit_bytes",
    "up",
];

/// Grafana variables replaced by plausible values so a panel query parses as PromQL.
const GRAFANA_VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "5m"),
    ("$__interval", "1m"),
    ("$__range", "1h"),
    ("$instance", ".*"),
    ("$worker", ".*"),
    ("$max_memory", "536870912"),
];

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

/// Runs a tool with a deadline. A tool that is not installed fails the test with the
/// Debian package to install; one that hangs is killed.
fn run_tool(mut cmd: Command, debian_package: &str) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not installed: install the Debian package `{debian_package}` \
             (apt-get install {debian_package})"
        ),
        Err(err) => panic!("cannot start `{program}`: {err}"),
    };
    // Drain both pipes on threads so a chatty tool cannot block on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let deadline = Instant::now() + TOOL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the tool") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{program}` did not finish within {TOOL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}",
        output.status,
        text(output)
    );
}

/// The `heapwarden` binary cargo built next to this test (`target/<profile>/heapwarden`).
fn heapwarden_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let binary = profile_dir.join("heapwarden");
    assert!(
        binary.is_file(),
        "{} is missing: build it first with `cargo build -p heapwarden --bin heapwarden`",
        binary.display()
    );
    binary
}

#[test]
fn systemd_units_verify() {
    let systemd = repo_root().join("systemd");
    let dir = tempfile::tempdir().expect("temp dir");
    let service = std::fs::read_to_string(systemd.join("heapwarden.service")).expect("read unit");
    assert!(
        service.contains("ExecStart=/usr/local/bin/heapwarden run "),
        "ExecStart moved"
    );
    // verify insists that ExecStart= is executable: point it at the binary just built.
    let binary = heapwarden_binary();
    let service = service.replace("/usr/local/bin/heapwarden", &binary.to_string_lossy());
    std::fs::write(dir.path().join("heapwarden.service"), service).expect("write unit");
    std::fs::copy(
        systemd.join("heapwarden.socket"),
        dir.path().join("heapwarden.socket"),
    )
    .expect("copy socket unit");

    let mut verify = Command::new("systemd-analyze");
    verify
        .arg("verify")
        .arg("heapwarden.service")
        .arg("heapwarden.socket")
        .current_dir(dir.path());
    let output = run_tool(verify, "systemd");
    let report = text(&output);
    // Units shipped by the host can draw warnings of their own; ours must draw none.
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        eprintln!("systemd-analyze verify: {line}");
        assert!(
            !line.contains("heapwarden"),
            "warning about our units: {line}"
        );
    }
    assert_success("systemd-analyze verify", &output);

    // Hardening regression guard: exposure is 1.4 ("OK") with systemd 252; fail above 3.0.
    let mut security = Command::new("systemd-analyze");
    security
        .args(["security", "--offline=yes", "--threshold=30", "--no-pager"])
        .arg(dir.path().join("heapwarden.service"));
    let output = run_tool(security, "systemd");
    let summary = text(&output);
    let overall = summary
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("");
    eprintln!("systemd-analyze security: {overall}");
    assert_success("systemd-analyze security --threshold=30", &output);
}

#[test]
fn sysusers_and_tmpfiles_apply() {
    let systemd = repo_root().join("systemd");
    let root = tempfile::tempdir().expect("temp dir");
    for (src, dest) in [
        ("heapwarden.sysusers", "etc/sysusers.d/heapwarden.conf"),
        ("heapwarden.tmpfiles", "etc/tmpfiles.d/heapwarden.conf"),
    ] {
        let dest = root.path().join(dest);
        std::fs::create_dir_all(dest.parent().expect("has a parent")).expect("mkdir");
        std::fs::copy(systemd.join(src), dest).expect("install snippet");
    }
    let mut sysusers = Command::new("systemd-sysusers");
    sysusers.arg(format!("--root={}", root.path().display()));
    let output = run_tool(sysusers, "systemd");
    assert_success("systemd-sysusers", &output);
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).expect("passwd written");
    let user = passwd
        .lines()
        .find(|l| l.starts_with("heapwarden:"))
        .expect("user created");
    assert!(
        user.ends_with(":/var/lib/heapwarden:/usr/sbin/nologin"),
        "user entry: {user}"
    );

    // Creating the directories chowns them to heapwarden, which needs root. /proc/self
    // belongs to our effective uid (no nix "user" feature needed for that).
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        eprintln!("note: not root, systemd-tmpfiles --create not exercised");
        return;
    }
    let mut tmpfiles = Command::new("systemd-tmpfiles");
    tmpfiles
        .arg(format!("--root={}", root.path().display()))
        .arg("--create");
    let output = run_tool(tmpfiles, "systemd");
    assert_success("systemd-tmpfiles --create", &output);
    let state = std::fs::metadata(root.path().join("var/lib/heapwarden")).expect("state dir");
    assert_eq!(state.mode() & 0o7777, 0o700, "state dir mode");
    assert_ne!(state.uid(), 0, "state dir belongs to the heapwarden user");
}

#[test]
fn alert_rules_check_and_test() {
    let dashboards = repo_root().join("dashboards");
    let mut check = Command::new("promtool");
    check
        .args(["check", "rules"])
        .arg(dashboards.join("alerts.yml"));
    assert_success("promtool check rules", &run_tool(check, "prometheus"));

    let mut unit = Command::new("promtool");
    unit.args(["test", "rules"])
        .arg(dashboards.join("alerts.test.yml"));
    let output = run_tool(unit, "prometheus");
    assert_success("promtool test rules", &output);
    assert!(text(&output).contains("SUCCESS"), "{}", text(&output));

    let mut config = Command::new("promtool");
    config
        .args(["check", "config", "--syntax-only"])
        .arg(dashboards.join("prometheus.example.yml"));
    assert_success("promtool check config", &run_tool(config, "prometheus"));
}

#[test]
fn alert_rules_use_known_metrics_and_runbooks() {
    let rules = std::fs::read_to_string(repo_root().join("dashboards/alerts.yml")).expect("alerts");
    let mut alerts = Vec::new();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            alerts.push(name.to_owned());
        } else if let Some(expr) = line.strip_prefix("expr: ") {
            for name in promql_series_names(expr) {
                let known = CONTRACT_METRICS.contains(&name.as_str())
                    || ALERT_ONLY_METRICS.contains(&name.as_str());
                assert!(known, "alert expression uses unknown metric {name}: {expr}");
            }
        } else if let Some(url) = line.strip_prefix("runbook_url: ") {
            let alert = alerts.last().expect("runbook_url follows its alert");
            let anchor = format!("README.md#alert-{}\"", alert.to_lowercase());
            assert!(
                url.ends_with(&anchor),
                "{alert}: runbook_url {url} must end in {anchor}"
            );
        }
    }
    for required in [
        "WorkerLeaking",
        "CrashLooping",
        "SlotFailed",
        "ProfileDiskFull",
        "AgentDown",
    ] {
        assert!(
            alerts.iter().any(|a| a == required),
            "alert {required} missing"
        );
    }
    // The runbook links land on "### Alert: <Name>" headings of the README.
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap_or_default();
    let missing: Vec<_> = alerts
        .iter()
        .filter(|a| !readme.contains(&format!("### Alert: {a}\n")))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md lacks runbook headings for {missing:?}"
    );
}

fn load_dashboard() -> Value {
    let path = repo_root().join("dashboards/heapwarden.json");
    let json = std::fs::read_to_string(&path).expect("read dashboard");
    serde_json::from_str(&json).expect("dashboard is valid JSON")
}

#[test]
fn dashboard_is_importable() {
    let dash = load_dashboard();
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "__inputs must offer the Prometheus datasource: {inputs:?}"
    );
    assert!(
        dash["__requires"].as_array().is_some_and(|r| !r.is_empty()),
        "__requires"
    );
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    assert!(
        dash["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "stable uid for links"
    );

    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("variable {name}"))
    };
    assert_eq!(var("datasource")["query"], "prometheus");
    assert_eq!(
        var("instance")["definition"],
        "label_values(heapwarden_worker_up, instance)"
    );
    let worker = var("worker");
    assert_eq!(
        worker["definition"],
        "label_values(heapwarden_worker_up{instance=~\"$instance\"}, worker)"
    );
    assert_eq!(worker["multi"], true, "worker is multi-select");
    assert_eq!(worker["includeAll"], true, "worker offers All");

    let panels = dash["panels"].as_array().expect("panels");
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(
        rows,
        ["Workers", "Memory", "Leaks", "Demo service", "Agent"]
    );
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        let pos = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| pos[k].as_u64().expect("gridPos"));
        assert!(x + w <= 24, "{title} is wider than the grid");
        for cell in (y..y + h).flat_map(|row| (x..x + w).map(move |col| (row, col))) {
            assert!(cells.insert(cell), "{title} overlaps another panel");
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: datasource"
        );
        let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
        for target in targets.unwrap_or_else(|| panic!("{title} has no targets")) {
            let expr = target["expr"].as_str().unwrap_or("");
            assert!(!expr.trim().is_empty(), "{title}: empty expression");
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "{title}: target datasource"
            );
        }
    }

    let json = serde_json::to_string(&dash).expect("re-serialise");
    let used = dashboard_metric_names(&json);
    let contract: BTreeSet<String> = CONTRACT_METRICS.iter().map(|m| m.to_string()).collect();
    let unknown: Vec<_> = used.difference(&contract).collect();
    assert!(
        unknown.is_empty(),
        "dashboard uses metrics outside DESIGN.md: {unknown:?}"
    );
    let unshown: Vec<_> = contract.difference(&used).collect();
    assert!(
        unshown.is_empty(),
        "contract metrics no panel shows: {unshown:?}"
    );
    for expr in dashboard_expressions(&dash) {
        for raw in promql_series_names(&expr) {
            let base = histogram_base(&raw);
            let is_histogram = CONTRACT_HISTOGRAMS.contains(&base);
            assert_eq!(
                base != raw,
                is_histogram,
                "{raw}: histograms only via _bucket/_sum/_count"
            );
        }
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // promtool parses recording rules, so every panel query becomes one; JSON is YAML.
    let rules: Vec<Value> = dashboard_expressions(&load_dashboard())
        .iter()
        .filter(|expr| !expr.starts_with("label_values("))
        .enumerate()
        .map(|(n, expr)| {
            let expr = GRAFANA_VARIABLES
                .iter()
                .fold(expr.clone(), |e, (var, v)| e.replace(var, v));
            assert!(!expr.contains('$'), "unknown Grafana variable in {expr}");
            serde_json::json!({ "record": format!("dashboard:query_{n}"), "expr": expr })
        })
        .collect();
    assert!(
        rules.len() > 30,
        "expected the whole dashboard, got {} queries",
        rules.len()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("dashboard-queries.yml");
    let doc = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    std::fs::write(&file, doc.to_string()).expect("write rules");
    let mut check = Command::new("promtool");
    check.args(["check", "rules"]).arg(&file);
    assert_success(
        "promtool check rules (dashboard queries)",
        &run_tool(check, "prometheus"),
    );
}

#[test]
fn promql_tokenizer_finds_series_only() {
    let expr = r#"histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket{route=~"a|b", x="}"}[$__rate_interval]))) / ignoring(layer) group_left sum(up offset 5m) or vector(1e6) > bool heapwarden_worker_up"#;
    let names: Vec<_> = promql_series_names(expr).into_iter().collect();
    assert_eq!(
        names,
        [
            "heapwarden_worker_up",
            "http_request_duration_seconds_bucket",
            "up"
        ]
    );
    let dash = r#"{"a":[{"expr":"sum(rate(heapwarden_sample_duration_seconds_sum[5m]))"},
        {"query":{"query":"label_values(heapwarden_worker_up{instance=~\"$instance\"}, worker)"}}]}"#;
    let names: Vec<_> = dashboard_metric_names(dash).into_iter().collect();
    assert_eq!(
        names,
        ["heapwarden_sample_duration_seconds", "heapwarden_worker_up"]
    );
}
