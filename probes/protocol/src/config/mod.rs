//! The config file's one loader, for the agent's sections and for a worker's own (the
//! demo's `[demo]`, or any user's worker that keeps its settings in the agent's file):
//! one TOML file, kebab-case keys, unknown keys refused (the section's types say
//! `deny_unknown_fields`), durations and sizes as text ("30s" with `humantime_serde`,
//! "512MiB" as a [`Size`]); then
//! `HEAPWARDEN_*` environment variables, then flags, each over the file; each key
//! type-checked on its own, so one run reports every bad key and not just the first serde
//! stops at; then the section's own checks ([`ConfigSection::validate`]). Every error is
//! one line naming its dotted key; a program exits [`EX_CONFIG`] on any.
//!
//! A worker reads its section with [`crate::WorkerContext::config_section`]; a section
//! bounds its durations and numbers with [`bounds`], which also says how the
//! configuration page states them.

pub mod bounds;
mod size;
mod tree;

use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
pub use size::Size;
pub use toml::Table;

/// `EX_USAGE` from sysexits.h: what the agent and its workers exit with on a bad config.
pub const EX_CONFIG: u8 = 64;

/// One section of the config file, typed.
pub trait ConfigSection: Serialize + DeserializeOwned + Default {
    /// Where the section sits in the file: `""` for the whole file (the agent), `"demo"`
    /// for `[demo]`. Every error and every variable is named from it
    /// (`demo.l1-ttl`, `HEAPWARDEN_DEMO_L1_TTL`); the rest of the file is not read.
    const KEY: &'static str;
    /// Tables of the section whose keys are the user's (a map, or another program's
    /// section), not config keys: dotted, relative to the section.
    const MAP_KEYS: &'static [&'static str] = &[];

    /// What one key's type cannot say (bounds, keys that depend on each other); errors
    /// name their whole dotted key.
    fn validate(&self, errors: &mut Vec<ConfigError>);

    /// Rewrites the section as read, overrides included, before it is type-checked.
    fn normalise(_section: &mut Table) {}
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// Dotted kebab-case key, e.g. `pool.restart.factor`; `(file)` when the file itself
    /// cannot be read.
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

/// Every error of one load; displayed one `config error: KEY: MESSAGE` line each.
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

/// `S` from `file` (defaults without one), the variables of `env` that override its keys
/// ([`env_name`]), and `flags` as (dotted key within the section, raw value), in rising
/// precedence. An override is read as a TOML value when it is one (`4`, `true`,
/// `["a", "b"]`) and as a plain string otherwise (`127.0.0.1:8080`, `30s`).
pub fn load<S: ConfigSection>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &[(&str, String)],
) -> Result<S, ConfigErrors> {
    let mut section = match file {
        None => Table::new(),
        Some(path) => tree::read_section(path, S::KEY)?,
    };
    let known = known_keys::<S>();
    let env: std::collections::BTreeMap<String, String> = env.into_iter().collect();
    let mut origin = std::collections::BTreeMap::new();
    for key in &known {
        let name = env_name(&full_key(S::KEY, key));
        if let Some(raw) = env.get(&name) {
            tree::set_path(&mut section, key, tree::parse_override(raw));
            origin.insert(key.clone(), name);
        }
    }
    for (key, raw) in flags {
        tree::set_path(&mut section, key, tree::parse_override(raw));
        origin.insert(
            key.to_string(),
            format!("flag for {}", full_key(S::KEY, key)),
        );
    }
    S::normalise(&mut section);
    let mut errors = Vec::new();
    tree::check_each_key::<S>(&mut Vec::new(), &section, &known, &mut errors);
    for e in &mut errors {
        if let Some(source) = origin.get(&e.key) {
            e.message = format!("{} (set by {source})", e.message);
        }
        e.key = full_key(S::KEY, &e.key);
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let whole = if S::KEY.is_empty() {
        "(config)"
    } else {
        S::KEY
    };
    let parsed: S = toml::Value::Table(section)
        .try_into()
        .map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError::new(whole, e.message().trim())])
        })?;
    parsed.validate(&mut errors);
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The environment variable that overrides a dotted key: `pool.min-uptime` →
/// `HEAPWARDEN_POOL_MIN_UPTIME`, `demo.l1-ttl` → `HEAPWARDEN_DEMO_L1_TTL`.
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

/// Every leaf key of `S`'s defaults, dotted and relative to the section (its
/// [`ConfigSection::MAP_KEYS`] count as leaves).
pub fn known_keys<S: ConfigSection>() -> Vec<String> {
    let defaults = toml::Value::try_from(S::default()).unwrap_or(toml::Value::Table(Table::new()));
    let mut keys = Vec::new();
    tree::collect_keys(S::MAP_KEYS, &mut Vec::new(), &defaults, &mut keys);
    keys
}

/// `key` of the section at `section`, dotted from the file's root.
fn full_key(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

#[cfg(test)]
mod tests;
