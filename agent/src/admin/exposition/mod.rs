//! Workers' own metrics → one valid block of the agent's `/metrics` page, end to end:
//! fetched from the probe-linked workers when a scrape needs it ([`fetch`], one task
//! owning the texts), kept fresh for the scrapes that share it ([`feed`]), then parsed
//! and merged here. Every worker's text is parsed strictly, line by line ([`line`]); what Prometheus would refuse, or what
//! would let a worker pose as the agent or as another worker, is dropped and counted, so
//! no worker can break the page or forge a series:
//!
//! - a line that does not parse, or a sample that does not fit its family's TYPE
//!   (a histogram sample without `_bucket`/`_sum`/`_count`, a bucket without `le`, …):
//!   `syntax`;
//! - a family under the agent's own prefix `heapwarden_`: `reserved`;
//! - the same series twice, a second TYPE or HELP line: `duplicate`;
//! - a family whose TYPE differs from another worker's, or whose name is a histogram's or
//!   summary's own series name (`x_bucket` next to histogram `x`): `conflict`;
//! - families past the per-worker byte budget: `too_large`;
//! - a `worker` label naming another slot is replaced by the worker's own slot:
//!   `worker_label` (the sample is kept).
//!
//! Families are merged by name across workers: each appears once, with one HELP and one
//! TYPE line, followed by every worker's samples, each with `worker="<slot>"` first.

pub mod feed;
pub mod fetch;
pub mod line;
mod part;

use std::collections::{BTreeMap, HashMap};

pub use feed::{Exposition, ExpositionReader, ExpositionWriter, WorkerText, exposition_channel};
pub use fetch::run_worker_metrics;
pub use line::{Kind, Line, LineError, Sample, parse_line};
pub use part::{PartFamily, parse_part};

/// Metric families with this prefix are the agent's; workers may not send them.
pub use crate::metric_names::AGENT_PREFIX as RESERVED_PREFIX;

pub use crate::metric_names::labels::MetricsReject as Reject;

/// Counts by (slot, reason).
pub type Rejections = BTreeMap<(usize, Reject), u64>;

/// One worker's text.
#[derive(Debug, Clone, Copy)]
pub struct WorkerPart<'a> {
    pub slot: usize,
    pub text: &'a str,
}

/// The merged worker families and what was dropped on the way.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WorkerPage {
    pub text: String,
    pub rejected: Rejections,
}

#[derive(Default)]
struct Merged {
    name: String,
    help: Option<String>,
    kind: Option<Kind>,
    /// Rendered sample lines (with `\n`).
    text: String,
    samples_by_slot: BTreeMap<usize, u64>,
}

/// Merges every worker's families; each worker's accepted families are capped at
/// `max_bytes_per_worker` (whole families, in order; the rest count as `too_large`).
pub fn merge_workers(parts: &[WorkerPart<'_>], max_bytes_per_worker: usize) -> WorkerPage {
    let mut rejected = Rejections::new();
    let mut families: Vec<Merged> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for part in parts {
        let parsed = parse_part(part.slot, part.text, &mut rejected);
        let mut budget = max_bytes_per_worker;
        for family in parsed {
            if family.samples == 0 {
                continue;
            }
            if family.text.len() > budget {
                add(&mut rejected, part.slot, Reject::TooLarge, family.samples);
                continue;
            }
            let index = *by_name.entry(family.name.clone()).or_insert_with(|| {
                families.push(Merged {
                    name: family.name.clone(),
                    kind: family.kind,
                    ..Merged::default()
                });
                families.len() - 1
            });
            let merged = &mut families[index];
            if merged.kind.unwrap_or(Kind::Untyped) != family.kind.unwrap_or(Kind::Untyped) {
                add(&mut rejected, part.slot, Reject::Conflict, family.samples);
                continue;
            }
            budget -= family.text.len();
            merged.kind = merged.kind.or(family.kind);
            if merged.help.is_none() {
                merged.help = family.help;
            }
            merged.text.push_str(&family.text);
            *merged.samples_by_slot.entry(part.slot).or_default() += family.samples;
        }
    }
    let clashing = clashing_families(&families, &by_name);
    let mut text = String::new();
    for (index, family) in families.iter().enumerate() {
        if clashing.contains(&index) {
            for (slot, n) in &family.samples_by_slot {
                add(&mut rejected, *slot, Reject::Conflict, *n);
            }
            continue;
        }
        if let Some(help) = &family.help {
            text.push_str(&format!("# HELP {} {help}\n", family.name));
        }
        if let Some(kind) = family.kind {
            text.push_str(&format!("# TYPE {} {}\n", family.name, kind.as_str()));
        }
        text.push_str(&family.text);
    }
    WorkerPage { text, rejected }
}

/// Families named like another family's histogram or summary series: Prometheus would
/// read their samples as part of that family.
fn clashing_families(families: &[Merged], by_name: &HashMap<String, usize>) -> Vec<usize> {
    let mut clashing = Vec::new();
    for family in families {
        let suffixes: &[&str] = match family.kind {
            Some(Kind::Histogram) => &["_bucket", "_sum", "_count"],
            Some(Kind::Summary) => &["_sum", "_count"],
            _ => &[],
        };
        for suffix in suffixes {
            if let Some(&other) = by_name.get(&format!("{}{suffix}", family.name)) {
                clashing.push(other);
            }
        }
    }
    clashing
}

fn add(rejected: &mut Rejections, slot: usize, reason: Reject, n: u64) {
    if n > 0 {
        *rejected.entry((slot, reason)).or_default() += n;
    }
}

#[cfg(test)]
pub(crate) mod tests;
