//! A profile's Pyroscope labels (`service_name`, `__name__="memory"`, `instance`, `worker`,
//! `runtime`, `trigger`, `rule`, `release`, then the static ones — never a pid), the check
//! of Pyroscope's published validation rules (`pkg/validation`: ≤ 30 labels, valid names,
//! no duplicates, a service name, bounded lengths) made before anything is sent, and the
//! links into Grafana or the Pyroscope UI built from the same labels.

use std::collections::BTreeMap;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::proto::LabelPair;
use crate::config::PyroscopeConfig;
use crate::profiles::ProfileMeta;

/// Pyroscope's default limits (`pkg/validation/limits.go`).
pub const MAX_LABEL_NAMES_PER_SERIES: usize = 30;
pub const MAX_LABEL_NAME_LENGTH: usize = 1024;
pub const MAX_LABEL_VALUE_LENGTH: usize = 2048;
/// `max_profile_size_bytes`, of the uncompressed pprof.
pub const MAX_PROFILE_BYTES: u64 = 4 * 1024 * 1024;
/// RFC 3986's unreserved characters stay as they are; everything else is encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// The profile type heap profiles are stored under in Pyroscope.
pub const PROFILE_TYPE: &str = "memory:inuse_space:bytes:space:bytes";

/// What a profile's labels are made of besides its own entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelContext {
    pub service_name: String,
    /// The host name, unless the static labels name an `instance`.
    pub instance: String,
    pub release: Option<String>,
    pub static_labels: BTreeMap<String, String>,
}

impl LabelContext {
    /// `release`: `HEAPWARDEN_RELEASE` from `[pool.env]`, else from the agent's own
    /// environment (which the workers inherit).
    pub fn new(config: &PyroscopeConfig, pool_env: &BTreeMap<String, String>) -> LabelContext {
        let release = pool_env
            .get(RELEASE_ENV)
            .cloned()
            .or_else(|| std::env::var(RELEASE_ENV).ok())
            .filter(|r| !r.is_empty());
        LabelContext {
            service_name: config.service_name.clone(),
            instance: host_name(),
            release,
            static_labels: config.labels.clone(),
        }
    }
}

/// The worker environment variable that names the release being run.
pub const RELEASE_ENV: &str = "HEAPWARDEN_RELEASE";

/// The kernel's host name (no libc call: the agent forbids unsafe code here).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The labels of one profile, sorted by name.
pub fn profile_labels(meta: &ProfileMeta, context: &LabelContext) -> Vec<LabelPair> {
    let mut labels = vec![
        LabelPair::new("service_name", context.service_name.clone()),
        LabelPair::new("__name__", "memory"),
        LabelPair::new("worker", meta.slot.to_string()),
        LabelPair::new("trigger", meta.trigger.as_str()),
    ];
    if !context.static_labels.contains_key("instance") {
        labels.push(LabelPair::new("instance", context.instance.clone()));
    }
    if let Some(runtime) = meta.runtime {
        labels.push(LabelPair::new("runtime", runtime.as_str()));
    }
    if let Some(rule) = meta.rule.as_deref() {
        labels.push(LabelPair::new("rule", rule));
    }
    if let Some(release) = &context.release {
        labels.push(LabelPair::new("release", release.clone()));
    }
    for (name, value) in &context.static_labels {
        labels.push(LabelPair::new(name, value.clone()));
    }
    labels.sort();
    labels
}

/// Why Pyroscope would refuse a label set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("{0} labels; Pyroscope takes at most {MAX_LABEL_NAMES_PER_SERIES}")]
    TooMany(usize),
    #[error("no service_name label")]
    NoServiceName,
    #[error("invalid label name {0:?}")]
    BadName(String),
    #[error("the value of label {0} is empty or longer than {MAX_LABEL_VALUE_LENGTH} bytes")]
    BadValue(String),
    #[error("duplicate label name {0:?}")]
    Duplicate(String),
    #[error("__name__ {0:?} is not a valid metric name")]
    BadMetricName(String),
}

