//! Workers under their own user (`pool.user`) cannot act as the agent (issue #16,
//! defect 2). Run as root (CI and this machine are): the agent as root, the worker as
//! `nobody` under the native probe. From inside the worker a shell tries what a hostile
//! worker would: read the admin token, find the config in its environment, write the
//! state directory and the profile index, signal the agent. Every attempt must fail
//! while RSS, PSS and the heap are still sampled. A Node worker under that user loads
//! the probe every Node worker loads (`<state-dir>/probes/heapwarden-probe.cjs`) but can
//! neither rewrite nor replace it. Skipped (with a line) when not root.

mod native_support;

use std::os::unix::fs::PermissionsExt;

use heapwarden_tests::http::http_request;
use heapwarden_tests::{Sandbox, TimeoutGuard, poll};
use native_support::{SECS, compile_worker};

fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .and_then(|(_, v)| v.parse().ok())
}

/// `r CMD…` in a worker's shell: `allowed` or `denied`.
const TRY: &str = r#"r() { if "$@" >/dev/null 2>&1; then echo allowed; else echo denied; fi; }"#;

/// Starts the agent as root with one worker running `script` (`sh -c`) as `nobody`
/// under `probe`, `extra` appended to `[pool]`; returns it with its admin port.
fn agent_with_a_nobody_worker(
    sandbox: &Sandbox,
    script: &str,
    probe: &str,
    extra: &str,
) -> (heapwarden_tests::Proc, u16) {
    let command = serde_json::to_string(&["sh", "-c", script]).unwrap();
    let admin = heapwarden_tests::free_port();
    let agent = sandbox.agent(&format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
[pool]
workers = 1
command = {command}
probe = "{probe}"
user = "nobody"
listen = "127.0.0.1:{port}"
min-uptime = "1s"
{extra}
[sampling]
interval = "100ms"
pss-every = 2
"#,
        port = heapwarden_tests::free_port()
    ));
    (agent, admin)
}

/// The worker's line that starts with `prefix` (its stdout, relayed by the agent).
fn worker_line(agent: &heapwarden_tests::Proc, prefix: &str) -> String {
    let record = agent.logs.wait_for(SECS(60), prefix, |r| {
        r["stream"] == "stdout" && r["msg"].as_str().is_some_and(|m| m.starts_with(prefix))
    });
    let line = record["msg"].as_str().unwrap().to_string();
    println!("{line}");
    line
}

