//! One worker's text → its families, in order of first appearance, each with its samples
//! rendered under `worker="<slot>"`. Samples are assigned to families the way
//! Prometheus' parser does it (by name, `_bucket`/`_sum`/`_count` joining a histogram or
//! summary declared before them) and checked against the family's TYPE.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use super::line::{Kind, Line, Sample, parse_line, valid_float};
use super::{RESERVED_PREFIX, Reject, Rejections, add};

/// One family of one worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PartFamily {
    pub name: String,
    pub help: Option<String>,
    pub kind: Option<Kind>,
    /// Rendered sample lines, each ending in `\n`.
    pub text: String,
    pub samples: u64,
}

/// How a sample relates to its family.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Plain,
    Bucket,
    Sum,
    Count,
}

struct PartState<'a> {
    slot: String,
    families: Vec<PartFamily>,
    by_name: HashMap<&'a str, usize>,
    /// Series seen (name and labels, without `worker`), to drop repeats.
    series: HashSet<String>,
}

pub fn parse_part(slot: usize, text: &str, rejected: &mut Rejections) -> Vec<PartFamily> {
    let mut state = PartState {
        slot: slot.to_string(),
        families: Vec::new(),
        by_name: HashMap::new(),
        series: HashSet::new(),
    };
    for line in text.split('\n') {
        let outcome = match parse_line(line) {
            Ok(Line::Nothing) => Ok(()),
            Ok(Line::Help { name, text }) => state.help(name, text),
            Ok(Line::Type { name, kind }) => state.kind(name, kind),
            Ok(Line::Sample(sample)) => state.sample(&sample, rejected, slot),
            Err(_) => Err(Reject::Syntax),
        };
        if let Err(reason) = outcome {
            add(rejected, slot, reason, 1);
        }
    }
    state.families
}

impl<'a> PartState<'a> {
    fn family(&mut self, name: &'a str) -> &mut PartFamily {
        let index = *self.by_name.entry(name).or_insert_with(|| {
            self.families.push(PartFamily {
                name: name.to_string(),
                ..PartFamily::default()
            });
            self.families.len() - 1
        });
        &mut self.families[index]
    }

    fn help(&mut self, name: &'a str, text: &str) -> Result<(), Reject> {
        if name.starts_with(RESERVED_PREFIX) {
            return Err(Reject::Reserved);
        }
        let family = self.family(name);
        if family.help.is_some() {
            return Err(Reject::Duplicate);
        }
        family.help = Some(text.to_string());
        Ok(())
    }

    fn kind(&mut self, name: &'a str, kind: Kind) -> Result<(), Reject> {
        if name.starts_with(RESERVED_PREFIX) {
            return Err(Reject::Reserved);
        }
        let family = self.family(name);
        if family.kind.is_some() {
            return Err(Reject::Duplicate);
        }
        // Prometheus refuses a TYPE after the family's samples.
        if family.samples > 0 {
            return Err(Reject::Syntax);
        }
        family.kind = Some(kind);
        Ok(())
    }

    /// The family a sample belongs to, as Prometheus' parser decides it.
    fn resolve(&self, name: &str) -> Option<(usize, Role)> {
        if let Some(&index) = self.by_name.get(name) {
            return Some((index, Role::Plain));
        }
        let derived = [
            ("_bucket", Role::Bucket),
            ("_sum", Role::Sum),
            ("_count", Role::Count),
        ];
        for (suffix, role) in derived {
            let Some(&index) = name.strip_suffix(suffix).and_then(|b| self.by_name.get(b)) else {
                continue;
            };
            match (self.families[index].kind, role) {
                (Some(Kind::Histogram), _) | (Some(Kind::Summary), Role::Sum | Role::Count) => {
                    return Some((index, role));
                }
                _ => {}
            }
        }
        None
    }

    fn sample(
        &mut self,
        sample: &Sample<'a>,
        rejected: &mut Rejections,
        slot: usize,
    ) -> Result<(), Reject> {
        if sample.name.starts_with(RESERVED_PREFIX) {
            return Err(Reject::Reserved);
        }
        let (index, role) = match self.resolve(sample.name) {
            Some(found) => found,
            None => {
                self.family(sample.name);
                (self.by_name[sample.name], Role::Plain)
            }
        };
        fits_kind(sample, self.families[index].kind, role)?;
        let mut labels: Vec<(&str, &str)> = Vec::with_capacity(sample.labels.len());
        for &(name, value) in &sample.labels {
            if name == "worker" {
                if value != self.slot {
                    add(rejected, slot, Reject::WorkerLabel, 1);
                }
            } else {
                labels.push((name, value));
            }
        }
        let mut key = sample.name.to_string();
        let mut sorted = labels.clone();
        sorted.sort_unstable();
        for (name, value) in &sorted {
            let _ = write!(key, "\u{0}{name}\u{0}{value}");
        }
        if !self.series.insert(key) {
            return Err(Reject::Duplicate);
        }
        let family = &mut self.families[index];
        let _ = write!(family.text, "{}{{worker=\"{}\"", sample.name, self.slot);
        for (name, value) in labels {
            let _ = write!(family.text, ",{name}=\"{value}\"");
        }
        let _ = write!(family.text, "}} {}", sample.value);
        if let Some(ts) = sample.timestamp {
            let _ = write!(family.text, " {ts}");
        }
        family.text.push('\n');
        family.samples += 1;
        Ok(())
    }
}

/// Whether a sample is what its family's TYPE allows.
fn fits_kind(sample: &Sample<'_>, kind: Option<Kind>, role: Role) -> Result<(), Reject> {
    let float_label = |name| sample.label(name).is_some_and(valid_float);
    let ok = match (kind, role) {
        (Some(Kind::Histogram), Role::Bucket) => float_label("le"),
        (Some(Kind::Histogram), Role::Sum | Role::Count) => sample.label("le").is_none(),
        (Some(Kind::Histogram), Role::Plain) => false,
        (Some(Kind::Summary), Role::Plain) => float_label("quantile"),
        (Some(Kind::Summary), _) => sample.label("quantile").is_none(),
        (_, Role::Plain) => true,
        _ => false,
    };
    if ok { Ok(()) } else { Err(Reject::Syntax) }
}