/// Pyroscope's `ValidateLabels`, the same checks in the same order.
pub fn validate_labels(labels: &[LabelPair]) -> Result<(), LabelError> {
    if labels.len() > MAX_LABEL_NAMES_PER_SERIES {
        return Err(LabelError::TooMany(labels.len()));
    }
    let get = |name: &str| labels.iter().find(|l| l.name == name).map(|l| &l.value);
    if let Some(metric) = get("__name__")
        && !valid_metric_name(metric)
    {
        return Err(LabelError::BadMetricName(metric.clone()));
    }
    if get("service_name").is_none_or(String::is_empty) {
        return Err(LabelError::NoServiceName);
    }
    let mut sorted: Vec<&LabelPair> = labels.iter().collect();
    sorted.sort();
    let mut last = "";
    for l in sorted {
        if l.name.len() > MAX_LABEL_NAME_LENGTH || !valid_label_name(&l.name) {
            return Err(LabelError::BadName(l.name.clone()));
        }
        if l.value.is_empty() || l.value.len() > MAX_LABEL_VALUE_LENGTH {
            return Err(LabelError::BadValue(l.name.clone()));
        }
        if l.name == last {
            return Err(LabelError::Duplicate(l.name.clone()));
        }
        last = &l.name;
    }
    Ok(())
}

