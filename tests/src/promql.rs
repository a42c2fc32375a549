//! PromQL helpers for the dashboard and alert tests: the metric names a Grafana
//! dashboard's expressions use, so tests can check them against the contract and against
//! what a running agent exports.

use std::collections::BTreeSet;

use serde_json::Value;

/// Every metric of DESIGN.md "Metric names" (histograms by their base name).
pub const CONTRACT_METRICS: &[&str] = &[
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
    "heapwarden_leak_suspect_info",
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
    "heapwarden_profile_exports_total",
    "heapwarden_profile_export_lag_seconds",
    "heapwarden_profile_export_pending",
    "heapwarden_profile_push_duration_seconds",
];

/// The contract's histograms: only these may be queried as `_bucket`, `_sum`, `_count`.
pub const CONTRACT_HISTOGRAMS: &[&str] = &[
    "heapwarden_heap_profile_duration_seconds",
    "heapwarden_drain_duration_seconds",
    "heapwarden_sample_duration_seconds",
    "http_request_duration_seconds",
    "heapwarden_profile_push_duration_seconds",
];

/// Series the alert rules may use beyond the contract: the slot-state and profile-limit
/// gauges the agent exports for alerting, and Prometheus's own `up`.
pub const ALERT_ONLY_METRICS: &[&str] = &[
    "heapwarden_worker_state",
    "heapwarden_profiles_limit_bytes",
    "up",
];

/// Grafana variables replaced by plausible values so a panel query parses as PromQL.
pub const GRAFANA_VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "5m"),
    ("$__interval", "1m"),
    ("$__range", "1h"),
    ("$instance", ".*"),
    ("$worker", ".*"),
    ("$max_memory", "536870912"),
];

/// PromQL functions, aggregation operators and keywords: identifiers that are not series.
pub const PROMQL_WORDS: &str = "\
    abs absent absent_over_time acos acosh and asin asinh atan atan2 atanh avg \
    avg_over_time bool bottomk by ceil changes clamp clamp_max clamp_min cos cosh count \
    count_over_time count_values day_of_month day_of_week day_of_year days_in_month deg \
    delta deriv exp floor group group_left group_right histogram_quantile holt_winters \
    hour idelta ignoring increase inf irate label_join label_replace last_over_time ln \
    log10 log2 max max_over_time min min_over_time minute month nan offset on or pi \
    predict_linear present_over_time quantile quantile_over_time rad rate resets round \
    scalar sgn sin sinh sort sort_desc sqrt stddev stddev_over_time stdvar \
    stdvar_over_time sum sum_over_time tan tanh time timestamp topk unless vector \
    without year";

/// Keywords whose parenthesised argument is a list of label names, not an expression.
pub const LABEL_LIST_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Metric names used by every PromQL expression of a Grafana dashboard (panel targets,
/// annotations, `label_values` variable queries), histogram series folded to their base
/// name (`x_bucket`, `x_sum`, `x_count` → `x`), as a `/metrics` `# TYPE` line names them.
pub fn dashboard_metric_names(json: &str) -> BTreeSet<String> {
    let dash: Value = serde_json::from_str(json).expect("dashboard JSON");
    dashboard_expressions(&dash)
        .iter()
        .flat_map(|expr| promql_series_names(expr))
        .map(|name| histogram_base(&name).to_owned())
        .collect()
}

/// All `expr` strings and variable `query` strings anywhere in the dashboard.
pub fn dashboard_expressions(value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(s)) => found.push(s.clone()),
                    ("query", Value::String(s)) if s.starts_with("label_values(") => {
                        found.push(s.clone())
                    }
                    _ => found.extend(dashboard_expressions(v)),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| found.extend(dashboard_expressions(v))),
        _ => {}
    }
    found
}

pub fn histogram_base(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// Series names in a PromQL expression (or in `label_values(selector, label)`): every
/// identifier outside strings, label matchers and ranges that is not a function,
/// aggregation, keyword, label list (`by (...)`), number/duration or Grafana `$variable`.
pub fn promql_series_names(expr: &str) -> BTreeSet<String> {
    let expr = match expr.strip_prefix("label_values(") {
        // The trailing `, label)` names a label, not a series.
        Some(rest) => rest.rsplit_once(',').map_or(rest, |(selector, _)| selector),
        None => expr,
    };
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |from: usize, close: char| {
        let mut j = from + 1;
        let mut quote = None;
        while j < chars.len() {
            match (quote, chars[j]) {
                (Some(_), '\\') => j += 1,
                (Some(q), c) if c == q => quote = None,
                (None, '"' | '\'' | '`') => quote = Some(chars[j]),
                (None, c) if c == close => break,
                _ => {}
            }
            j += 1;
        }
        j + 1
    };
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' => i = skip_to(i, '}'),
            '[' => i = skip_to(i, ']'),
            '"' | '\'' | '`' => i = skip_to(i, c),
            '$' | '0'..='9' | '.' => {
                i += 1;
                while i < chars.len() && (is_word(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if is_word(c) => {
                let start = i;
                while i < chars.len() && is_word(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..]
                    .iter()
                    .position(|c| !c.is_whitespace())
                    .map(|p| i + p);
                let paren_next = next.is_some_and(|n| chars[n] == '(');
                if LABEL_LIST_WORDS.contains(&word.as_str()) {
                    if let Some(n) = next.filter(|_| paren_next) {
                        i = skip_to(n, ')');
                    }
                } else if !paren_next && !PROMQL_WORDS.split_whitespace().any(|w| w == word) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}
