//! One line of the Prometheus text format (version 0.0.4), parsed strictly: what
//! Prometheus' own parser (`expfmt`) would refuse is an error here, so a line that
//! passes can be written back out verbatim. Label values stay as written (escaped,
//! without the quotes); names, escapes, floats and timestamps are checked.

/// The metric types a `# TYPE` line may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        }
    }

    fn parse(word: &str) -> Option<Kind> {
        Some(match word {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "untyped" => Kind::Untyped,
            _ => return None,
        })
    }
}

/// A sample line: `name{label="value",…} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// Label names with their values as written between the quotes (still escaped).
    pub labels: Vec<(&'a str, &'a str)>,
    pub value: &'a str,
    pub timestamp: Option<&'a str>,
}

impl Sample<'_> {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    /// Empty, or a comment that is neither HELP nor TYPE.
    Nothing,
    Help {
        name: &'a str,
        text: &'a str,
    },
    Type {
        name: &'a str,
        kind: Kind,
    },
    Sample(Sample<'a>),
}

/// Why a line was refused; the message is for tests and debugging.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LineError(pub &'static str);

fn blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

pub fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A float both Rust and Go's `strconv.ParseFloat` read the same way (Go refuses a
/// signed NaN, hex and `_`; Rust refuses hex and `_` too).
pub fn valid_float(text: &str) -> bool {
    let unsigned = text.strip_prefix(['+', '-']);
    if unsigned.is_some_and(|t| t.starts_with(['n', 'N'])) {
        return false;
    }
    text.parse::<f64>().is_ok()
}

/// Whether `text` only uses the escapes the format allows: `\\`, `\n`, and in label
/// values also `\"`.
fn valid_escapes(text: &str, allow_quote: bool) -> bool {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\' | 'n') => {}
                Some('"') if allow_quote => {}
                _ => return false,
            }
        }
    }
    true
}

pub fn parse_line(line: &str) -> Result<Line<'_>, LineError> {
    let line = line.trim_start_matches(blank);
    if line.is_empty() {
        return Ok(Line::Nothing);
    }
    match line.strip_prefix('#') {
        Some(comment) => parse_comment(comment),
        None => parse_sample(line).map(Line::Sample),
    }
}

fn parse_comment(comment: &str) -> Result<Line<'_>, LineError> {
    let rest = comment.trim_start_matches(blank);
    let (keyword, rest) = rest.split_once(blank).unwrap_or((rest, ""));
    if keyword != "HELP" && keyword != "TYPE" {
        return Ok(Line::Nothing);
    }
    let rest = rest.trim_start_matches(blank);
    let (name, rest) = rest.split_once(blank).unwrap_or((rest, ""));
    if !valid_metric_name(name) {
        return Err(LineError("bad metric name in a HELP or TYPE line"));
    }
    if keyword == "HELP" {
        let text = rest.trim_start_matches(blank);
        if !valid_escapes(text, false) {
            return Err(LineError("bad escape in HELP text"));
        }
        return Ok(Line::Help { name, text });
    }
    let kind = Kind::parse(rest.trim_matches(blank)).ok_or(LineError("unknown metric type"))?;
    Ok(Line::Type { name, kind })
}

fn parse_sample(line: &str) -> Result<Sample<'_>, LineError> {
    let name_end = line
        .find(|c: char| c == '{' || blank(c))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(LineError("bad metric name"));
    }
    let mut rest = line[name_end..].trim_start_matches(blank);
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = parse_labels(inner, &mut labels)?;
    }
    let mut words = rest.split(blank).filter(|w| !w.is_empty());
    let value = words.next().ok_or(LineError("missing value"))?;
    if !valid_float(value) {
        return Err(LineError("value is not a float"));
    }
    let timestamp = words.next();
    if timestamp.is_some_and(|t| t.parse::<i64>().is_err()) {
        return Err(LineError("timestamp is not an integer"));
    }
    if words.next().is_some() {
        return Err(LineError("text after the timestamp"));
    }
    Ok(Sample {
        name,
        labels,
        value,
        timestamp,
    })
}

/// Parses `a="1",b="2"}` (after the `{`); returns what follows the `}`.
fn parse_labels<'a>(
    mut rest: &'a str,
    labels: &mut Vec<(&'a str, &'a str)>,
) -> Result<&'a str, LineError> {
    loop {
        rest = rest.trim_start_matches(blank);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let eq = rest
            .find('=')
            .ok_or(LineError("expected '=' after a label name"))?;
        let name = rest[..eq].trim_end_matches(blank);
        if !valid_label_name(name) || name.starts_with("__") {
            return Err(LineError("bad or reserved label name"));
        }
        if labels.iter().any(|(n, _)| *n == name) {
            return Err(LineError("duplicate label name"));
        }
        let after_eq = rest[eq + 1..].trim_start_matches(blank);
        let quoted = after_eq
            .strip_prefix('"')
            .ok_or(LineError("label value must be quoted"))?;
        let close = closing_quote(quoted).ok_or(LineError("unterminated label value"))?;
        let value = &quoted[..close];
        if !valid_escapes(value, true) {
            return Err(LineError("bad escape in a label value"));
        }
        labels.push((name, value));
        rest = quoted[close + 1..].trim_start_matches(blank);
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(LineError("expected ',' or '}' after a label value"));
        }
    }
}

/// Index of the `"` that ends a label value, skipping escaped characters.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(i),
            _ => {}
        }
    }
    None
}
