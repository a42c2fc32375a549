//! Which probe a worker gets, decided once per pool from `pool.probe` and the command:
//! the extra environment that loads it, and one sentence for the log when a requested
//! probe cannot be attached. [`plan`] is pure (command + config → env) and unit-tested;
//! [`prepare`] adds the one side effect, writing the embedded Node probe to disk.
//!
//! - `off`: nothing; the worker runs as a plain program (procfs figures only).
//! - `auto`: the Node probe when the command runs node ([`node::runs_node`]); otherwise
//!   nothing (a Rust worker linking `heapwarden-probes` still says hello on its own).
//! - `node`: the Node probe whatever the command looks like (a wrapper script that runs
//!   node later).
//! - `native`: the LD_PRELOAD library ([`native::plan`]), for the ELF the command runs
//!   (found by `program`).

pub mod native;
pub mod node;
mod program;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::types::ProbeKind;

/// Everything the decision depends on.
#[derive(Debug, Clone)]
pub struct AttachInput<'a> {
    pub probe: ProbeKind,
    pub argv: &'a [OsString],
    /// `pool.env`: a `NODE_OPTIONS` there is the user's own and is kept.
    pub pool_env: &'a BTreeMap<String, String>,
    /// `NODE_OPTIONS` from the agent's own environment (kept when `pool.env` has none).
    pub inherited_node_options: Option<&'a str>,
    /// Where the Node probe file is; `None` when it could not be written.
    pub node_probe: Option<&'a Path>,
    /// Port of the shared listening socket: the Node probe turns the app's
    /// `listen(port)` on it into a listen on the inherited fd.
    pub listen_port: Option<u16>,
    /// What the native probe needs, found by [`prepare`] when `probe = "native"`.
    pub native: Option<native::NativeSetup<'a>>,
}

/// Which probe was attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    Node,
    Native,
}

impl Attached {
    pub fn as_str(self) -> &'static str {
        match self {
            Attached::Node => "node",
            Attached::Native => "native",
        }
    }
}

/// The decision: env to add to every worker of the pool, and why not, when not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachPlan {
    pub attached: Option<Attached>,
    /// Set on top of `pool.env` (each key replaces the pool's own value).
    pub env: Vec<(String, String)>,
    /// A requested probe that cannot be attached: log this once, run plain.
    pub not_attached: Option<String>,
}

impl AttachPlan {
    fn none() -> AttachPlan {
        AttachPlan::default()
    }

    fn failed(why: String) -> AttachPlan {
        AttachPlan {
            not_attached: Some(why),
            ..AttachPlan::default()
        }
    }
}

/// The pure decision.
pub fn plan(input: &AttachInput<'_>) -> AttachPlan {
    let result = match input.probe {
        ProbeKind::Off => return AttachPlan::none(),
        ProbeKind::Auto if !node::runs_node(input.argv) => return AttachPlan::none(),
        ProbeKind::Auto | ProbeKind::Node => node::plan(input).map(|env| (Attached::Node, env)),
        ProbeKind::Native => native::plan(input).map(|env| (Attached::Native, env)),
    };
    match result {
        Ok((attached, env)) => AttachPlan {
            attached: Some(attached),
            env,
            not_attached: None,
        },
        Err(why) => AttachPlan::failed(why),
    }
}

/// [`plan`], after writing the embedded Node probe under `state_dir` when it is needed,
/// or locating the native library next to the agent when that is.
pub fn prepare(
    probe: ProbeKind,
    argv: &[OsString],
    pool_env: &BTreeMap<String, String>,
    state_dir: &Path,
    cwd: Option<&Path>,
    listen_port: Option<u16>,
) -> AttachPlan {
    let wants_node = match probe {
        ProbeKind::Node => true,
        ProbeKind::Auto => node::runs_node(argv),
        ProbeKind::Native | ProbeKind::Off => false,
    };
    let inherited = std::env::var("NODE_OPTIONS").ok();
    let mut write_error = None;
    let written: Option<PathBuf> = if wants_node {
        node::install_probe(state_dir)
            .map_err(|e| write_error = Some(e))
            .ok()
    } else {
        None
    };
    let agent_exe = std::env::current_exe().unwrap_or_default();
    let cwd = cwd
        .map(Path::to_path_buf)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    let library = (probe == ProbeKind::Native)
        .then(|| native::locate(&native::search_path(&agent_exe)))
        .flatten();
    let mut decided = plan(&AttachInput {
        probe,
        argv,
        pool_env,
        inherited_node_options: inherited.as_deref(),
        node_probe: written.as_deref(),
        listen_port,
        native: (probe == ProbeKind::Native).then(|| native::NativeSetup {
            agent_exe: &agent_exe,
            library: library.as_ref(),
            cwd: &cwd,
            agent_path_var: std::env::var_os("PATH"),
        }),
    });
    if let (Some(e), Some(why)) = (write_error, decided.not_attached.as_mut()) {
        why.push_str(&format!(": {e}"));
    }
    decided
}

#[cfg(test)]
mod native_tests;
#[cfg(test)]
mod tests;
