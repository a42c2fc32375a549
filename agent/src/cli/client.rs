//! The on-call verbs (`ps`, `profiles`, `pull`, `dump`, `diff`, `restart`, `reload`): thin
//! clients of a running agent's admin API. The agent's address and token come from the
//! same config (`-c`, `HEAPWARDEN_ADMIN_LISTEN`, `HEAPWARDEN_ADMIN_TOKEN_FILE`). Every
//! failure is one clear line on stderr and a non-zero exit.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use serde::de::DeserializeOwned;

use super::ConfigArgs;
use super::table::{print_diff, print_profiles, print_workers};
use crate::api_types::{DiffReport, ErrorReply, ProfileMeta, ReloadReply, RestartReply, WorkerRow};
use crate::config::Config;

/// A manual profile waits for the worker's dump and the conversion.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Subcommand)]
pub enum Verb {
    /// List the workers: slot, pid, state, uptime, restarts, memory, growth, time to limit.
    Ps(Common),
    /// List the stored heap profiles.
    Profiles(Common),
    /// Download a heap profile (pprof .pb.gz).
    Pull {
        /// Profile id (see `heapwarden profiles`).
        id: String,
        /// Output file (default: heapwarden-<id>.pb.gz in the current directory).
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// Write a heap profile of a worker now (or, for a Node worker, a heap snapshot).
    Dump {
        slot: String,
        /// A full V8 heap snapshot instead (Node workers; blocks the worker meanwhile).
        #[arg(long)]
        snapshot: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Show the top growing allocation sites of a profile against a base.
    Diff {
        id: String,
        /// Base profile id (default: the newest baseline of the same worker).
        #[arg(long)]
        base: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Replace a worker make-before-break.
    Restart {
        slot: String,
        #[command(flatten)]
        common: Common,
    },
    /// Replace every worker, one at a time.
    Reload(Common),
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn main(verb: Verb) -> ExitCode {
    match run(verb) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("heapwarden: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(verb: Verb) -> anyhow::Result<()> {
    match verb {
        Verb::Ps(c) => {
            let rows = Client::new(&c)?.get_json("/workers")?;
            print_out(&c, &rows, |rows: &Vec<WorkerRow>| print_workers(rows))
        }
        Verb::Profiles(c) => {
            let rows = Client::new(&c)?.get_json("/profiles")?;
            print_out(&c, &rows, |rows: &Vec<ProfileMeta>| print_profiles(rows))
        }
        Verb::Pull { id, output, common } => {
            let bytes = Client::new(&common)?.get_bytes(&format!("/profiles/{}", segment(&id)))?;
            // pprof files are gzip; anything else the store keeps is a V8 heap snapshot.
            let ext = if bytes.starts_with(&[0x1f, 0x8b]) {
                "pb.gz"
            } else {
                "heapsnapshot"
            };
            let path = output.unwrap_or_else(|| PathBuf::from(format!("heapwarden-{id}.{ext}")));
            std::fs::write(&path, &bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
            if common.json {
                println!(
                    "{}",
                    serde_json::json!({ "id": id, "path": path, "bytes": bytes.len() })
                );
            } else {
                println!(
                    "wrote {} ({} bytes); open it with: go tool pprof -top {}",
                    path.display(),
                    bytes.len(),
                    path.display()
                );
            }
            Ok(())
        }
        Verb::Dump {
            slot,
            snapshot,
            common,
        } => {
            let query = if snapshot { "?kind=snapshot" } else { "" };
            let meta = Client::new(&common)?
                .post_json(&format!("/workers/{}/profile{query}", segment(&slot)))?;
            print_out(&common, &meta, |m: &ProfileMeta| {
                println!(
                    "{} {} of worker {} written ({} bytes); pull it with: heapwarden pull {}",
                    m.kind.as_str(),
                    m.id,
                    m.slot,
                    m.bytes,
                    m.id
                );
            })
        }
        Verb::Diff { id, base, common } => {
            let mut path = format!("/profiles/{}/diff", segment(&id));
            if let Some(base) = base {
                path.push_str(&format!("?base={}", segment(&base)));
            }
            let report = Client::new(&common)?.get_json(&path)?;
            print_out(&common, &report, |report: &DiffReport| print_diff(report))
        }
        Verb::Restart { slot, common } => {
            let reply =
                Client::new(&common)?.post_json(&format!("/workers/{}/restart", segment(&slot)))?;
            print_out(&common, &reply, |reply: &RestartReply| {
                println!(
                    "worker {} (pid {}) is being replaced (make-before-break)",
                    reply.replacing, reply.pid
                )
            })
        }
        Verb::Reload(common) => {
            let reply = Client::new(&common)?.post_json("/reload")?;
            // A refused file is an error (the agent's 422 names every key).
            print_out(&common, &reply, |reply: &ReloadReply| {
                println!("the config was reloaded; every worker is being replaced, one at a time");
                for key in &reply.needs_restart {
                    println!("{key} changed but needs a restart to take effect");
                }
            })
        }
    }
}

/// `--json` prints the API's JSON as it came; a table reads it as the API's typed reply
/// (`api_types`), the same type the handler wrote.
fn print_out<T: DeserializeOwned>(
    common: &Common,
    value: &Value,
    table: impl Fn(&T),
) -> anyhow::Result<()> {
    if common.json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        let typed = T::deserialize(value).context("the agent's answer has an unexpected shape")?;
        table(&typed);
    }
    Ok(())
}

/// Keeps user input inside one path segment (UTF-8 percent-encoded); the agent
/// validates the rest.
fn segment(raw: &str) -> String {
    percent_encoding::utf8_percent_encode(raw, percent_encoding::NON_ALPHANUMERIC).to_string()
}

struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(common: &Common) -> anyhow::Result<Client> {
        let config = super::load_config(&common.config)
            .map_err(|_| anyhow!("the config is invalid (see above)"))?;
        let token = read_token(&config)?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Client {
            base: format!("http://{}/api/v1", config.admin.listen),
            token,
            agent,
        })
    }

    fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let bytes = self.get_bytes(path)?;
        serde_json::from_slice(&bytes).context("the agent sent invalid JSON")
    }

    fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.read(response)
    }

    fn post_json(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_empty();
        let bytes = self.read(response)?;
        serde_json::from_slice(&bytes).context("the agent sent invalid JSON")
    }

    fn read(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Vec<u8>> {
        let mut response =
            response.map_err(|e| anyhow!("cannot reach the agent at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .map_err(|e| anyhow!("reading the agent's answer failed: {e}"))?;
        if status == 401 {
            bail!("the agent refused the admin token (401): check admin.token-file");
        }
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<ErrorReply>(&bytes)
                .map(|reply| reply.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{message} (HTTP {status})");
        }
        Ok(bytes)
    }
}

fn read_token(config: &Config) -> anyhow::Result<String> {
    let path = if config.admin.token_file.as_os_str().is_empty() {
        config.state_dir.join("admin-token")
    } else {
        config.admin.token_file.clone()
    };
    let token = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the admin token {} (set -c or HEAPWARDEN_ADMIN_TOKEN_FILE)",
            path.display()
        )
    })?;
    Ok(token.trim().to_string())
}
