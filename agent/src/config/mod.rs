//! The agent's configuration: one TOML file (kebab-case keys, unknown keys refused),
//! overridden by `HEAPWARDEN_*` environment variables and then by CLI flags, and
//! validated as a whole so that every mistake is reported at once with its key.

mod load;
mod sections;
pub mod types;

pub use load::{ConfigError, ConfigErrors, EX_CONFIG, env_name, load};
pub use sections::*;

#[cfg(test)]
mod tests;
