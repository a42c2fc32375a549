//! What the workers run and what they are told: `pool.command`, or — when it is empty —
//! `heapwarden-demo` from next to the agent's own executable, and the worker context
//! (slot, pool size, state directory, config file, log settings) in the variables the
//! probe's `WorkerContext` reads.
//!
//! The demo owns its `[demo]` section; the agent never links it. To check that section
//! the agent runs `heapwarden-demo check-config` with the environment the workers get and
//! relays the demo's one-line-per-error answer.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use heapwarden_protocol::WorkerContext;

use crate::config::{Config, LogLevel};

/// The demo's executable name, next to `heapwarden`.
pub const DEMO_BIN: &str = "heapwarden-demo";
/// `heapwarden-demo check-config` reads one file; anything longer is a hang.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// What `check-config` exits with when it found errors (the agent's own).
const EX_CONFIG: i32 = crate::config::EX_CONFIG as i32;

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error(
        "pool.command: is empty, so every worker runs {}, which does not exist; build it with `cargo build --release -p heapwarden-demo` (next to heapwarden), or set pool.command",
        path.display()
    )]
    DemoMissing { path: PathBuf },
    #[error("cannot locate the agent's own executable: {0}")]
    OwnExe(std::io::Error),
    #[error(transparent)]
    Identity(#[from] super::identity::IdentityError),
    #[error("cannot run {} check-config", path.display())]
    CheckSpawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} check-config did not answer within {}s", path.display(), CHECK_TIMEOUT.as_secs())]
    CheckTimeout { path: PathBuf },
    #[error("{} check-config failed ({status}): {stderr}", path.display())]
    CheckFailed {
        path: PathBuf,
        status: String,
        stderr: String,
    },
}

/// The agent's own executable (the demo is its neighbour).
pub fn own_exe() -> Result<PathBuf, ProgramError> {
    std::env::current_exe().map_err(ProgramError::OwnExe)
}

/// `heapwarden-demo` next to `agent_exe`, whether or not it exists.
pub fn demo_path(agent_exe: &Path) -> PathBuf {
    agent_exe.with_file_name(DEMO_BIN)
}

/// The argv of every worker: `pool.command`, or the demo when it is empty (which must
/// then exist).
pub fn worker_argv(config: &Config, agent_exe: &Path) -> Result<Vec<OsString>, ProgramError> {
    if !config.pool.command.is_empty() {
        return Ok(config.pool.command.iter().map(OsString::from).collect());
    }
    let demo = demo_path(agent_exe);
    if !demo.is_file() {
        return Err(ProgramError::DemoMissing { path: demo });
    }
    Ok(vec![demo.into_os_string()])
}

/// The context every worker gets; `config_file` is the agent's, absolute. The slot and
/// worker id are added per worker at spawn.
pub fn worker_context(config: &Config, config_file: Option<&Path>) -> WorkerContext {
    WorkerContext {
        slot: None,
        worker_id: None,
        pool_size: Some(config.pool.worker_count()),
        state_dir: Some(config.state_dir.clone()),
        config_file: config_file.map(Path::to_path_buf),
        log_level: Some(log_level_name(config.log.level).to_string()),
        log_redact: Some(config.log.redact.clone()),
    }
}

fn log_level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    }
}

/// Whether `[demo]` needs checking: the workers run the demo, or the section (or an
/// override of it) is there and the demo is installed to check it.
pub fn demo_section_in_use(config: &Config, agent_exe: &Path) -> bool {
    let overridden = std::env::vars_os().any(|(k, _)| {
        k.to_str()
            .is_some_and(|k| k.starts_with("HEAPWARDEN_DEMO_"))
    }) || config
        .pool
        .env
        .keys()
        .any(|k| k.starts_with("HEAPWARDEN_DEMO_"));
    config.pool.command.is_empty()
        || ((!config.demo.is_empty() || overridden) && demo_path(agent_exe).is_file())
}

/// Everything wrong with what the workers would run, as `config error: …` lines (empty:
/// fine): a missing demo, and the demo's own verdict on `[demo]`.
pub fn check(config: &Config, config_file: Option<&Path>) -> Vec<String> {
    let exe = match own_exe() {
        Ok(exe) => exe,
        Err(e) => return vec![format!("config error: pool.command: {e}")],
    };
    let demo = demo_path(&exe);
    if config.pool.command.is_empty() && !demo.is_file() {
        return vec![format!(
            "config error: {}",
            ProgramError::DemoMissing { path: demo }
        )];
    }
    if !demo_section_in_use(config, &exe) {
        return Vec::new();
    }
    match check_demo_section(&demo, config_file, &config.pool.env) {
        Ok(lines) => lines,
        Err(e) => vec![format!("config error: demo: {e}")],
    }
}

