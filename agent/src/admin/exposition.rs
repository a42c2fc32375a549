//! Merging several Prometheus text expositions (the agent's recorder, the sampler's
//! float counters, one per worker) into one valid page: each family appears once, with
//! one HELP and one TYPE line, followed by the samples of every part in order.
//! Concatenation would repeat `# TYPE` lines, which Prometheus and `promtool` reject.
//!
//! A worker's samples get `worker="<slot>"` when they do not carry a `worker` label
//! already, so two workers' series never collide. A family whose parts disagree on the
//! TYPE keeps the first part's.

use std::collections::HashMap;

/// One input text; `worker` is the slot label to add where missing.
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    pub worker: Option<&'a str>,
    pub text: &'a str,
}

#[derive(Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<String>,
}

/// Families in order of first appearance.
#[derive(Default)]
struct Families {
    order: Vec<String>,
    by_name: HashMap<String, Family>,
}

impl Families {
    fn get(&mut self, name: &str) -> &mut Family {
        if !self.by_name.contains_key(name) {
            self.order.push(name.to_string());
        }
        self.by_name.entry(name.to_string()).or_default()
    }
}

pub fn merge(parts: &[Part<'_>]) -> String {
    let mut families = Families::default();
    for part in parts {
        merge_part(&mut families, part);
    }
    let mut out = String::new();
    for name in &families.order {
        let Some(family) = families.by_name.get(name) else {
            continue;
        };
        if let Some(help) = &family.help {
            out.push_str(&format!("# HELP {name} {help}\n"));
        }
        if let Some(kind) = &family.kind {
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        }
        for sample in &family.samples {
            out.push_str(sample);
            out.push('\n');
        }
    }
    out
}

fn merge_part(families: &mut Families, part: &Part<'_>) {
    // The family the last HELP/TYPE line opened in this part; histogram and summary
    // series (`_bucket`, `_sum`, `_count`) belong to it.
    let mut current: Option<String> = None;
    for line in part.text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            let (keyword, name, rest) = (words.next(), words.next(), words.next());
            let (Some(keyword @ ("HELP" | "TYPE")), Some(name)) = (keyword, name) else {
                // A free-form comment (or `# EOF`) carries nothing to keep.
                continue;
            };
            if !valid_name(name) {
                continue;
            }
            let family = families.get(name);
            match keyword {
                "HELP" if family.help.is_none() => {
                    family.help = Some(rest.unwrap_or("").to_string())
                }
                "TYPE" if family.kind.is_none() => family.kind = rest.map(|k| k.trim().to_string()),
                _ => {}
            }
            current = Some(name.to_string());
            continue;
        }
        let Some((metric, labels, value)) = split_sample(line) else {
            continue;
        };
        let family_name = match &current {
            Some(f) if belongs_to(metric, f) => f.clone(),
            _ => {
                current = None;
                metric.to_string()
            }
        };
        let sample = match part.worker {
            Some(worker) if !has_label(labels, "worker") => {
                with_worker(metric, labels, value, worker)
            }
            _ => line.to_string(),
        };
        families.get(&family_name).samples.push(sample);
    }
}

fn belongs_to(metric: &str, family: &str) -> bool {
    metric == family
        || metric
            .strip_prefix(family)
            .is_some_and(|s| matches!(s, "_bucket" | "_sum" | "_count" | "_total" | "_created"))
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `name{labels} value [ts]` → (name, labels without braces, rest after the labels).
fn split_sample(line: &str) -> Option<(&str, &str, &str)> {
    let name_end = line.find(|c: char| c == '{' || c.is_ascii_whitespace())?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return None;
    }
    let rest = &line[name_end..];
    let (labels, value) = if let Some(inner) = rest.strip_prefix('{') {
        let close = closing_brace(inner)?;
        (&inner[..close], inner[close + 1..].trim_start())
    } else {
        ("", rest.trim_start())
    };
    // Rust's float syntax accepts the format's `+Inf`, `-Inf` and `NaN`.
    value
        .split_ascii_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .map(|_| (name, labels, value))
}

/// Index of the `}` closing a label set, skipping quoted values with escapes.
fn closing_brace(inner: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

/// Whether the label set (without braces) has a label called `name`.
fn has_label(labels: &str, name: &str) -> bool {
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '=' if !in_quotes && labels[start..i].trim() == name => return true,
            ',' if !in_quotes => start = i + 1,
            _ => {}
        }
    }
    false
}

fn with_worker(metric: &str, labels: &str, value: &str, worker: &str) -> String {
    let labels = labels.trim().trim_end_matches(',');
    if labels.is_empty() {
        format!("{metric}{{worker=\"{worker}\"}} {value}")
    } else {
        format!("{metric}{{worker=\"{worker}\",{labels}}} {value}")
    }
}

#[cfg(test)]
#[path = "exposition_tests.rs"]
mod tests;
