//! The catalog against what uses it: every name in the dashboards and alert rules is in
//! the catalog, zero-initialisation exports every label combination and every histogram
//! from the first scrape, and label texts are the types' JSON forms.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::labels::*;
use super::*;

const DASHBOARD: &str = include_str!("../../../dashboards/heapwarden.json");
const ALERTS: &str = include_str!("../../../dashboards/alerts.yml");
const ALERT_TESTS: &str = include_str!("../../../dashboards/alerts.test.yml");

/// Every `heapwarden_…` identifier in `text`.
fn agent_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("heapwarden_") {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_word {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The catalog entry a queried series belongs to (`_bucket`/`_sum`/`_count` only for
/// histograms).
fn resolve(series: &str) -> Option<&'static Metric> {
    if let Some(m) = find(series) {
        return (m.kind != Kind::Histogram).then_some(m);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| series.strip_suffix(suffix))
        .filter_map(find)
        .find(|m| m.kind == Kind::Histogram)
}

#[test]
fn every_name_the_dashboards_and_alerts_use_is_in_the_catalog() {
    for (file, text) in [
        ("dashboards/heapwarden.json", DASHBOARD),
        ("dashboards/alerts.yml", ALERTS),
        ("dashboards/alerts.test.yml", ALERT_TESTS),
    ] {
        let names = agent_names(text);
        assert!(names.len() > 3, "{file}: found only {names:?}");
        let unknown: Vec<_> = names.iter().filter(|n| resolve(n).is_none()).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses names the agent does not export: {unknown:?}"
        );
    }
}

#[test]
fn catalog_names_are_unique_prefixed_and_only_histograms_have_buckets() {
    let mut seen = BTreeSet::new();
    for m in CATALOG {
        assert!(seen.insert(m.name), "{} twice", m.name);
        assert!(m.name.starts_with("heapwarden_"), "{}", m.name);
        assert!(!m.help.is_empty(), "{} has no HELP", m.name);
        assert_eq!(
            m.kind == Kind::Histogram,
            !m.buckets.is_empty(),
            "{}",
            m.name
        );
        let counter = matches!(m.kind, Kind::Counter | Kind::FloatCounter);
        assert_eq!(counter, m.name.ends_with("_total"), "{}", m.name);
        assert!(
            m.buckets.windows(2).all(|w| w[0] < w[1]),
            "{} buckets",
            m.name
        );
    }
}

/// Series lines (`name{labels} value`) of `family` in a rendered page.
fn series<'a>(page: &'a str, family: &str) -> Vec<&'a str> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

#[test]
fn zero_series_cover_every_label_combination_and_every_histogram() {
    let recorder = build_recorder().expect("recorder");
    metrics::with_local_recorder(&recorder, || {
        describe_all();
        register_zero_series();
        register_slot(0);
        register_slot(1);
    });
    let page = recorder.handle().render();
    let per_slot = |n: usize| 2 * n;
    assert_eq!(
        series(&page, WORKER_RESTARTS.name).len(),
        per_slot(RestartReason::ALL.len())
    );
    assert_eq!(
        series(&page, LEAK_DETECTIONS.name).len(),
        per_slot(Rule::ALL.len())
    );
    assert_eq!(
        series(&page, WORKER_STATE.name).len(),
        per_slot(worker_states().count())
    );
    assert_eq!(
        series(&page, HEAP_PROFILES.name).len(),
        Trigger::ALL.len() * ProfileOutcome::ALL.len()
    );
    assert_eq!(
        series(&page, HEAP_SNAPSHOTS.name).len(),
        Trigger::ALL.len() * SnapshotOutcome::ALL.len()
    );
    for trigger in Trigger::ALL {
        for outcome in ProfileOutcome::ALL {
            let line = format!(
                "{}{{trigger=\"{}\",outcome=\"{}\"}} 0",
                HEAP_PROFILES.name,
                trigger.as_str(),
                outcome.as_str()
            );
            assert!(page.contains(&line), "missing {line} in\n{page}");
        }
    }
    for m in CATALOG.iter().filter(|m| m.kind == Kind::Counter) {
        assert!(
            !series(&page, m.name).is_empty(),
            "counter {} is not zero-initialised",
            m.name
        );
        assert!(page.contains(&format!("# HELP {} ", m.name)), "{}", m.name);
    }
    for m in CATALOG.iter().filter(|m| m.kind == Kind::Histogram) {
        let first = format!("{}_bucket{{le=\"{}\"}} 0", m.name, m.buckets[0]);
        assert!(
            page.contains(&first),
            "histogram {} missing: {page}",
            m.name
        );
        assert!(page.contains(&format!("{}_count 0", m.name)), "{}", m.name);
    }
}

#[test]
fn label_texts_are_the_json_forms_and_unknown_ones_are_refused() {
    fn check<T>(all: &[T])
    where
        T: Copy + PartialEq + std::fmt::Debug + Serialize + for<'de> Deserialize<'de>,
    {
        for value in all {
            let json = serde_json::to_string(value).expect("serialise");
            let back: T = serde_json::from_str(&json).expect("deserialise");
            assert_eq!(&back, value);
        }
        let err = serde_json::from_str::<T>("\"no-such-value\"").expect_err("refused");
        assert!(err.to_string().contains("expected one of"), "{err}");
    }
    check(&RestartReason::ALL);
    check(&SlotState::ALL);
    check(&Rule::ALL);
    check(&Trigger::ALL);
    check(&ProfileOutcome::ALL);
    check(&SnapshotOutcome::ALL);
    assert_eq!(
        serde_json::to_string(&Rule::MaxMemory).ok().as_deref(),
        Some("\"max_memory\"")
    );
    assert_eq!(Trigger::from_label("leak"), Some(Trigger::Leak));
    assert_eq!(LoadPeriod::ALL.map(LoadPeriod::as_str), ["1m", "5m", "15m"]);
}

