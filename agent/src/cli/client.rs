//! The on-call verbs (`ps`, `profiles`, `pull`, `dump`, `diff`, `restart`, `reload`):
//! thin clients of a running agent's admin API (being written).

use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Clone, Subcommand)]
pub enum Verb {
    /// List the workers: slot, pid, state, uptime, restarts, memory, growth.
    Ps,
}

pub fn main(_verb: Verb) -> ExitCode {
    eprintln!("heapwarden: not implemented yet");
    ExitCode::FAILURE
}
