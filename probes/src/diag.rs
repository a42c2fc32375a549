//! The probe's own diagnostics: one JSON object per line on stderr.
//!
//! A library linked into arbitrary apps cannot assume their logger; stderr is captured by
//! the agent for every worker, and JSON lines match the agent's own log format.

use serde_json::{Map, Value};

/// Logs a warning: `msg` is a sentence, `fields` carry the values.
pub fn warn(msg: &str, fields: &[(&str, Value)]) {
    line("WARN", msg, fields);
}

/// Logs an informational line (the native preload's attach report).
pub fn info(msg: &str, fields: &[(&str, Value)]) {
    line("INFO", msg, fields);
}

fn line(level: &str, msg: &str, fields: &[(&str, Value)]) {
    let mut line = Map::new();
    line.insert("level".into(), Value::from(level));
    line.insert("msg".into(), Value::from(msg));
    line.insert("component".into(), Value::from("heapwarden-probes"));
    for (name, value) in fields {
        line.insert((*name).into(), value.clone());
    }
    eprintln!("{}", Value::Object(line));
}
