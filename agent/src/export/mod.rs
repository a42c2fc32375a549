//! Profiles to the fleet's store: every heap profile the agent keeps is pushed to Grafana
//! Pyroscope (`pyroscope`), from the store, behind a cursor, so nothing is lost across a
//! sink outage or an agent restart and nothing is retried forever. Uses the layers below
//! it (`profiles`, `supervisor`'s pool view, `config`, `metric_names`); the CLI uses its
//! link builder.
#![forbid(unsafe_code)]

pub mod pyroscope;
