//! Loading: file → environment overrides → CLI flags → per-key type check → whole-config
//! validation. Each key is type-checked on its own so that one run reports every bad
//! key, not just the first one serde stops at.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use toml::{Table, Value};

use super::sections::Config;

/// `EX_USAGE` from sysexits.h: what `check-config` and `run` exit with on a bad config.
pub const EX_CONFIG: i32 = 64;

/// Tables that hold user-chosen keys rather than config keys, or another program's
/// section (`demo`: `heapwarden-demo` checks it, see `supervisor::program`).
const MAP_KEYS: &[&str] = &["pool.env", "demo", "export.pyroscope.labels"];

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// Dotted kebab-case key, e.g. `pool.restart.factor`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "config error: {}: {}", e.key, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Builds the config from an optional file, `HEAPWARDEN_*` variables from `env`, and CLI
/// `flags` given as (dotted key, raw value), in rising precedence.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &[(&str, String)],
) -> Result<Config, ConfigErrors> {
    let mut tree = match file {
        None => Table::new(),
        Some(path) => read_file(path)?,
    };
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    let known = known_keys();
    let env: BTreeMap<String, String> = env.into_iter().collect();
    for key in &known {
        if let Some(raw) = env.get(&env_name(key)) {
            set_path(&mut tree, key, parse_override(raw));
            origin.insert(key.clone(), env_name(key));
        }
    }
    for (key, raw) in flags {
        set_path(&mut tree, key, parse_override(raw));
        origin.insert(key.to_string(), format!("flag for {key}"));
    }

    stringify_env(&mut tree);
    stringify_username(&mut tree);
    let mut errors = Vec::new();
    check_each_key(&mut Vec::new(), &tree, &known, &mut errors);
    for e in &mut errors {
        if let Some(source) = origin.get(&e.key) {
            e.message = format!("{} (set by {source})", e.message);
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let config: Config = Value::Table(tree)
        .try_into()
        .map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError::new("(config)", e.message())])
        })?;
    config.validate(&mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// `[pool.env]` values are strings, but PM2's `env` takes numbers and booleans and its
/// users copy them as they are (`PORT = 3000`, `DEBUG = true`): integers and booleans are
/// taken as their string form. Anything else (a float, an array, a table) stays an error
/// naming the key.
fn stringify_env(tree: &mut Table) {
    let Some(Value::Table(pool)) = tree.get_mut("pool") else {
        return;
    };
    let Some(Value::Table(env)) = pool.get_mut("env") else {
        return;
    };
    for (_, value) in env.iter_mut() {
        let text = match &*value {
            Value::Integer(n) => n.to_string(),
            Value::Boolean(b) => b.to_string(),
            _ => continue,
        };
        *value = Value::String(text);
    }
}

/// Grafana Cloud's Pyroscope user is a number, written bare in the file (`username =
/// 123456`) and read as an integer from `HEAPWARDEN_EXPORT_PYROSCOPE_USERNAME` by the
/// override rule: `export.pyroscope.username` takes it as its string form.
fn stringify_username(tree: &mut Table) {
    let Some(Value::Table(export)) = tree.get_mut("export") else {
        return;
    };
    let Some(Value::Table(pyroscope)) = export.get_mut("pyroscope") else {
        return;
    };
    if let Some(value) = pyroscope.get_mut("username")
        && let Value::Integer(n) = *value
    {
        *value = Value::String(n.to_string());
    }
}

/// The environment variable that overrides a dotted key: `pool.min-uptime` →
/// `HEAPWARDEN_POOL_MIN_UPTIME`.
pub fn env_name(key: &str) -> String {
    let body: String = key
        .chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("HEAPWARDEN_{body}")
}

fn read_file(path: &Path) -> Result<Table, ConfigErrors> {
    let one = |msg: String| ConfigErrors(vec![ConfigError::new("(file)", msg)]);
    let text = std::fs::read_to_string(path)
        .map_err(|e| one(format!("cannot read {}: {e}", path.display())))?;
    text.parse::<Table>().map_err(|e| {
        one(format!(
            "{} is not valid TOML: {}",
            path.display(),
            e.to_string().trim()
        ))
    })
}

/// An override is read as a TOML value when it is one (`4`, `true`, `["a", "b"]`) and as
/// a plain string otherwise (`127.0.0.1:8080`, `30s`).
fn parse_override(raw: &str) -> Value {
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    }
}

fn set_path(tree: &mut Table, key: &str, value: Value) {
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

/// Every leaf key of the default config, dotted (maps such as `pool.env` count as leaves).
pub fn known_keys() -> Vec<String> {
    let defaults = Value::try_from(Config::default()).unwrap_or(Value::Table(Table::new()));
    let mut keys = Vec::new();
    collect_keys(&mut Vec::new(), &defaults, &mut keys);
    keys
}

fn collect_keys(path: &mut Vec<String>, value: &Value, out: &mut Vec<String>) {
    let dotted = path.join(".");
    match value {
        Value::Table(t) if !MAP_KEYS.contains(&dotted.as_str()) => {
            for (k, v) in t {
                path.push(k.clone());
                collect_keys(path, v, out);
                path.pop();
            }
        }
        _ => out.push(dotted),
    }
}

/// Type-checks each leaf on its own by deserialising a config that holds only that key.
fn check_each_key(
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
                if !MAP_KEYS.contains(&dotted.as_str()) && is_section(known, &dotted) =>
            {
                check_each_key(path, t, known, errors)
            }
            _ => {
                let mut single = Table::new();
                set_path(&mut single, &dotted, value.clone());
                if let Err(e) = Value::Table(single).try_into::<Config>() {
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
