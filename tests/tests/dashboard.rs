//! The Grafana dashboard is importable (`__inputs`, variables, targets), every query is
//! valid PromQL (promtool), and it uses exactly the metric names of the contract.

use std::collections::BTreeSet;
use std::process::Command;

use heapwarden_tests::promql::*;
use heapwarden_tests::tools::{assert_success, repo_root, run_tool};
use serde_json::Value;

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
        [
            "Workers",
            "Memory",
            "Leaks",
            "Demo service",
            "Agent",
            "Fleet",
            "Export"
        ]
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
