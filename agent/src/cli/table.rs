//! Human-readable tables for the on-call verbs (`--json` prints the API's JSON instead).

use serde_json::Value;

use crate::profiles::DiffEntry;

pub fn mib(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |b| format!("{:.1}", b / 1048576.0))
}

fn duration(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(s) if s.is_nan() => "-".into(),
        Some(s) if s >= 86400.0 => format!("{:.1}d", s / 86400.0),
        Some(s) if s >= 3600.0 => format!("{:.1}h", s / 3600.0),
        Some(s) if s >= 60.0 => format!("{:.1}m", s / 60.0),
        Some(s) => format!("{s:.0}s"),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn print_workers(rows: &Value) {
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
    let mut spent = false;
    for r in rows.as_array().into_iter().flatten() {
        let growth = r["growth_bytes_per_second"]
            .as_f64()
            .map_or("-".into(), |g| format!("{:+.2}", g * 60.0 / 1048576.0));
        let mut state = text(&r["state"]);
        if r["budget_exhausted"] == true {
            state.push('!');
            spent = true;
        }
        println!(
            "{:>4} {:>8} {:<10} {:>8} {:>8} {:>9} {:>9} {:>12} {:>10}",
            text(&r["slot"]),
            text(&r["pid"]),
            state,
            duration(&r["uptime_seconds"]),
            text(&r["restarts"]),
            mib(&r["rss_bytes"]),
            mib(&r["heap_allocated_bytes"]),
            growth,
            duration(&r["seconds_to_limit"])
        );
    }
    if spent {
        println!(
            "! leak-restart budget spent (max-leak-restarts-per-hour): the slot serves, \
             but a leak no longer replaces it"
        );
    }
}

pub fn print_profiles(rows: &Value) {
    println!(
        "{:>5} {:>4} {:>8} {:<9} {:<9} {:<10} {:>9} {:>9}  {:<20}  PYROSCOPE",
        "ID", "SLOT", "PID", "TRIGGER", "KIND", "RULE", "BYTES", "HEAP_MiB", "CREATED"
    );
    for r in rows.as_array().into_iter().flatten() {
        let created = r["created_unix_ms"]
            .as_u64()
            .map(|ms| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                )
                .to_string()
            })
            .unwrap_or_default();
        // `-`: not pushed (yet, or export is off); else the outcome, and when.
        let export = match (
            r["export"]["outcome"].as_str(),
            r["export"]["at_unix_ms"].as_u64(),
        ) {
            (Some(outcome), Some(ms)) => format!(
                "{outcome} {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
                )
            ),
            _ => "-".to_string(),
        };
        println!(
            "{:>5} {:>4} {:>8} {:<9} {:<9} {:<10} {:>9} {:>9}  {created:<20}  {export}",
            text(&r["id"]),
            text(&r["slot"]),
            text(&r["pid"]),
            text(&r["trigger"]),
            r["kind"].as_str().unwrap_or("profile"),
            text(&r["rule"]),
            text(&r["bytes"]),
            mib(&r["figures"]["heap_allocated"]),
        );
    }
}

/// The diff's default view (for Node: by first application frame), or with `sites` the
/// allocation sites; each row with its `file:line`.
pub fn print_diff(report: &Value, sites: bool) {
    println!(
        "profile {} minus base {}: {} MiB growth",
        text(&report["profile_id"]),
        text(&report["base_id"]),
        mib(&report["total_delta_bytes"])
    );
    let (rows, heading) = if sites || report["view"] != "app_frame" {
        (&report["top_sites"], "ALLOCATION SITE")
    } else {
        (
            &report["top"],
            "APPLICATION FRAME (--sites: allocation sites)",
        )
    };
    // A report from an agent without `top_sites` still prints its `top`.
    let rows = if rows.as_array().is_some_and(|r| !r.is_empty()) {
        rows
    } else {
        &report["top"]
    };
    println!("{:>12}  {heading}", "GROWTH_MiB");
    let entries = rows.as_array().into_iter().flatten().take(15);
    for e in entries.filter_map(|e| serde_json::from_value::<DiffEntry>(e.clone()).ok()) {
        let at = e.short_location();
        let note = if e.in_app {
            ""
        } else {
            "  (no application frame on the stack)"
        };
        println!(
            "{:>12}  {}{}{note}",
            mib(&Value::from(e.delta_bytes)),
            e.function,
            if at.is_empty() {
                String::new()
            } else {
                format!("  {at}")
            }
        );
    }
}
