//! Finding the running agent for an on-call verb given neither `-c` nor
//! `HEAPWARDEN_CONFIG`: the config is rebuilt the way the agent built its own, from the
//! agent's command line (`run -c FILE`, flags), its `HEAPWARDEN_*` environment and its
//! working directory, read from `/proc/PID/{cmdline,environ,cwd}`. So `heapwarden ps`
//! answers for an agent started as `heapwarden run -c /etc/heapwarden/heapwarden.toml`
//! (the systemd unit) without repeating the path. Reading another user's environment
//! takes root (or the same user), as reading its admin token does anyway.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use clap::Parser;

use super::args::{Cli, Command};
use crate::config::{Config, ConfigSource};

/// A running agent and the config it runs with, as rebuilt from its process.
#[derive(Debug)]
pub struct RunningAgent {
    pub pid: u32,
    /// The config file it was started with, if any.
    pub file: Option<PathBuf>,
    pub config: Config,
}

/// The agents running on this host whose config this user can rebuild. Processes that
/// vanish or cannot be read while scanning are skipped.
pub fn running_agents(proc_root: &Path) -> Vec<RunningAgent> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Some(agent) = rebuild(&entry.path(), pid) {
            found.push(agent);
        }
    }
    found.sort_by_key(|a| a.pid);
    found
}

