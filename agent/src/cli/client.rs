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

use super::ConfigArgs;
use super::table::{print_diff, print_profiles, print_workers};
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
    /// Reload the config: the agent validates it (a refused file prints every error and
    /// exits 1, the running config stays), then replaces every worker, one at a time.
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
            print_out(&c, &rows, print_workers)
        }
        Verb::Profiles(c) => {
            let rows = Client::new(&c)?.get_json("/profiles")?;
            print_out(&c, &rows, print_profiles)
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
            print_out(&common, &meta, |m| {
                println!(
                    "{} {} of worker {} written ({} bytes); pull it with: heapwarden pull {}",
                    m["kind"].as_str().unwrap_or("profile"),
                    m["id"],
                    m["slot"],
                    m["bytes"],
                    m["id"]
                );
            })
        }
        Verb::Diff { id, base, common } => {
            let mut path = format!("/profiles/{}/diff", segment(&id));
            if let Some(base) = base {
                path.push_str(&format!("?base={}", segment(&base)));
            }
            let report = Client::new(&common)?.get_json(&path)?;
            print_out(&common, &report, print_diff)
        }
        Verb::Restart { slot, common } => {
            let reply =
                Client::new(&common)?.post_json(&format!("/workers/{}/restart", segment(&slot)))?;
            print_out(&common, &reply, |_| {
                println!("worker {slot} is being replaced (make-before-break)")
            })
        }
        Verb::Reload(common) => {
            let reply = Client::for_reload(&common)?.post_json("/reload")?;
            // A refused file is an error (the agent's 422 names every key).
            print_out(&common, &reply, |reply| {
                println!("the config was reloaded; every worker is being replaced, one at a time");
                for key in reply["needs_restart"].as_array().into_iter().flatten() {
                    println!(
                        "{} changed but needs a restart to take effect",
                        key.as_str().unwrap_or("?")
                    );
                }
            })
        }
    }
}

fn print_out(common: &Common, value: &Value, table: impl Fn(&Value)) -> anyhow::Result<()> {
    if common.json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        table(value);
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
        Client::from_config(&config)
    }

    /// A reload must reach the agent even when the new file does not load (its errors
    /// are printed above): the agent then refuses it itself, logs why at `error`, and
    /// answers 422, so `systemctl reload` (which runs this) fails honestly.
    fn for_reload(common: &Common) -> anyhow::Result<Client> {
        match super::load_config(&common.config) {
            Ok(config) => Client::from_config(&config),
            Err(_) => {
                let config = running_agent_config(&common.config)
                    .ok_or_else(|| anyhow!("the config is invalid (see above)"))?;
                Client::from_config(&config)
            }
        }
    }

    fn from_config(config: &Config) -> anyhow::Result<Client> {
        let token = read_token(config)?;
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
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{message} (HTTP {status})");
        }
        Ok(bytes)
    }
}

/// Where the running agent answers, for a file that does not load: `state-dir` and
/// `[admin]` only change on a restart, so they are read leniently from the file (a
/// mistake elsewhere in it, even a syntax error, does not matter here), else from the
/// defaults, the environment and the flags.
fn running_agent_config(args: &ConfigArgs) -> Option<Config> {
    let text = args
        .config
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .unwrap_or_default();
    let mut flags = restart_only_keys(&text);
    flags.extend(args.overrides());
    let lenient = crate::config::ConfigSource { file: None, flags };
    let plain = crate::config::ConfigSource {
        file: None,
        flags: args.overrides(),
    };
    lenient.load().or_else(|_| plain.load()).ok()
}

/// `state-dir`, `admin.listen` and `admin.token-file` as overrides, read line by line
/// so that a broken line elsewhere in the file does not hide them.
fn restart_only_keys(text: &str) -> Vec<(&'static str, String)> {
    let mut section = String::new();
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(header) = line.strip_prefix('[') {
            section = header.split(']').next().unwrap_or("").trim().to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = match (section.as_str(), key.trim()) {
            ("", "state-dir") => "state-dir",
            ("admin", "listen") => "admin.listen",
            ("admin", "token-file") => "admin.token-file",
            _ => continue,
        };
        let parsed = format!("v = {}", value.trim()).parse::<toml::Table>();
        if let Some(value) = parsed
            .ok()
            .and_then(|t| t.get("v")?.as_str().map(String::from))
        {
            found.push((key, toml::Value::from(value).to_string()));
        }
    }
    found
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

#[cfg(test)]
mod tests {
    use super::restart_only_keys;

    #[test]
    fn restart_only_keys_survive_a_broken_file() {
        let text = "state-dir = \"/var/lib/heapwarden/a\"\n[pool]\nworkers = = 2\nlisten = \"x\"\n\
                    [admin] # the API\nlisten = \"127.0.0.1:9465\" # port\ntoken-file = 3\n";
        assert_eq!(
            restart_only_keys(text),
            vec![
                ("state-dir", "\"/var/lib/heapwarden/a\"".to_string()),
                ("admin.listen", "\"127.0.0.1:9465\"".to_string()),
            ]
        );
        assert!(restart_only_keys("[admin]\nlisten = \"unterminated\n").is_empty());
    }
}
