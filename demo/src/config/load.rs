//! Loading `[demo]`: file → `HEAPWARDEN_DEMO_*` overrides → per-key type check →
//! whole-section validation, with every error reported under its dotted key
//! (`demo.l1-ttl`) and the variable that set it, in the agent's format.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use toml::{Table, Value};

use super::section::DemoConfig;

/// `EX_USAGE` from sysexits.h, as the agent exits on a bad config.
pub const EX_CONFIG: u8 = 64;
const SECTION: &str = "demo";

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// Dotted kebab-case key, e.g. `demo.l1-ttl`.
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

/// The `[demo]` section of `file` (defaults without one) with the overrides found in `env`.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<DemoConfig, ConfigErrors> {
    let mut section = match file {
        None => Table::new(),
        Some(path) => read_section(path)?,
    };
    let env: BTreeMap<String, String> = env.into_iter().collect();
    let mut origin = BTreeMap::new();
    for key in known_keys() {
        let name = env_name(&key);
        if let Some(raw) = env.get(&name) {
            section.insert(key.clone(), parse_override(raw));
            origin.insert(key, name);
        }
    }
    let mut errors = Vec::new();
    for (key, value) in &section {
        let single = Table::from_iter([(key.clone(), value.clone())]);
        if let Err(e) = Value::Table(single).try_into::<DemoConfig>() {
            let mut message = e.message().trim().to_string();
            if let Some(var) = origin.get(key) {
                message = format!("{message} (set by {var})");
            }
            errors.push(ConfigError::new(&format!("{SECTION}.{key}"), message));
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let config: DemoConfig = Value::Table(section)
        .try_into()
        .map_err(|e: toml::de::Error| {
            ConfigErrors(vec![ConfigError::new(SECTION, e.message().trim())])
        })?;
    config.validate(&mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The variable that overrides a `[demo]` key: `l1-ttl` → `HEAPWARDEN_DEMO_L1_TTL`.
pub fn env_name(key: &str) -> String {
    format!(
        "HEAPWARDEN_{}_{}",
        SECTION.to_ascii_uppercase(),
        key.to_ascii_uppercase().replace('-', "_")
    )
}

/// The keys of `[demo]`, as written in the file.
pub fn known_keys() -> Vec<String> {
    match Value::try_from(DemoConfig::default()) {
        Ok(Value::Table(defaults)) => defaults.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn read_section(path: &Path) -> Result<Table, ConfigErrors> {
    let one = |key: &str, msg: String| ConfigErrors(vec![ConfigError::new(key, msg)]);
    let text = std::fs::read_to_string(path)
        .map_err(|e| one("(file)", format!("cannot read {}: {e}", path.display())))?;
    let mut file = text.parse::<Table>().map_err(|e| {
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
    match file.remove(SECTION) {
        None => Ok(Table::new()),
        Some(Value::Table(section)) => Ok(section),
        Some(other) => Err(one(
            SECTION,
            format!("must be a table ([demo]), not a {}", other.type_str()),
        )),
    }
}

/// As the agent reads overrides: a TOML value when the text is one (`4`, `true`,
/// `["a"]`), else the text as a string (`60s`, `redis://…`).
fn parse_override(raw: &str) -> Value {
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.to_string())),
        Err(_) => Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests;
