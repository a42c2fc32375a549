//! The config as TOML before it is typed: reading the file and taking out a section,
//! overrides set by dotted key, the leaf keys of a section's defaults, and the check of
//! each key on its own.

use std::path::Path;

use toml::{Table, Value};

use super::{ConfigError, ConfigErrors, ConfigSection};

/// The table at `section` (dotted; `""`: the whole file) of the TOML file at `path`; an
/// empty one when the file has no such section.
pub fn read_section(path: &Path, section: &str) -> Result<Table, ConfigErrors> {
    let one = |key: &str, msg: String| ConfigErrors(vec![ConfigError::new(key, msg)]);
    let text = std::fs::read_to_string(path)
        .map_err(|e| one("(file)", format!("cannot read {}: {e}", path.display())))?;
    let mut node = text.parse::<Table>().map_err(|e| {
        // One line, as every config error: the position instead of toml's drawing.
        let at = e.span().map_or(0, |span| span.start);
        let line = text.get(..at).unwrap_or(&text).matches('\n').count() + 1;
        one(
            "(file)",
            format!(
                "{} is not valid TOML (line {line}): {}",
                path.display(),
                e.message().trim()
            ),
        )
    })?;
    for (depth, part) in section.split('.').filter(|p| !p.is_empty()).enumerate() {
        node = match node.remove(part) {
            None => return Ok(Table::new()),
            Some(Value::Table(inner)) => inner,
            Some(other) => {
                let key: Vec<&str> = section.split('.').take(depth + 1).collect();
                let key = key.join(".");
                return Err(one(
                    &key,
                    format!("must be a table ([{key}]), not a {}", other.type_str()),
                ));
            }
        };
    }
    Ok(node)
}

/// See [`super::load`].
pub fn parse_override(raw: &str) -> Value {
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    }
}

/// Sets the dotted `key`, making (or replacing with) tables on the way.
pub fn set_path(tree: &mut Table, key: &str, value: Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut node = tree;
    for part in parts {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        let Value::Table(t) = entry else { return };
        node = t;
    }
    node.insert(last.to_string(), value);
}

pub fn collect_keys(
    map_keys: &[&str],
    path: &mut Vec<String>,
    value: &Value,
    out: &mut Vec<String>,
) {
    let dotted = path.join(".");
    match value {
        Value::Table(t) if !map_keys.contains(&dotted.as_str()) => {
            for (k, v) in t {
                path.push(k.clone());
                collect_keys(map_keys, path, v, out);
                path.pop();
            }
        }
        _ => out.push(dotted),
    }
}

/// Type-checks each leaf on its own by deserialising a section that holds only that
/// key; errors name the key relative to the section.
pub fn check_each_key<S: ConfigSection>(
    path: &mut Vec<String>,
    node: &Table,
    known: &[String],
    errors: &mut Vec<ConfigError>,
) {
    for (key, value) in node {
        path.push(key.clone());
        let dotted = path.join(".");
        match value {
            Value::Table(t)
                if !S::MAP_KEYS.contains(&dotted.as_str()) && is_section(known, &dotted) =>
            {
                check_each_key::<S>(path, t, known, errors)
            }
            _ => {
                let mut single = Table::new();
                set_path(&mut single, &dotted, value.clone());
                if let Err(e) = Value::Table(single).try_into::<S>() {
                    errors.push(ConfigError::new(&dotted, e.message().trim().to_string()));
                }
            }
        }
        path.pop();
    }
}

fn is_section(known: &[String], dotted: &str) -> bool {
    let prefix = format!("{dotted}.");
    known.iter().any(|k| k.starts_with(&prefix))
}
