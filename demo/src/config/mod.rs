//! The demo's configuration: the `[demo]` section of the config file it shares with the
//! agent (the agent treats that section as opaque and asks `heapwarden-demo check-config`
//! to check it), overridden by `HEAPWARDEN_DEMO_*` variables. It is read by the agent's
//! own loader, which any user's worker can use for its section too
//! (`WorkerContext::config_section`): each key type-checked on its own so that one run
//! reports every bad key under its dotted name (`demo.l1-ttl`) and the variable that set
//! it. Every other section belongs to the agent and is not read here.

mod section;

pub use heapwarden_probes::config::{ConfigError, EX_CONFIG};
pub use section::DemoConfig;

#[cfg(test)]
mod tests;