#[test]
fn a_worker_under_its_own_user_cannot_read_the_token_or_write_the_state_and_is_still_sampled() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: switching the workers' user needs root");
        return;
    }
    let _guard = TimeoutGuard::new("identity", SECS(120));
    let sandbox = Sandbox::new();
    // `nobody` must reach the worker binary; the state directory inside is the agent's.
    std::fs::set_permissions(sandbox.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let worker = compile_worker(&sandbox, "worker", &[]);
    let state = sandbox.path().join("state");
    let sandbox_config = sandbox.path().join("heapwarden.toml");
    let script = format!(
        r#"{TRY}
echo "trust-check uid=$(id -u) token=$(r cat {state}/admin-token) state=$(r touch {state}/mine) index=$(r sh -c ': >> {state}/profiles/index.json') profiles=$(r ls {state}/profiles) signal=$(r kill -0 $PPID) config_env=${{HEAPWARDEN_CONFIG:-unset}} state_env=${{HEAPWARDEN_STATE_DIR:-unset}}"
exec {worker} steady"#,
        state = state.display(),
        worker = worker.display(),
    );
    native_support::assert_preload_built();
    let (agent, admin) = agent_with_a_nobody_worker(&sandbox, &script, "native", "");
    let line = worker_line(&agent, "trust-check");
    for expected in [
        "uid=65534",
        "token=denied",
        "state=denied",
        "index=denied",
        "profiles=denied",
        "signal=denied",
        "config_env=unset",
        "state_env=unset",
    ] {
        assert!(line.contains(expected), "{expected} not in: {line}");
    }
    // The config file the test wrote is 0644: the agent says the workers can read it.
    agent.logs.wait_for(SECS(5), "the config warning", |r| {
        r["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("The workers' user can read the agent's config file"))
    });
    // The token itself still works for whoever can read it (the agent's user).
    let token = std::fs::read_to_string(state.join("admin-token")).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let series = |name: &str| format!("heapwarden_worker_{name}_bytes{{worker=\"0\"}}");
    let figures = poll(SECS(60), "RSS, PSS and heap of the worker", || {
        let (status, body) =
            http_request(addr, "GET", "/metrics", Some(token.trim()), b"", SECS(5)).ok()?;
        if status != 200 {
            return None;
        }
        let rss = metric(&body, &series("rss")).filter(|v| *v > 0.0)?;
        let pss = metric(&body, &series("pss")).filter(|v| *v > 0.0)?;
        let heap = metric(&body, &series("heap_allocated")).filter(|v| *v > 0.0)?;
        Some((rss, pss, heap))
    });
    println!(
        "rss {} B, pss {} B, heap {} B",
        figures.0, figures.1, figures.2
    );
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o711, "state directory mode");
    // Heap profiles still work: the worker dumps into the drop box, the agent adopts it.
    let out = std::process::Command::new(heapwarden_tests::heapwarden())
        .args(["dump", "0", "--json", "-c"])
        .arg(sandbox_config)
        .output()
        .expect("run heapwarden dump");
    assert!(
        out.status.success(),
        "dump of a worker under its own user: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.logs.raw()
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = state.join("profiles").join(meta["file"].as_str().unwrap());
    assert!(file.is_file(), "{meta}");
    let dumps = std::fs::read_dir(state.join("dumps")).unwrap().count();
    assert_eq!(dumps, 0, "the drop box is emptied");
}

#[test]
fn a_node_worker_under_its_own_user_loads_the_probe_but_cannot_replace_it() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: switching the workers' user needs root");
        return;
    }
    let _guard = TimeoutGuard::new("identity node", SECS(120));
    let sandbox = Sandbox::new();
    std::fs::set_permissions(sandbox.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    sandbox.write("app.js", include_str!("../node/app.js"));
    let probes = sandbox.path().join("state/probes");
    // Rewrite it in place, put another file beside it (to rename over it), move it away.
    let script = format!(
        r#"{TRY}
echo "probe-check uid=$(id -u) read=$(r cat {probes}/heapwarden-probe.cjs) write=$(r sh -c ': > {probes}/heapwarden-probe.cjs') create=$(r touch {probes}/other.cjs) rename=$(r mv {probes}/heapwarden-probe.cjs {probes}/moved.cjs)"
exec node {app}"#,
        probes = probes.display(),
        app = sandbox.path().join("app.js").display(),
    );
    let cwd = format!("cwd = {:?}", sandbox.path().display().to_string());
    let (agent, admin) = agent_with_a_nobody_worker(&sandbox, &script, "node", &cwd);
    let line = worker_line(&agent, "probe-check");
    for expected in [
        "uid=65534",
        "read=allowed",
        "write=denied",
        "create=denied",
        "rename=denied",
    ] {
        assert!(line.contains(expected), "{expected} not in: {line}");
    }
    let file = probes.join("heapwarden-probe.cjs");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        include_str!("../../probes/node/heapwarden-probe.cjs"),
        "the probe file is the agent's"
    );
    let entries: Vec<_> = std::fs::read_dir(&probes)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["heapwarden-probe.cjs"], "nothing beside it");
    // And the worker runs that probe: its V8 heap reaches /metrics.
    let token = std::fs::read_to_string(sandbox.path().join("state/admin-token")).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let heap = poll(SECS(60), "the Node worker's heap", || {
        let (status, body) =
            http_request(addr, "GET", "/metrics", Some(token.trim()), b"", SECS(5)).ok()?;
        let series = "heapwarden_worker_heap_allocated_bytes{worker=\"0\"}";
        (status == 200)
            .then(|| metric(&body, series))
            .flatten()
            .filter(|v| *v > 0.0)
    });
    println!("node heap {heap} B");
}
