//! The agent's configuration: one TOML file (kebab-case keys, unknown keys refused),
//! overridden by `HEAPWARDEN_*` environment variables and then by CLI flags, and
//! validated as a whole so that every mistake is reported at once with its key.

pub mod bounds;
mod export;
mod load;
pub mod reload;
mod sections;
pub mod types;
mod warnings;

pub use load::{ConfigError, ConfigErrors, EX_CONFIG, env_name, load};
pub use reload::{ConfigSource, ReloadPlan};
pub use sections::*;
pub use warnings::{ConfigWarning, warnings};

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
