//! Human-readable tables for the on-call verbs (`--json` prints the API's JSON instead),
//! from the admin API's own reply types.

use super::out::outln;
use std::fmt::Display;

use crate::api_types::{DiffReport, DiffView, ProfileMeta, WorkerRow};

/// Bytes as MiB with one decimal, `-` when unknown.
fn mib(bytes: Option<f64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1}", b / 1048576.0))
}

fn mib_of(bytes: Option<u64>) -> String {
    mib(bytes.map(|b| b as f64))
}

fn duration(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s.is_nan() => "-".into(),
        Some(s) if s >= 86400.0 => format!("{:.1}d", s / 86400.0),
        Some(s) if s >= 3600.0 => format!("{:.1}h", s / 3600.0),
        Some(s) if s >= 60.0 => format!("{:.1}m", s / 60.0),
        Some(s) => format!("{s:.0}s"),
    }
}

/// A value, `-` when unknown.
fn text(value: Option<impl Display>) -> String {
    value.map_or("-".into(), |v| v.to_string())
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms),
    )
    .to_string()
}

pub fn print_workers(rows: &[WorkerRow]) {
    outln!(
        "{:>4} {:>8} {:<10} {:>8} {:>8} {:>9} {:>9} {:>12} {:>10}",
        "SLOT",
        "PID",
        "STATE",
        "UPTIME",
        "RESTARTS",
        "RSS_MiB",
        "HEAP_MiB",
        "GROWTH_MiB/m",
        "TO_LIMIT"
    );
    let mut spent = false;
    for r in rows {
        let figures = &r.figures;
        let growth = figures
            .growth_bytes_per_second
            .map_or("-".into(), |g| format!("{:+.2}", g * 60.0 / 1048576.0));
        let mut state = r.state.clone();
        if r.budget_exhausted {
            state.push('!');
            spent = true;
        }
        outln!(
            "{:>4} {:>8} {:<10} {:>8} {:>8} {:>9} {:>9} {:>12} {:>10}",
            r.slot,
            text(r.pid),
            state,
            duration(r.uptime_seconds),
            r.restarts,
            mib_of(figures.rss_bytes),
            mib_of(figures.heap_allocated_bytes),
            growth,
            duration(figures.seconds_to_limit)
        );
    }
    if spent {
        outln!(
            "! leak-restart budget spent (max-leak-restarts-per-hour): the slot serves, \
             but a leak no longer replaces it"
        );
    }
}

pub fn print_profiles(rows: &[ProfileMeta]) {
    outln!(
        "{:>5} {:>4} {:>8} {:<9} {:<9} {:<10} {:>9} {:>9}  {:<20}  PYROSCOPE",
        "ID",
        "SLOT",
        "PID",
        "TRIGGER",
        "KIND",
        "RULE",
        "BYTES",
        "HEAP_MiB",
        "CREATED"
    );
    for r in rows {
        // `-`: not pushed (yet, or export is off); else the outcome, and when.
        let export = r.export.as_ref().map_or("-".to_string(), |mark| {
            format!("{} {}", mark.outcome.as_str(), rfc3339(mark.at_unix_ms))
        });
        outln!(
            "{:>5} {:>4} {:>8} {:<9} {:<9} {:<10} {:>9} {:>9}  {:<20}  {export}",
            r.id,
            r.slot,
            r.pid,
            r.trigger.as_str(),
            r.kind.as_str(),
            text(r.rule.as_deref()),
            r.bytes,
            mib_of(r.figures.heap_allocated),
            rfc3339(r.created_unix_ms),
        );
    }
}

/// The diff's default view (for Node: by first application frame), or with `sites` the
/// allocation sites; each row with its `file:line`.
pub fn print_diff(report: &DiffReport, sites: bool) {
    outln!(
        "profile {} minus base {}: {} MiB growth",
        report.profile_id,
        report.base_id,
        mib(Some(report.total_delta_bytes as f64))
    );
    let (rows, heading) = if sites || report.view != DiffView::AppFrame {
        (&report.top_sites, "ALLOCATION SITE")
    } else {
        (&report.top, "APPLICATION FRAME (--sites: allocation sites)")
    };
    // A report from an agent without `top_sites` still prints its `top`.
    let rows = if rows.is_empty() { &report.top } else { rows };
    outln!("{:>12}  {heading}", "GROWTH_MiB");
    for e in rows.iter().take(15) {
        let at = e.short_location();
        let note = if !e.in_app {
            "  (no application frame on the stack)".to_owned()
        } else if !e.inlined_into.is_empty() {
            format!("  (with its code inlined into {})", e.inlined_into)
        } else {
            String::new()
        };
        outln!(
            "{:>12}  {}{}{note}",
            mib(Some(e.delta_bytes as f64)),
            e.function,
            if at.is_empty() {
                String::new()
            } else {
                format!("  {at}")
            }
        );
    }
}
