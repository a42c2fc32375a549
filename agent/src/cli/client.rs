//! The on-call verbs (`ps`, `profiles`, `pull`, `dump`, `diff`, `restart`, `reload`): thin
//! clients of a running agent's admin API. The agent's address and token come from the
//! same config (`-c`, `HEAPWARDEN_ADMIN_LISTEN`, `HEAPWARDEN_ADMIN_TOKEN_FILE`). Every
//! failure is one clear line on stderr and a non-zero exit.

use super::out::outln;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::table::{print_diff, print_profiles, print_workers};
use super::{ConfigArgs, discover};
use crate::api_types::{
    DiffReport, ErrorReply, ProfileMeta, ReloadReply, RestartReply, RetainersDiff, WorkerRow,
};
use crate::config::Config;

/// A manual profile waits for the worker's dump and the conversion.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Subcommand)]
pub enum Verb {
    /// List the workers: slot, pid, state, uptime, restarts, memory, growth, time to limit.
    /// A state ending in `!` (`ready!`): the slot's leak-restart budget is spent; it
    /// serves, but a leak no longer replaces it.
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
    /// Show what grew in a profile against a base: `diff LEAK` (against the worker's
    /// baseline), `diff BASE LEAK` (as `go tool pprof -base BASE LEAK`), or `diff LEAK
    /// --base BASE`. Node profiles are grouped by the first application frame.
    Diff {
        /// The profile to explain (or, with a second id, the base).
        id: String,
        /// With two ids: the profile to explain, the first one being its base.
        leak: Option<String>,
        /// Base profile id (default: the newest baseline of the same worker).
        #[arg(long, conflicts_with = "leak")]
        base: Option<String>,
        /// Write the difference as a differential flame graph (SVG: red grew, blue shrank).
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
        /// Group by allocation site (the leaf function that allocated) instead of the
        /// first application frame.
        #[arg(long)]
        sites: bool,
        /// For heap snapshots (Node): the holders whose held memory grew most since the
        /// base snapshot (default: the same worker's warm-up snapshot, else its previous
        /// one), summarised by the agent's helper process, out of the worker.
        #[arg(long, conflicts_with = "sites")]
        retainers: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Who holds the memory in a V8 heap snapshot pulled with `heapwarden pull` (a
    /// `heapwarden dump SLOT --snapshot`): the objects holding the most, each with its
    /// retaining path. Runs here, out of the worker; needs no agent.
    Retainers {
        /// The `.heapsnapshot` file.
        file: PathBuf,
        /// Holders to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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
            let rows: Vec<WorkerRow> = Client::new(&c)?.get_json("/workers")?;
            print_out(&c, &rows, |rows| print_workers(rows))
        }
        Verb::Profiles(c) => {
            let rows: Vec<ProfileMeta> = Client::new(&c)?.get_json("/profiles")?;
            print_out(&c, &rows, |rows| print_profiles(rows))
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
                outln!(
                    "{}",
                    serde_json::json!({ "id": id, "path": path, "bytes": bytes.len() })
                );
            } else {
                if ext == "heapsnapshot" {
                    outln!(
                        "wrote {} ({} bytes); open it in Chrome DevTools: Memory → Load",
                        path.display(),
                        bytes.len()
                    );
                } else {
                    outln!(
                        "wrote {} ({} bytes); open it with: go tool pprof -top {} \
                         (-http=:8081 for graphs needs graphviz)",
                        path.display(),
                        bytes.len(),
                        path.display()
                    );
                }
            }
            Ok(())
        }
        Verb::Dump {
            slot,
            snapshot,
            common,
        } => {
            let query = if snapshot { "?kind=snapshot" } else { "" };
            let meta: ProfileMeta = Client::new(&common)?
                .post_json(&format!("/workers/{}/profile{query}", segment(&slot)))?;
            print_out(&common, &meta, |m| {
                // A pre-fork worker's profile is taken in one of its children: say whose.
                let process = match m.child_of {
                    Some(worker) => format!("pid {}, a forked child of {worker}", m.pid),
                    None => format!("pid {}", m.pid),
                };
                outln!(
                    "{} {} of worker {} ({process}) written ({} bytes); pull it with: heapwarden pull {}",
                    m.kind.as_str(),
                    m.id,
                    m.slot,
                    m.bytes,
                    m.id
                );
            })
        }
        Verb::Diff {
            id,
            leak,
            base,
            svg,
            sites,
            retainers,
            common,
        } => {
            let (id, base) = match leak {
                Some(leak) => (leak, Some(id)),
                None => (id, base),
            };
            if retainers {
                return diff_retainers(&common, &id, base.as_deref());
            }
            let mut path = format!("/profiles/{}/diff", segment(&id));
            if let Some(base) = base {
                path.push_str(&format!("?base={}", segment(&base)));
            }
            let Some(file) = svg else {
                let client = Client::new(&common)?;
                let report: DiffReport = client.get_json(&path)?;
                let pyroscope_link = diff_link(&common, &client, report.profile_id)?;
                let shown = DiffShown {
                    report,
                    pyroscope_link,
                };
                return print_out(&common, &shown, |r| {
                    print_diff(&r.report, sites);
                    if let Some(link) = &r.pyroscope_link {
                        outln!("in Pyroscope: {link}");
                    }
                });
            };
            let sep = if path.contains('?') { '&' } else { '?' };
            let bytes = Client::new(&common)?.get_bytes(&format!("{path}{sep}format=svg"))?;
            std::fs::write(&file, &bytes)
                .with_context(|| format!("cannot write {}", file.display()))?;
            let written = serde_json::json!({ "id": id, "path": file, "bytes": bytes.len() });
            print_out(&common, &written, |_| {
                outln!(
                    "wrote {} ({} bytes): open it in a browser (red grew, blue shrank)",
                    file.display(),
                    bytes.len()
                )
            })
        }
        Verb::Retainers { file, top, json } => {
            // A holder must hold at least 1 MiB: below that it is noise next to a leak.
            let summary = crate::profiles::retainers::summarize_file(&file, 1 << 20, top)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                outln!(
                    "{}: {:.1} MiB in {} objects; holders (shortest retaining path, holder first):",
                    file.display(),
                    summary.total_bytes as f64 / 1048576.0,
                    summary.objects
                );
                outln!("{:>9} {:>9}  PATH", "HELD_MiB", "OBJECTS");
                for h in &summary.holders {
                    outln!(
                        "{:>9.1} {:>9}  {}",
                        h.held_bytes as f64 / 1048576.0,
                        h.objects,
                        h.path
                    );
                }
            }
            Ok(())
        }
        Verb::Restart { slot, common } => {
            let reply: RestartReply =
                Client::new(&common)?.post_json(&format!("/workers/{}/restart", segment(&slot)))?;
            print_out(&common, &reply, |_| {
                outln!("worker {slot} is being replaced (make-before-break)")
            })
        }
        Verb::Reload(common) => {
            let reply: ReloadReply = Client::for_reload(&common)?.post_json("/reload")?;
            // A refused file is an error (the agent's 422 names every key).
            print_out(&common, &reply, |reply| {
                if !reply.replaces_workers {
                    outln!(
                        "the config was reloaded; only the agent's own settings changed, \
                         so the workers keep running"
                    );
                } else {
                    outln!(
                        "the config was reloaded; every worker is being replaced, one at a time"
                    );
                }
                for key in &reply.needs_restart {
                    outln!("{key} changed but needs a restart to take effect");
                }
            })
        }
    }
}

