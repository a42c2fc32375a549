//! The culprit of each slot's latest leak detection, for the page that wakes someone up:
//! `heapwarden_leak_suspect_info{worker, rule, function, profile_id, kind, profile_link}`
//! (value: the culprit's growth in bytes), one series per slot. It owns what grew (`classify`: the
//! heap, memory outside the JS heap, or resident memory outside the allocator — a
//! function is named only when the heap grew), the slot's board (a new detection
//! replaces the slot's suspect; a suspect goes once its worker has left the slot and
//! `watchdog.suspect-ttl` has passed since the detection) and the series' text.
//!
//! The series is rendered here rather than by the metrics recorder because it must
//! disappear: the recorder keeps every series it has seen.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use crate::metric_names::labels::SuspectKind;
use crate::metric_names::{LEAK_SUSPECT, labels::Rule};
use crate::profiles::DiffReport;

/// Characters of a function name kept in the label: Rust generics and JS `file:line`
/// keys can run long, and a label value that big hurts every query touching it.
pub const MAX_FUNCTION_CHARS: usize = 160;
/// Longest profile link the label carries. A link cut short opens the wrong page, so a
/// longer one (very long service or instance names) is left out rather than cut; the
/// detection record still carries it whole.
pub const MAX_LINK_CHARS: usize = 1024;
/// Below this, a figure is flat whatever its share: allocator and GC noise.
const FLAT_BYTES: i64 = 1 << 20;

/// The memory figures a classification compares, from one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryFigures {
    pub rss: u64,
    pub pss: Option<u64>,
    /// The probe's heap used (jemalloc `allocated`, V8 `heapUsed`).
    pub heap: Option<u64>,
    /// Node: `external` (array buffers included).
    pub external: Option<u64>,
}

/// What grew between two figures, and by how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Culprit {
    pub kind: SuspectKind,
    /// Empty unless the heap grew and the diff names a growing function.
    pub function: String,
    pub growth_bytes: i64,
}

fn delta(from: Option<u64>, to: Option<u64>) -> Option<i64> {
    Some(to? as i64 - from? as i64)
}

/// Classifies a detection from the figures at the worker's baseline (or first ready
/// sample) and at the trip, and the diff's top growing function (`top`: name, bytes).
/// The heap "grew" when its growth is above noise and explains at least a quarter of
/// the resident growth; otherwise no function is named, whatever the profile says.
pub fn classify(base: &MemoryFigures, now: &MemoryFigures, top: Option<(&str, i64)>) -> Culprit {
    let resident = delta(base.pss, now.pss).unwrap_or(now.rss as i64 - base.rss as i64);
    let heap = delta(base.heap, now.heap);
    let external = delta(base.external, now.external);
    let heap_grew = heap.is_some_and(|h| h > FLAT_BYTES && h.saturating_mul(4) >= resident);
    if let Some(ext) = external
        && ext > FLAT_BYTES
        && ext > heap.unwrap_or(0).max(0).saturating_mul(2)
    {
        return Culprit {
            kind: SuspectKind::External,
            function: String::new(),
            growth_bytes: ext,
        };
    }
    if heap_grew {
        return match top.filter(|(_, bytes)| *bytes > 0) {
            Some((function, bytes)) => Culprit {
                kind: SuspectKind::Heap,
                function: label_function(function),
                growth_bytes: bytes,
            },
            None => Culprit {
                kind: SuspectKind::Heap,
                function: String::new(),
                growth_bytes: heap.unwrap_or(0),
            },
        };
    }
    Culprit {
        kind: SuspectKind::NativeRss,
        function: String::new(),
        growth_bytes: resident.max(0),
    }
}

/// The diff entry the page names: the first growing entry of the report's default view
/// (for Node, the first application frame), with its file:line when the profile has one.
pub fn page_entry(report: &DiffReport) -> Option<(String, i64)> {
    crate::profiles::top_entry_for_page(report).map(|e| {
        let location = e.short_location();
        let name = if location.is_empty() || e.function.contains(&location) {
            e.function.clone()
        } else {
            format!("{} ({location})", e.function)
        };
        (name, e.delta_bytes)
    })
}

/// `name` cut to [`MAX_FUNCTION_CHARS`] (an ellipsis marks the cut) with control
/// characters replaced, so it is one readable line in a label.
pub fn label_function(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(MAX_FUNCTION_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if name.chars().count() > MAX_FUNCTION_CHARS {
        out.pop();
        out.push('…');
    }
    out
}

/// `link` as the label carries it: empty when there is none, when it is longer than
/// [`MAX_LINK_CHARS`] or when it holds a control character (never in a link the agent
/// builds: its parts are percent-encoded).
pub fn label_link(link: Option<&str>) -> String {
    match link {
        Some(l) if l.chars().count() <= MAX_LINK_CHARS && !l.chars().any(char::is_control) => {
            l.to_owned()
        }
        _ => String::new(),
    }
}

/// A slot's latest culprit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suspect {
    /// The worker that leaked (the slot may hold its replacement by now).
    pub worker_id: u64,
    pub rule: Rule,
    pub function: String,
    pub profile_id: Option<u64>,
    pub kind: SuspectKind,
    pub growth_bytes: i64,
    /// The leak profile in Grafana/Pyroscope (`[export.pyroscope] link-base`); empty
    /// without a link base.
    pub profile_link: String,
    #[serde(skip)]
    pub detected_at: Instant,
}

/// Suspects by slot: what the series shows.
pub type SuspectView = BTreeMap<usize, Suspect>;

/// Records `suspect` for `slot`, replacing the slot's previous one.
pub fn record(view: &mut SuspectView, slot: usize, suspect: Suspect) {
    view.insert(slot, suspect);
}

/// Drops the suspects whose worker no longer serves their slot (`serving(slot)`: the
/// slot's current worker id, `None` for an empty or removed slot) once `ttl` has passed
/// since the detection. Returns whether any went.
pub fn expire(
    view: &mut SuspectView,
    serving: impl Fn(usize) -> Option<u64>,
    ttl: Duration,
    now: Instant,
) -> bool {
    let before = view.len();
    view.retain(|slot, s| {
        serving(*slot) == Some(s.worker_id) || now.saturating_duration_since(s.detected_at) < ttl
    });
    view.len() != before
}

/// The family's text: HELP and TYPE always (a scrape shows the family exists), then one
/// line per slot with a suspect.
pub fn render(view: &SuspectView) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# HELP {} {}", LEAK_SUSPECT.name, LEAK_SUSPECT.help);
    let _ = writeln!(out, "# TYPE {} gauge", LEAK_SUSPECT.name);
    for (slot, s) in view {
        let _ = writeln!(
            out,
            "{}{{worker=\"{slot}\",rule=\"{}\",function=\"{}\",profile_id=\"{}\",kind=\"{}\",profile_link=\"{}\"}} {}",
            LEAK_SUSPECT.name,
            s.rule.as_str(),
            escape_label(&s.function),
            s.profile_id.map(|id| id.to_string()).unwrap_or_default(),
            s.kind.as_str(),
            escape_label(&s.profile_link),
            s.growth_bytes
        );
    }
    out
}

/// A label value in the text format, escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    crate::metric_names::push_label_value(&mut out, value);
    out
}

#[cfg(test)]
#[path = "suspect_tests.rs"]
mod tests;
