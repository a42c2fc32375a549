//! A worker's `NOTIFY_SOCKET` believes only the worker: a `READY=1` from another user
//! (the socket's directory is the agent's alone) or from a process of the agent's user
//! outside the worker's tree (refused by its `SO_PASSCRED` credentials) does not make a
//! starting worker ready; the worker's own `READY=1` does.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use heapwarden_tests::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Sends `READY=1` to `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket);
/// exits 0 when sent, 3 when the socket could not be reached for lack of permission.
const SEND_READY: &str = r#"
import os, socket, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    s.sendto(b"READY=1", "\0" + addr[1:] if addr.startswith("@") else addr)
except PermissionError:
    sys.exit(3)
"#;

#[test]
fn only_the_worker_itself_can_say_ready() {
    let _guard = TimeoutGuard::new("notify_access", SECS(90));
    let sandbox = Sandbox::new();
    // Everything up to the run directory is open to other users: only the directory the
    // agent makes for itself (0700) may keep them out.
    std::fs::set_permissions(sandbox.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let runtime_dir = sandbox.path().join("rt");
    let go = sandbox.path().join("go");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let script = format!(
        "echo \"notify=$NOTIFY_SOCKET\"; while [ ! -e {go} ]; do sleep 0.05; done; \
         python3 -c '{send}' \"$NOTIFY_SOCKET\"; exec sleep 600",
        go = go.display(),
        send = SEND_READY.replace('\'', "\"")
    );
    let config = format!(
        "state-dir = {state:?}\n[admin]\nlisten = \"{admin}\"\n[pool]\nworkers = 1\n\
         listen = \"127.0.0.1:{port}\"\ncommand = [\"sh\", \"-c\", {script:?}]\n\
         min-uptime = \"5m\"\nready-timeout = \"5m\"\n",
        state = sandbox.path().join("state").display().to_string(),
        port = free_port(),
    );
    let path = sandbox.write("heapwarden.toml", &config);
    let mut command = Command::new(heapwarden());
    command
        .arg("run")
        .arg("-c")
        .arg(path)
        .env("RUNTIME_DIRECTORY", &runtime_dir);
    let agent = Proc::spawn(command);
    let line = agent
        .logs
        .wait_for(SECS(20), "the worker's NOTIFY_SOCKET", |r| {
            r["msg"].as_str().is_some_and(|m| m.starts_with("notify="))
        });
    let notify = line["msg"]
        .as_str()
        .unwrap()
        .trim_start_matches("notify=")
        .to_string();
    assert!(!notify.is_empty());

    // Another user: cannot even reach the socket. (The system python: a user's
    // pyenv shim is not another user's to run.)
    let nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", SEND_READY])
        .arg(&notify)
        .current_dir("/")
        .output()
        .expect("run setpriv");
    assert_eq!(
        nobody.status.code(),
        Some(3),
        "uid 65534 was not refused by permissions: {nobody:?}"
    );
    // The agent's own user, outside the worker's tree: delivered, and refused.
    let outsider = Command::new("python3")
        .arg("-c")
        .arg(SEND_READY)
        .arg(&notify)
        .status()
        .expect("run python3");
    assert!(outsider.success(), "the agent's user reaches the socket");
    let refused = agent.logs.wait_for(SECS(10), "the refusal", |r| {
        r["msg"] == "A notification on a worker's socket was refused."
    });
    assert_eq!(
        refused["reason"], "outside the worker's process tree",
        "{refused}"
    );
    // Datagrams are read in order: had either READY counted, the slot would be ready.
    let (status, body) = http_get(admin, "/readyz", SECS(5)).expect("readyz");
    assert_eq!(status, 503, "a stray READY=1 made the worker ready: {body}");

    std::fs::write(&go, "").unwrap();
    wait_until_ok(admin, "/readyz", SECS(20), &agent.logs);
    // `/readyz` can answer before the agent's record of it is read from its stderr.
    agent
        .logs
        .wait_for(SECS(10), "the ready record", msg("Every worker is ready."));
    assert!(
        agent.logs.matching(msg("Every worker is ready.")).len() == 1,
        "ready once, from the worker's own READY=1"
    );
}
