//! The Node probe's plan: `NODE_OPTIONS` gets `--require <probe>` in front of the user's
//! own options, so every node process below the worker loads the probe (the probe itself
//! decides which one claims the channel: see `probes/node/heapwarden-probe.cjs`).
//!
//! The probe file is embedded in the agent binary and written to
//! `<state-dir>/probes/heapwarden-probe.cjs` (0644) at start, rather than installed next
//! to the binary: the state directory is the one place the agent may write under
//! systemd's `ProtectSystem=strict`, an agent installed from the release binary alone
//! works, and the file always matches the running agent (an upgrade cannot leave an old
//! probe behind).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::AttachInput;

/// The probe's source, shipped inside the agent.
pub const PROBE_SOURCE: &str = include_str!("../../../../probes/node/heapwarden-probe.cjs");
pub const PROBE_FILE: &str = "heapwarden-probe.cjs";
/// Programs that are node, and launchers that run node scripts (npm is itself node).
const NODE_PROGRAMS: [&str; 2] = ["node", "nodejs"];
const LAUNCHERS: [&str; 6] = ["npm", "npx", "yarn", "pnpm", "pnpx", "corepack"];

/// Whether the command runs node: program `node`/`nodejs` (or `nodeNN`), a launcher, or
/// `env [VAR=value…] node …`.
pub fn runs_node(argv: &[OsString]) -> bool {
    let mut words = argv.iter().map(|a| a.to_string_lossy());
    let Some(program) = words.next() else {
        return false;
    };
    let name = |word: &str| word.rsplit('/').next().unwrap_or_default().to_string();
    if name(&program) != "env" {
        return is_node_program(&name(&program));
    }
    // `env VAR=value -i … node app.js`: the program is the first plain word.
    words
        .find(|next| !(next.contains('=') || next.starts_with('-')))
        .is_some_and(|next| is_node_program(&name(&next)))
}

fn is_node_program(name: &str) -> bool {
    let versioned = name
        .strip_prefix("node")
        .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()));
    NODE_PROGRAMS.contains(&name) || LAUNCHERS.contains(&name) || versioned
}

/// `NODE_OPTIONS` with the probe required first, then HEAPWARDEN_LISTEN_PORT (and PORT,
/// unless the pool sets its own).
pub fn plan(input: &AttachInput<'_>) -> Result<Vec<(String, String)>, String> {
    let probe = input
        .node_probe
        .ok_or_else(|| "the Node probe file could not be written".to_string())?;
    let probe = probe.to_string_lossy();
    // NODE_OPTIONS splits on spaces and honours double quotes, without escapes.
    if probe.contains('"') || probe.contains('\\') {
        return Err(format!(
            "the Node probe path {probe:?} cannot be written into NODE_OPTIONS"
        ));
    }
    let require = if probe.contains(char::is_whitespace) {
        format!("--require \"{probe}\"")
    } else {
        format!("--require {probe}")
    };
    let user = input
        .pool_env
        .get("NODE_OPTIONS")
        .map(String::as_str)
        .or(input.inherited_node_options)
        .map(str::trim)
        .filter(|o| !o.is_empty());
    let options = match user {
        Some(user) if user.contains(&require) => user.to_string(),
        Some(user) => format!("{require} {user}"),
        None => require,
    };
    let mut env = vec![("NODE_OPTIONS".to_string(), options)];
    if let Some(port) = input.listen_port {
        env.push(("HEAPWARDEN_LISTEN_PORT".to_string(), port.to_string()));
        // Most apps listen on $PORT (PM2's and Heroku's convention): give them the pool's,
        // which the probe turns into the inherited socket. The user's own PORT wins.
        if !input.pool_env.contains_key("PORT") {
            env.push(("PORT".to_string(), port.to_string()));
        }
    }
    Ok(env)
}

/// Writes the embedded probe to `<state_dir>/probes/heapwarden-probe.cjs`, mode 0644,
/// atomically (temp file + rename), unless it is already there byte for byte.
pub fn install_probe(state_dir: &Path) -> std::io::Result<PathBuf> {
    let dir = state_dir.join("probes");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    // The probe's name before it became `.cjs` (which Node reads as CommonJS even under
    // a `"type": "module"` package.json): an upgrade leaves no stale copy behind.
    let _ = std::fs::remove_file(dir.join("heapwarden-probe.js"));
    let path = dir.join(PROBE_FILE);
    if std::fs::read(&path).is_ok_and(|old| old == PROBE_SOURCE.as_bytes()) {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        return Ok(path);
    }
    let tmp = dir.join(format!(".{PROBE_FILE}.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    file.write_all(PROBE_SOURCE.as_bytes())?;
    file.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}