/// Whether `line` holds a string literal that is a whole `heapwarden_…` identifier (a
/// metric name), not, say, a symbol prefix like `"heapwarden_preload::"`.
fn has_metric_literal(line: &str) -> bool {
    line.match_indices("\"heapwarden_").any(|(at, _)| {
        let rest = &line[at + 1..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        rest[end..].starts_with('"')
    })
}

#[test]
fn the_agent_names_its_metrics_only_through_the_catalog() {
    assert!(has_metric_literal(
        r#"counter!("heapwarden_x_total", "a" => b)"#
    ));
    assert!(!has_metric_literal(
        r#"prefix("heapwarden_preload::attach")"#
    ));
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src").flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            // The catalog itself; tests assert on rendered text; the demo has its own names.
            let skipped = ["metric_names", "demo", "tests.rs"].contains(&name.as_str())
                || name.ends_with("_tests.rs");
            if skipped {
                continue;
            }
            if path.is_dir() {
                walk(&path, out);
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(files.len() > 20, "found only {files:?}");
    let literals: Vec<String> = files
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(file).expect("read source");
            let hits: Vec<String> = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//") && has_metric_literal(l))
                .map(|l| format!("{}: {}", file.display(), l.trim()))
                .collect();
            hits
        })
        .collect();
    assert!(
        literals.is_empty(),
        "metric names written as literals instead of catalog constants:\n{}",
        literals.join("\n")
    );
}

/// Each family's `# TYPE` line in a rendered page, with how often it appears.
fn type_lines(page: &str) -> std::collections::BTreeMap<&str, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            *seen.entry(rest).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn own_families_are_rendered_once_with_help_and_type_and_the_rest_by_the_exporter() {
    let recorder = build_recorder().expect("recorder");
    metrics::with_local_recorder(&recorder, || {
        describe_all();
        register_zero_series();
        register_slot(0);
        register_slot(12);
        metrics::gauge!(WORKER_RSS.name, "worker" => "12").set(1_500_000_000.0);
        metrics::gauge!(WORKER_SECONDS_TO_LIMIT.name, "worker" => "0").set(f64::INFINITY);
        metrics::gauge!(WORKER_GROWTH.name, "worker" => "0").set(-0.25);
        metrics::gauge!(WORKER_CPU.name, "worker" => "12").set(1.25);
        metrics::gauge!(AGENT_CPU.name).set(0.75);
        metrics::counter!(WORKER_RESTARTS.name, "worker" => "12", "reason" => "leak").increment(3);
        // Label values come from fixed sets; one that is not is still escaped.
        metrics::counter!(WORKER_FAILED.name, "worker" => "a\"b\\c\nd").increment(1);
    });
    let page = recorder.handle().render();

    for line in [
        "heapwarden_worker_rss_bytes{worker=\"12\"} 1500000000",
        "heapwarden_worker_seconds_to_limit{worker=\"0\"} +Inf",
        "heapwarden_worker_growth_bytes_per_second{worker=\"0\"} -0.25",
        "heapwarden_worker_restarts_total{worker=\"12\",reason=\"leak\"} 3",
        "heapwarden_worker_failed_total{worker=\"a\\\"b\\\\c\\nd\"} 1",
        "heapwarden_worker_up{worker=\"0\"} 0",
        "heapwarden_worker_cpu_seconds_total{worker=\"12\"} 1.25",
        "heapwarden_agent_cpu_seconds_total 0.75",
    ] {
        assert!(
            page.lines().any(|l| l == line),
            "missing {line:?} in\n{page}"
        );
    }
    // One TYPE per family: the store and the exporter never both render one.
    let types = type_lines(&page);
    assert!(types.values().all(|n| *n == 1), "{types:?}");
    for m in CATALOG.iter().filter(|m| is_own_family(m)) {
        if series(&page, m.name).is_empty() {
            continue;
        }
        let kind = if m.kind == Kind::Gauge {
            "gauge"
        } else {
            "counter"
        };
        assert_eq!(
            types.get(format!("{} {kind}", m.name).as_str()),
            Some(&1),
            "{}",
            m.name
        );
        assert!(
            page.contains(&format!("# HELP {} {}\n", m.name, m.help)),
            "{}",
            m.name
        );
    }
    // Both owners rendered something: histograms and agent-wide counters are the exporter's.
    assert!(page.contains("# TYPE heapwarden_sample_duration_seconds histogram"));
    assert!(types.keys().any(|t| t.starts_with(HEAP_PROFILES.name)));
}

/// The check is a `debug_assert`: a release build of the tests has nothing to catch.
#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "registered as the wrong kind")]
fn a_family_of_the_agents_own_registered_as_the_wrong_kind_is_caught_in_tests() {
    let recorder = build_recorder().expect("recorder");
    metrics::with_local_recorder(&recorder, || {
        metrics::gauge!(WORKER_RESTARTS.name, "worker" => "0", "reason" => "leak").set(1.0);
    });
}
