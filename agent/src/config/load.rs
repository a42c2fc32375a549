//! The agent's config as a section of the shared loader (`heapwarden_protocol::config`,
//! which the demo's `[demo]` uses too): the whole file, with the agent's map tables and
//! the two keys whose bare numbers are taken as text.

use std::path::Path;

use heapwarden_protocol::config::{self as shared, ConfigSection, Table};
pub use heapwarden_protocol::config::{ConfigError, ConfigErrors, EX_CONFIG, env_name};
use toml::Value;

use super::sections::Config;

impl ConfigSection for Config {
    const KEY: &'static str = "";
    /// Tables that hold user-chosen keys rather than config keys, or another program's
    /// section (`demo`: `heapwarden-demo` checks it, see `supervisor::program`).
    const MAP_KEYS: &'static [&'static str] = &["pool.env", "demo", "export.pyroscope.labels"];

    fn validate(&self, errors: &mut Vec<ConfigError>) {
        self.check(errors);
    }

    fn normalise(tree: &mut Table) {
        stringify_env(tree);
        stringify_username(tree);
    }
}

/// Builds the config from an optional file, `HEAPWARDEN_*` variables from `env`, and CLI
/// `flags` given as (dotted key, raw value), in rising precedence.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &[(&str, String)],
) -> Result<Config, ConfigErrors> {
    shared::load(file, env, flags)
}

/// Every leaf key of the default config, dotted (maps such as `pool.env` count as leaves).
#[cfg(test)]
pub fn known_keys() -> Vec<String> {
    shared::known_keys::<Config>()
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
