//! The command line, declared with clap: roles, on-call verbs, hidden helper modes.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "heapwarden",
    version,
    about = "Memory-leak watchdog for Linux services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: supervise the worker pool, sample, profile, serve metrics.
    Run(ConfigArgs),
    /// Validate a config file (the [demo] section through heapwarden-demo); prints every
    /// error with its key, exits 64 if any.
    CheckConfig(ConfigArgs),
    #[command(flatten)]
    Client(super::client::Verb),
    /// Internal: convert a raw jemalloc dump to a symbolized pprof profile.
    #[command(name = "__convert-profile", hide = true)]
    ConvertProfile(ConvertArgs),
    /// Internal: summarise a V8 heap snapshot's retainers as JSON (the agent's helper).
    #[command(name = "__summarize-snapshot", hide = true)]
    SummarizeSnapshot(SummarizeArgs),
    /// Internal: write the man pages and shell completions into DIR (for packaging).
    #[command(name = "__package-files", hide = true)]
    PackageFiles { dir: PathBuf },
}

#[derive(Debug, Clone, Args)]
pub struct SummarizeArgs {
    pub file: PathBuf,
    #[arg(long)]
    pub top: usize,
    /// The smallest holder listed.
    #[arg(long)]
    pub min_bytes: u64,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// Config file (TOML). Without one, the embedded defaults apply.
    #[arg(short = 'c', long = "config", env = "HEAPWARDEN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Overrides pool.workers.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Overrides pool.listen (the service address).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Overrides admin.listen.
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Overrides state-dir.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Overrides log.level.
    #[arg(long)]
    pub log_level: Option<String>,
}

impl ConfigArgs {
    /// The flags as (dotted key, raw value) overrides, applied after the environment.
    pub fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(n) = self.workers {
            out.push(("pool.workers", n.to_string()));
        }
        if let Some(a) = self.listen {
            out.push(("pool.listen", format!("\"{a}\"")));
        }
        if let Some(a) = self.admin_listen {
            out.push(("admin.listen", format!("\"{a}\"")));
        }
        if let Some(d) = &self.state_dir {
            out.push(("state-dir", d.display().to_string()));
        }
        if let Some(l) = &self.log_level {
            out.push(("log.level", l.clone()));
        }
        out
    }
}

#[derive(Debug, Clone, Args)]
pub struct ConvertArgs {
    /// Raw jemalloc heap dump (prof.dump output).
    #[arg(long)]
    pub raw: PathBuf,
    /// Where to write the pprof profile (.pb.gz).
    #[arg(long)]
    pub out: PathBuf,
    /// The worker's pid, when still alive (symbolization can use /proc/PID).
    #[arg(long)]
    pub pid: Option<u32>,
    /// The worker's executable, for symbolization.
    #[arg(long)]
    pub exe: Option<PathBuf>,
    /// What `--raw` holds: jemalloc (prof.dump) | v8-sampling (the Node probe's profile).
    #[arg(long, default_value = "jemalloc")]
    pub format: String,
}
