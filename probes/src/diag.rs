//! The probe's own diagnostics: one JSON object per line on stderr.
//!
//! A library linked into arbitrary apps cannot assume their logger; stderr is captured by
//! the agent for every worker, and JSON lines match the agent's own log format.

use serde_json::{Map, Value};

/// Logs a warning: `msg` is a sentence, `fields` carry the values.
pub(crate) fn warn(msg: &str, fields: &[(&str, Value)]) {
    let mut line = Map::new();
    line.insert("level".into(), Value::from("WARN"));
    line.insert("msg".into(), Value::from(msg));
    line.insert("component".into(), Value::from("heapwarden-probes"));
    for (name, value) in fields {
        line.insert((*name).into(), value.clone());
    }
    eprintln!("{}", Value::Object(line));
}
