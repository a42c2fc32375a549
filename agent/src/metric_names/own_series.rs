//! The families the agent stores and renders itself, apart from the Prometheus exporter:
//! the per-worker ones (counters and gauges whose first label is `worker`: a slot's state,
//! memory figures, CPU seconds and event counts) and the float counters (CPU seconds,
//! which the `metrics` crate's integer counters cannot hold).
//!
//! The per-worker families are nearly all of the agent's series (~40 per slot). On every
//! scrape the exporter builds a map entry, a name and label strings for each series; with
//! 64 workers those thousands of short-lived blocks left free gaps in malloc's arena that
//! stayed resident (~8 KiB per worker, see `docs/src/internals/performance.md`). This
//! render writes each series straight into the page and allocates nothing but the page.
//!
//! [`AgentRecorder`] owns which family goes where: these here, every other to the
//! exporter (histograms, the agent's and the machine's gauges, the agent-wide counters).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};

use super::{CATALOG, Kind, Metric};

/// Whether `m` is stored and rendered here.
pub fn is_own_family(m: &Metric) -> bool {
    match m.kind {
        Kind::FloatCounter => true,
        Kind::Counter | Kind::Gauge => m.labels.first() == Some(&"worker"),
        Kind::Histogram => false,
    }
}

/// One family's series: each key's value, an integer for a counter, an `f64`'s bits for a
/// gauge or a float counter (registered as a gauge).
struct Family {
    metric: &'static Metric,
    series: Mutex<HashMap<Key, Arc<AtomicU64>>>,
}

/// Every family stored here, with its series, in catalog order.
pub struct OwnSeries {
    families: Vec<Family>,
    /// The length of the last render, to size the next page in one allocation.
    last_len: AtomicUsize,
}

impl Default for OwnSeries {
    fn default() -> Self {
        let families = CATALOG
            .iter()
            .filter(|m| is_own_family(m))
            .map(|metric| Family {
                metric,
                series: Mutex::default(),
            })
            .collect();
        OwnSeries {
            families,
            last_len: AtomicUsize::new(0),
        }
    }
}

impl OwnSeries {
    /// The family named `name`, when it is stored here.
    fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.metric.name == name)
    }

    /// The value cell of `key`, made at its first registration; `None` when the key's
    /// family is not stored here. `counter`: registered with `counter!`, not `gauge!`.
    fn cell(&self, key: &Key, counter: bool) -> Option<Arc<AtomicU64>> {
        let family = self.family(key.name())?;
        // A counter's cell holds an integer, a gauge's or a float counter's an `f64`'s
        // bits: the render reads it by the catalog's kind.
        debug_assert_eq!(
            family.metric.kind == Kind::Counter,
            counter,
            "{} registered as the wrong kind",
            family.metric.name
        );
        let mut series = family.series.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cell) = series.get(key) {
            return Some(cell.clone());
        }
        Some(series.entry(key.clone()).or_default().clone())
    }

    /// Bytes the next render will likely take (the last one's, with room to grow).
    pub fn size_hint(&self) -> usize {
        let last = self.last_len.load(Ordering::Relaxed);
        last + last / 8 + 256
    }

    /// Appends every family that has a series, with its HELP and TYPE lines.
    pub fn render_into(&self, page: &mut String) {
        let start = page.len();
        for family in &self.families {
            let series = family.series.lock().unwrap_or_else(PoisonError::into_inner);
            if series.is_empty() {
                continue;
            }
            let m = family.metric;
            let kind = if m.kind == Kind::Gauge {
                "gauge"
            } else {
                "counter"
            };
            let _ = writeln!(page, "# HELP {} {}", m.name, m.help);
            let _ = writeln!(page, "# TYPE {} {kind}", m.name);
            for (key, cell) in series.iter() {
                page.push_str(m.name);
                write_labels(page, key);
                let bits = cell.load(Ordering::Acquire);
                if m.kind == Kind::Counter {
                    let _ = writeln!(page, " {bits}");
                } else {
                    write_float(page, f64::from_bits(bits));
                }
            }
        }
        self.last_len.store(page.len() - start, Ordering::Relaxed);
    }
}

fn write_labels(page: &mut String, key: &Key) {
    let mut first = true;
    for label in key.labels() {
        page.push(if first { '{' } else { ',' });
        first = false;
        page.push_str(label.key());
        page.push_str("=\"");
        push_label_value(page, label.value());
        page.push('"');
    }
    if !first {
        page.push('}');
    }
}

/// A label value in the text format: backslash, double quote and line feed escaped.
pub fn push_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A sample value as the text format spells it (`+Inf`, `-Inf`, `NaN`), then a newline.
fn write_float(page: &mut String, value: f64) {
    let _ = match value {
        f64::INFINITY => writeln!(page, " +Inf"),
        f64::NEG_INFINITY => writeln!(page, " -Inf"),
        v => writeln!(page, " {v}"),
    };
}

/// The agent's recorder: the families of [`is_own_family`] to [`OwnSeries`], every other
/// to the Prometheus exporter.
pub struct AgentRecorder {
    exporter: PrometheusRecorder,
    own: Arc<OwnSeries>,
}

impl AgentRecorder {
    pub fn new(exporter: PrometheusRecorder) -> AgentRecorder {
        AgentRecorder {
            exporter,
            own: Arc::default(),
        }
    }

    pub fn handle(&self) -> MetricsHandle {
        MetricsHandle {
            exporter: self.exporter.handle(),
            own: self.own.clone(),
        }
    }

    fn stored_here(&self, name: &str) -> bool {
        self.own.family(name).is_some()
    }
}

impl Recorder for AgentRecorder {
    // The HELP of the families stored here comes from the catalog when they are rendered.
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if !self.stored_here(key.as_str()) {
            self.exporter.describe_counter(key, unit, description);
        }
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if !self.stored_here(key.as_str()) {
            self.exporter.describe_gauge(key, unit, description);
        }
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.exporter.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        match self.own.cell(key, true) {
            Some(cell) => Counter::from_arc(cell),
            None => self.exporter.register_counter(key, metadata),
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        match self.own.cell(key, false) {
            Some(cell) => Gauge::from_arc(cell),
            None => self.exporter.register_gauge(key, metadata),
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.exporter.register_histogram(key, metadata)
    }
}

/// Renders the agent's families: the exporter's, then its own.
#[derive(Clone)]
pub struct MetricsHandle {
    exporter: PrometheusHandle,
    own: Arc<OwnSeries>,
}

impl MetricsHandle {
    pub fn render(&self) -> String {
        let exporter = self.exporter.render();
        let mut page = String::with_capacity(exporter.len() + 1 + self.own.size_hint());
        page.push_str(&exporter);
        if !page.is_empty() && !page.ends_with('\n') {
            page.push('\n');
        }
        self.own.render_into(&mut page);
        page
    }

    /// The exporter's histogram housekeeping.
    pub fn run_upkeep(&self) {
        self.exporter.run_upkeep();
    }
}
