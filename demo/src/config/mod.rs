//! The demo's configuration: the `[demo]` section of the config file it shares with the
//! agent (the agent treats that section as opaque and asks `heapwarden-demo check-config`
//! to check it), overridden by `HEAPWARDEN_DEMO_*` variables, each key type-checked on
//! its own so that one run reports every bad key. Every other section belongs to the
//! agent and is ignored here.

mod load;
mod section;

pub use load::{ConfigError, EX_CONFIG, load};
pub use section::DemoConfig;