/// `heapwarden diff` as printed with `--json`: the API's report, and the Pyroscope link
/// when `[export.pyroscope] link-base` is set.
#[derive(Serialize)]
struct DiffShown {
    #[serde(flatten)]
    report: DiffReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    pyroscope_link: Option<String>,
}

/// `diff --retainers`: the agent summarises both snapshots in its helper process
/// (`GET /profiles/{id}/retainers`) and matches holders by retaining path.
fn diff_retainers(common: &Common, id: &str, base: Option<&str>) -> anyhow::Result<()> {
    let mut path = format!("/profiles/{}/retainers", segment(id));
    if let Some(base) = base {
        path.push_str(&format!("?base={}", segment(base)));
    }
    let report: RetainersDiff = Client::new(common)?.get_json(&path)?;
    print_out(common, &report, |r| {
        match r.base_id {
            Some(b) => outln!(
                "snapshot {} minus {} snapshot {b}: holders by growth (shortest retaining path, holder first)",
                r.profile_id,
                r.base_trigger.map(|t| t.as_str()).unwrap_or("an earlier")
            ),
            None => outln!(
                "snapshot {} (no earlier snapshot of that worker: growth is all it holds)",
                r.profile_id
            ),
        }
        outln!(
            "{:>12} {:>9} {:>9}  PATH",
            "GROWTH_MiB",
            "HELD_MiB",
            "OBJECTS"
        );
        for g in &r.holders {
            outln!(
                "{:>12.1} {:>9.1} {:>9}  {}",
                g.delta_bytes as f64 / 1048576.0,
                g.held_bytes as f64 / 1048576.0,
                g.objects,
                g.path
            );
        }
    })
}