/// Picks the agent to talk to: the one serving `admin` when the caller named an address
/// (`HEAPWARDEN_ADMIN_LISTEN`, `--admin-listen`); else the only one, or among several the
/// one on the default address. Still several: an error that lists them, so the caller
/// can pass `-c`.
pub fn pick(
    agents: Vec<RunningAgent>,
    admin: Option<SocketAddr>,
    default_admin: SocketAddr,
) -> Result<Option<RunningAgent>, String> {
    let mut candidates: Vec<RunningAgent> = match admin {
        Some(addr) => agents
            .into_iter()
            .filter(|a| a.config.admin.listen == addr)
            .collect(),
        None if agents.len() > 1
            && agents
                .iter()
                .any(|a| a.config.admin.listen == default_admin) =>
        {
            agents
                .into_iter()
                .filter(|a| a.config.admin.listen == default_admin)
                .collect()
        }
        None => agents,
    };
    match candidates.len() {
        0 => Ok(None),
        1 => Ok(candidates.pop()),
        _ => Err(format!(
            "{} agents are running ({}); name one with -c FILE or HEAPWARDEN_ADMIN_LISTEN",
            candidates.len(),
            candidates
                .iter()
                .map(|a| format!("pid {} admin {}", a.pid, a.config.admin.listen))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn rebuild(dir: &Path, pid: u32) -> Option<RunningAgent> {
    let argv = split_nul(&std::fs::read(dir.join("cmdline")).ok()?);
    let program = Path::new(argv.first()?);
    if program.file_name()? != "heapwarden" {
        return None;
    }
    let Ok(Cli {
        command: Command::Run(args),
    }) = Cli::try_parse_from(&argv)
    else {
        return None;
    };
    let environ: Vec<(String, String)> = split_nul(&std::fs::read(dir.join("environ")).ok()?)
        .into_iter()
        .filter_map(|kv| {
            let kv = kv.into_string().ok()?;
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect();
    let cwd = std::fs::read_link(dir.join("cwd")).ok()?;
    let var = |name: &str| {
        environ
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    // `-c` wins over `HEAPWARDEN_CONFIG`, as clap resolved it in the agent.
    let file = args
        .config
        .clone()
        .or_else(|| var("HEAPWARDEN_CONFIG").map(PathBuf::from))
        .map(|f| cwd.join(f));
    let env: Vec<(String, String)> = environ
        .iter()
        .filter(|(k, _)| k.starts_with("HEAPWARDEN_"))
        .cloned()
        .collect();
    let source = ConfigSource {
        file: file.clone(),
        flags: args.overrides(),
    };
    let mut config = source.load_with_env(env).ok()?;
    // The default state directory is the agent's (its $STATE_DIRECTORY, its $HOME), not
    // this process's.
    if config.state_dir == heapwarden_protocol::default_state_dir() {
        config.state_dir = agent_default_state_dir(&var, is_root(dir));
    }
    for path in [&mut config.state_dir, &mut config.admin.token_file] {
        if !path.as_os_str().is_empty() && path.is_relative() {
            *path = cwd.join(&*path);
        }
    }
    Some(RunningAgent { pid, file, config })
}

/// `heapwarden_protocol::default_state_dir` evaluated with the agent's environment.
fn agent_default_state_dir(var: &dyn Fn(&str) -> Option<String>, root: bool) -> PathBuf {
    if let Some(dir) = var("STATE_DIRECTORY") {
        return PathBuf::from(dir);
    }
    match var("HOME") {
        Some(home) if !root => PathBuf::from(home).join(".local/state/heapwarden"),
        _ => PathBuf::from("/var/lib/heapwarden"),
    }
}

fn is_root(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(true)
}

fn split_nul(bytes: &[u8]) -> Vec<OsString> {
    bytes
        .split(|&b| b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| OsString::from_vec(part.to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_agent(root: &Path, pid: u32, argv: &[&str], env: &[&str], cwd: &Path) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cmdline"), argv.join("\0") + "\0").unwrap();
        std::fs::write(dir.join("environ"), env.join("\0") + "\0").unwrap();
        std::fs::write(dir.join("status"), "Uid:\t1000\t1000\t1000\t1000\n").unwrap();
        std::os::unix::fs::symlink(cwd, dir.join("cwd")).unwrap();
    }

    #[test]
    fn the_config_is_rebuilt_from_the_agents_command_line_environment_and_cwd() {
        let proc_root = tempfile::tempdir().unwrap();
        let etc = tempfile::tempdir().unwrap();
        std::fs::write(
            etc.path().join("heapwarden.toml"),
            "[admin]\nlisten = \"127.0.0.1:19464\"\ntoken-file = \"token\"\n",
        )
        .unwrap();
        fake_agent(
            proc_root.path(),
            41,
            &["/usr/local/bin/heapwarden", "run", "-c", "heapwarden.toml"],
            &["HOME=/home/app", "PATH=/bin"],
            etc.path(),
        );
        // Not agents: another program, and a heapwarden that is not `run`.
        fake_agent(proc_root.path(), 42, &["/bin/sleep", "9"], &[], etc.path());
        fake_agent(proc_root.path(), 43, &["heapwarden", "ps"], &[], etc.path());
        fake_agent(
            proc_root.path(),
            44,
            &["heapwarden", "run"],
            &[
                "STATE_DIRECTORY=/var/lib/heapwarden",
                "HEAPWARDEN_ADMIN_LISTEN=127.0.0.1:29464",
            ],
            etc.path(),
        );
        let agents = running_agents(proc_root.path());
        assert_eq!(agents.iter().map(|a| a.pid).collect::<Vec<_>>(), [41, 44]);
        let first = &agents[0];
        assert_eq!(first.file, Some(etc.path().join("heapwarden.toml")));
        assert_eq!(first.config.admin.listen.port(), 19464);
        assert_eq!(first.config.admin.token_file, etc.path().join("token"));
        assert_eq!(
            first.config.state_dir,
            Path::new("/home/app/.local/state/heapwarden")
        );
        assert_eq!(agents[1].config.admin.listen.port(), 29464);
        assert_eq!(agents[1].config.state_dir, Path::new("/var/lib/heapwarden"));

        let default: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let err = pick(running_agents(proc_root.path()), None, default).unwrap_err();
        assert!(err.contains("2 agents are running"), "{err}");
        let addr: SocketAddr = "127.0.0.1:29464".parse().unwrap();
        let picked = pick(running_agents(proc_root.path()), Some(addr), default).unwrap();
        assert_eq!(picked.map(|a| a.pid), Some(44));
        // Among several, the one on the default address.
        let picked = pick(running_agents(proc_root.path()), None, addr).unwrap();
        assert_eq!(picked.map(|a| a.pid), Some(44));
        let none: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(pick(agents, Some(none), default).unwrap().is_none());
    }
}