/// The demo's verdict on `[demo]` when the agent's own config could not be loaded (so
/// neither `pool.command` nor `pool.env` is known): asked only if the demo is installed.
pub fn check_demo_if_installed(config_file: Option<&Path>) -> Vec<String> {
    let Ok(exe) = own_exe() else {
        return Vec::new();
    };
    let demo = demo_path(&exe);
    if !demo.is_file() {
        return Vec::new();
    }
    match check_demo_section(&demo, config_file, &BTreeMap::new()) {
        // A file the agent could not read or parse was reported already.
        Ok(lines) => lines
            .into_iter()
            .filter(|l| !l.starts_with("config error: (file):"))
            .collect(),
        Err(e) => vec![format!("config error: demo: {e}")],
    }
}

/// Runs `demo check-config [-c FILE]` with this process's environment plus `pool_env`
/// (what workers see) and returns its error lines: empty when `[demo]` is valid.
pub fn check_demo_section(
    demo: &Path,
    config_file: Option<&Path>,
    pool_env: &BTreeMap<String, String>,
) -> Result<Vec<String>, ProgramError> {
    let mut command = Command::new(demo);
    command.arg("check-config");
    if let Some(file) = config_file {
        command.arg("-c").arg(file);
    }
    command
        .envs(pool_env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let spawn_error = |source| ProgramError::CheckSpawn {
        path: demo.to_path_buf(),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    let mut stderr = child.stderr.take();
    // Read on a thread: the child's stderr closes when it exits, or never if it hangs.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.read_to_string(&mut text);
        }
        let _ = done_tx.send(text);
    });
    let Ok(stderr) = done_rx.recv_timeout(CHECK_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(ProgramError::CheckTimeout {
            path: demo.to_path_buf(),
        });
    };
    let status = child.wait().map_err(spawn_error)?;
    match status.code() {
        Some(0) => Ok(Vec::new()),
        Some(EX_CONFIG) => Ok(stderr
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()),
        _ => Err(ProgramError::CheckFailed {
            path: demo.to_path_buf(),
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn an_empty_command_needs_the_demo_next_to_the_agent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let agent = dir.path().join("heapwarden");
        let config = Config::default();
        let error = worker_argv(&config, &agent).unwrap_err();
        let line = error.to_string();
        assert!(line.contains("heapwarden-demo"), "{line}");
        assert!(
            line.contains("cargo build --release -p heapwarden-demo"),
            "{line}"
        );
        assert!(!line.contains('\n'), "one line: {line}");
        std::fs::write(dir.path().join(DEMO_BIN), "").expect("demo stand-in");
        let argv = worker_argv(&config, &agent).expect("found");
        assert_eq!(argv, vec![dir.path().join(DEMO_BIN).into_os_string()]);
        let custom = Config {
            pool: crate::config::PoolConfig {
                command: vec!["python3".into(), "app.py".into()],
                ..Default::default()
            },
            ..Config::default()
        };
        assert_eq!(
            worker_argv(&custom, Path::new("/nowhere/heapwarden")).expect("as given"),
            vec![OsString::from("python3"), OsString::from("app.py")]
        );
    }

    #[test]
    fn the_context_carries_the_resolved_settings() {
        let config = Config::default();
        let context = worker_context(&config, Some(Path::new("/etc/heapwarden/h.toml")));
        assert_eq!(context.pool_size, Some(config.pool.worker_count()));
        assert_eq!(
            context.state_dir.as_deref(),
            Some(config.state_dir.as_path())
        );
        assert_eq!(context.log_level.as_deref(), Some("info"));
        assert_eq!(context.log_redact.as_ref(), Some(&config.log.redact));
        assert_eq!(context.slot, None, "set per worker at spawn");
    }

    /// The check relays a real program's answer (a shell script standing in for the demo).
    #[test]
    fn check_output_is_relayed_line_by_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fake = dir.path().join(DEMO_BIN);
        std::fs::write(
            &fake,
            "#!/bin/sh\n[ \"$1\" = check-config ] || exit 2\n\
             [ -n \"$HEAPWARDEN_DEMO_L1_TTL\" ] || exit 0\n\
             echo 'config error: demo.l1-ttl: bad' >&2\necho 'config error: demo.x: unknown' >&2\nexit 64\n",
        )
        .expect("script");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // Another test thread forking while the script was open for writing makes exec
        // fail with ETXTBSY for a moment (the descriptor lives until that child execs).
        let check = |env: &BTreeMap<String, String>| {
            for _ in 0..100 {
                match check_demo_section(&fake, None, env) {
                    Err(ProgramError::CheckSpawn { source, .. })
                        if source.raw_os_error() == Some(libc::ETXTBSY) =>
                    {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    other => return other.expect("ran"),
                }
            }
            panic!("the script stayed busy");
        };
        assert_eq!(check(&BTreeMap::new()), Vec::<String>::new());
        let env = BTreeMap::from([("HEAPWARDEN_DEMO_L1_TTL".to_string(), "x".to_string())]);
        let lines = check(&env);
        assert_eq!(
            lines,
            [
                "config error: demo.l1-ttl: bad",
                "config error: demo.x: unknown"
            ]
        );
    }
}