/// With `[export.pyroscope] link-base` set, the link to the diffed profile's series in
/// Grafana or the Pyroscope UI (labels as the exporter sets them).
fn diff_link(common: &Common, client: &Client, id: u64) -> anyhow::Result<Option<String>> {
    let config = super::load_config(&common.config)
        .map_err(|_| anyhow!("the config is invalid (see above)"))?;
    let export = &config.export.pyroscope;
    if export.link_base.is_empty() {
        return Ok(None);
    }
    let profiles: Vec<ProfileMeta> = client.get_json("/profiles")?;
    let Some(meta) = profiles.into_iter().find(|p| p.id == id) else {
        return Ok(None);
    };
    let context = crate::export::pyroscope::LabelContext::new(export, &config.pool.env);
    let labels = crate::export::pyroscope::profile_labels(&meta, &context);
    Ok(crate::export::pyroscope::profile_link(
        &export.link_base,
        &labels,
        meta.created_unix_ms,
    ))
}

/// `--json`: the reply as the API's JSON (the same type the handler wrote); else `table`.
fn print_out<T: Serialize>(common: &Common, value: &T, table: impl Fn(&T)) -> anyhow::Result<()> {
    if common.json {
        outln!("{}", serde_json::to_string_pretty(value)?);
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
    /// Where the token was read from and how the agent was found, for a 401.
    token_path: PathBuf,
    found: String,
    agent: ureq::Agent,
}

/// The config of the agent to talk to, and how it was found: `-c`/`HEAPWARDEN_CONFIG`
/// when given; else the running agent's own (rebuilt from its process, see
/// `discover`); else the defaults and `HEAPWARDEN_*` as before.
fn locate(args: &ConfigArgs) -> anyhow::Result<(Config, String)> {
    let load =
        || super::load_config(args).map_err(|_| anyhow!("the config is invalid (see above)"));
    if let Some(file) = &args.config {
        return Ok((load()?, format!("config {}", file.display())));
    }
    let defaults = load()?;
    let explicit_admin = args.admin_listen.or_else(|| {
        std::env::var(crate::config::env_name("admin.listen"))
            .ok()
            .and_then(|a| a.trim_matches('"').parse().ok())
    });
    let agents = discover::running_agents(Path::new("/proc"));
    let default_admin = crate::config::Config::default().admin.listen;
    match discover::pick(agents, explicit_admin, default_admin).map_err(|e| anyhow!(e))? {
        Some(found) => {
            let mut config = found.config;
            // What the caller set explicitly still wins.
            if let Ok(token) = std::env::var(crate::config::env_name("admin.token-file")) {
                config.admin.token_file = PathBuf::from(token);
            }
            let how = match &found.file {
                Some(file) => format!(
                    "the running agent (pid {}, config {})",
                    found.pid,
                    file.display()
                ),
                None => format!("the running agent (pid {}, default config)", found.pid),
            };
            Ok((config, how))
        }
        None => Ok((
            defaults,
            "the default config (no running agent found)".to_owned(),
        )),
    }
}

impl Client {
    fn new(common: &Common) -> anyhow::Result<Client> {
        let (config, found) = locate(&common.config)?;
        Client::from_config(&config, found)
    }

    /// A reload must reach the agent even when the new file does not load (its errors
    /// are printed above): the agent then refuses it itself, logs why at `error`, and
    /// answers 422, so `systemctl reload` (which runs this) fails honestly.
    fn for_reload(common: &Common) -> anyhow::Result<Client> {
        if super::load_config(&common.config).is_ok() {
            return Client::new(common);
        }
        let config = running_agent_config(&common.config)
            .ok_or_else(|| anyhow!("the config is invalid (see above)"))?;
        Client::from_config(&config, "the file's state-dir and [admin] keys".to_owned())
    }

    fn from_config(config: &Config, found: String) -> anyhow::Result<Client> {
        let token_path = token_path(config);
        let token = read_token(&token_path)?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Client {
            base: format!("http://{}/api/v1", config.admin.listen),
            token,
            token_path,
            found,
            agent,
        })
    }

    /// `GET path`, read as the API's reply type for it.
    fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let bytes = self.get_bytes(path)?;
        reply_of(&bytes, "GET", path)
    }

    fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.read(response)
    }

    /// `POST path` (empty body), read as the API's reply type for it.
    fn post_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_empty();
        let bytes = self.read(response)?;
        reply_of(&bytes, "POST", path)
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
            bail!(
                "the agent at {} refused the admin token read from {} (401); found through {}: \
                 pass -c with the agent's config, or set HEAPWARDEN_ADMIN_TOKEN_FILE",
                self.base,
                self.token_path.display(),
                self.found
            );
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

