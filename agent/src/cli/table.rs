//! Human-readable tables for the on-call verbs (`--json` prints the API's JSON instead),
//! from the API's typed replies (`api_types`).

use std::fmt::Display;

use crate::api_types::{DiffReport, ProfileMeta, WorkerRow};

/// Bytes as MiB with one decimal; `-` when absent.
pub fn mib<N: Into<f64>>(bytes: Option<N>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1}", b.into() / 1048576.0))
}

/// Integers as f64 for [`mib`] (figures stay far below 2^53).
fn f(n: impl TryInto<i64>) -> f64 {
    n.try_into().map_or(f64::NAN, |n| n as f64)
}

fn duration(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s.is_nan() => "-".into(),
        Some(s) if s >= 86400.0 => format!("{:.1}d", s / 86400.0),
        Some(s) if s >= 3600.0 => format!("{:.1}h", s / 3600.0),
        Some(s) if s >= 60.0 => format!("{:.1}m", s / 60.0),
        Some(s) => format!("{s:.0}s"),
    }
}

fn text<T: Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

pub fn print_workers(rows: &[WorkerRow]) {
    println!(
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
    for r in rows {
        let growth = r
            .figures
            .growth_bytes_per_second
            .map_or("-".into(), |g| format!("{:+.2}", g * 60.0 / 1048576.0));
        let mut state = r.state.clone();
        if r.budget_exhausted {
            state.push('!');
        }
        println!(
            "{:>4} {:>8} {:<10} {:>8} {:>8} {:>9} {:>9} {:>12} {:>10}",
            r.slot,
            text(r.pid),
            state,
            duration(r.uptime_seconds),
            r.restarts,
            mib(r.figures.rss_bytes.map(f)),
            mib(r.figures.heap_allocated_bytes.map(f)),
            growth,
            duration(r.figures.seconds_to_limit)
        );
    }
}

pub fn print_profiles(rows: &[ProfileMeta]) {
    println!(
        "{:>5} {:>4} {:>8} {:<9} {:<9} {:<10} {:>9} {:>9}  CREATED",
        "ID", "SLOT", "PID", "TRIGGER", "KIND", "RULE", "BYTES", "HEAP_MiB"
    );
    for r in rows {
        let created = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.created_unix_ms),
        );
        println!(
            "{:>5} {:>4} {:>8} {:<9} {:<9} {:<10} {:>9} {:>9}  {created}",
            r.id,
            r.slot,
            r.pid,
            r.trigger.as_str(),
            r.kind.as_str(),
            text(r.rule.as_deref()),
            r.bytes,
            mib(r.figures.heap_allocated.map(f)),
        );
    }
}

pub fn print_diff(report: &DiffReport) {
    println!(
        "profile {} minus base {}: {} MiB growth",
        report.profile_id,
        report.base_id,
        mib(Some(f(report.total_delta_bytes)))
    );
    println!("{:>12}  FUNCTION", "GROWTH_MiB");
    for e in report.top.iter().take(15) {
        println!("{:>12}  {}", mib(Some(f(e.delta_bytes))), e.function);
    }
}