pub use crate::config::valid_label_name;

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A ready-to-open link to the profiles matching `selector` around `at_unix_ms` (± 15
/// minutes), or `None` when no `link-base` is set. A base containing Grafana's
/// Pyroscope app path (`/a/grafana-pyroscope-app/…`) gets the app's query parameters;
/// any other base is taken for the Pyroscope UI (`/explore?query=…`).
pub fn explore_link(link_base: &str, selector: &[(&str, &str)], at_unix_ms: u64) -> Option<String> {
    let base = link_base.trim().trim_end_matches('/');
    if base.is_empty() {
        return None;
    }
    const MARGIN_MS: u64 = 15 * 60 * 1000;
    let from = at_unix_ms.saturating_sub(MARGIN_MS);
    let until = at_unix_ms.saturating_add(MARGIN_MS);
    let enc = |s: &str| utf8_percent_encode(s, QUERY_VALUE).to_string();
    if base.contains("/a/grafana-pyroscope-app") {
        let mut url = format!(
            "{base}?var-profileMetricId={}&from={from}&to={until}",
            enc(PROFILE_TYPE)
        );
        for (name, value) in selector {
            if *name == "service_name" {
                url.push_str(&format!("&var-serviceName={}", enc(value)));
            } else {
                url.push_str(&format!(
                    "&var-filters={}",
                    enc(&format!("{name}|=|{value}"))
                ));
            }
        }
        return Some(url);
    }
    let matchers: Vec<String> = selector
        .iter()
        .map(|(name, value)| {
            format!(
                "{name}=\"{}\"",
                value.replace('\\', "\\\\").replace('"', "\\\"")
            )
        })
        .collect();
    let query = format!("{PROFILE_TYPE}{{{}}}", matchers.join(","));
    Some(format!(
        "{base}/explore?query={}&from={}&until={}",
        enc(&query),
        from / 1000,
        until / 1000
    ))
}

/// The link to one stored profile: its service, instance, worker and trigger, at its time.
pub fn profile_link(link_base: &str, labels: &[LabelPair], at_unix_ms: u64) -> Option<String> {
    let pick = ["service_name", "instance", "worker", "trigger"];
    let selector: Vec<(&str, &str)> = pick
        .iter()
        .filter_map(|name| {
            labels
                .iter()
                .find(|l| l.name == *name)
                .map(|l| (*name, l.value.as_str()))
        })
        .collect();
    explore_link(link_base, &selector, at_unix_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::{ProfileFigures, ProfileKind, Runtime, Trigger};

    fn meta(trigger: Trigger, rule: Option<&str>) -> ProfileMeta {
        ProfileMeta {
            id: 9,
            stored_seq: 9,
            slot: 2,
            worker_id: None,
            pid: 4242,
            trigger,
            kind: ProfileKind::Profile,
            created_unix_ms: 1_700_000_000_000,
            bytes: 100,
            figures: ProfileFigures::default(),
            rule: rule.map(String::from),
            file: "9.pb.gz".into(),
            runtime: Some(Runtime::Node),
            child_of: None,
            export: None,
        }
    }

    fn context() -> LabelContext {
        LabelContext {
            service_name: "shop".into(),
            instance: "host-a".into(),
            release: Some("v42".into()),
            static_labels: BTreeMap::from([("env".to_string(), "prod".to_string())]),
        }
    }

    #[test]
    fn a_leak_profile_carries_every_label_and_never_a_pid() {
        let labels = profile_labels(&meta(Trigger::Leak, Some("growth")), &context());
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("__name__", "memory"),
                ("env", "prod"),
                ("instance", "host-a"),
                ("release", "v42"),
                ("rule", "growth"),
                ("runtime", "node"),
                ("service_name", "shop"),
                ("trigger", "leak"),
                ("worker", "2"),
            ]
        );
        assert!(!pairs.iter().any(|(_, v)| v.contains("4242")));
        assert_eq!(validate_labels(&labels), Ok(()));
    }

    #[test]
    fn a_static_instance_replaces_the_host_name() {
        let mut c = context();
        c.static_labels.insert("instance".into(), "eu-7".into());
        let labels = profile_labels(&meta(Trigger::Baseline, None), &c);
        let instances: Vec<_> = labels.iter().filter(|l| l.name == "instance").collect();
        assert_eq!(instances.len(), 1);
        assert_eq!(instances[0].value, "eu-7");
    }

    #[test]
    fn pyroscope_rules_refuse_what_pyroscope_refuses() {
        let base = profile_labels(&meta(Trigger::Manual, None), &context());
        let with = |extra: LabelPair| {
            let mut l = base.clone();
            l.push(extra);
            validate_labels(&l)
        };
        assert!(matches!(
            with(LabelPair::new("9x", "v")),
            Err(LabelError::BadName(_))
        ));
        assert!(matches!(
            with(LabelPair::new("a-b", "v")),
            Err(LabelError::BadName(_))
        ));
        assert!(matches!(
            with(LabelPair::new("env", "v")),
            Err(LabelError::Duplicate(_))
        ));
        assert!(matches!(
            with(LabelPair::new("e", "")),
            Err(LabelError::BadValue(_))
        ));
        let mut many = base.clone();
        for i in 0..30 {
            many.push(LabelPair::new(&format!("l{i}"), "v"));
        }
        assert!(matches!(
            validate_labels(&many),
            Err(LabelError::TooMany(_))
        ));
        let no_service: Vec<_> = base
            .iter()
            .filter(|l| l.name != "service_name")
            .cloned()
            .collect();
        assert_eq!(validate_labels(&no_service), Err(LabelError::NoServiceName));
    }

    #[test]
    fn links_open_the_pyroscope_ui_or_grafanas_app() {
        assert_eq!(explore_link("", &[("worker", "0")], 0), None);
        let ui = explore_link(
            "http://pyro:4040/",
            &[("service_name", "shop"), ("worker", "0")],
            1_800_000,
        )
        .unwrap();
        assert!(
            ui.starts_with("http://pyro:4040/explore?query=memory%3Ainuse_space"),
            "{ui}"
        );
        assert!(ui.contains("service_name%3D%22shop%22"), "{ui}");
        assert!(ui.ends_with("&from=900&until=2700"), "{ui}");
        let app = explore_link(
            "https://g.example/a/grafana-pyroscope-app/explore",
            &[("service_name", "shop"), ("worker", "1")],
            1_800_000,
        )
        .unwrap();
        assert!(app.contains("var-serviceName=shop"), "{app}");
        assert!(app.contains("var-filters=worker%7C%3D%7C1"), "{app}");
        assert!(app.contains("from=900000&to=2700000"), "{app}");
    }
}