/// A 2xx body as the reply type the handler wrote; an agent of another version may
/// answer differently, which is said as such.
fn reply_of<T: DeserializeOwned>(bytes: &[u8], method: &str, path: &str) -> anyhow::Result<T> {
    serde_json::from_slice(bytes).with_context(|| {
        format!("the agent's answer to {method} /api/v1{path} is not the reply this CLI reads (another heapwarden version?)")
    })
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

fn token_path(config: &Config) -> PathBuf {
    if config.admin.token_file.as_os_str().is_empty() {
        config.state_dir.join("admin-token")
    } else {
        config.admin.token_file.clone()
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the admin token {} (set -c or HEAPWARDEN_ADMIN_TOKEN_FILE)",
            path.display()
        )
    })?;
    Ok(token.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::{reply_of, restart_only_keys};
    use crate::api_types::{RestartReply, WorkerRow};

    /// The CLI reads the handlers' own types: a reply of another shape is one clear error
    /// naming the request, never a table of `-`.
    #[test]
    fn replies_are_read_as_the_api_types() {
        let reply: RestartReply =
            reply_of(br#"{"replacing":1,"worker_id":7,"pid":42}"#, "POST", "/x").expect("reads");
        assert_eq!(reply.worker_id, 7);
        let error = reply_of::<Vec<WorkerRow>>(br#"{"rows":[]}"#, "GET", "/workers")
            .expect_err("another shape");
        let text = format!("{error:#}");
        assert!(
            text.starts_with("the agent's answer to GET /api/v1/workers is not the reply"),
            "{text}"
        );
    }

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
