//! The agent speaks sd_notify to systemd: a real `NOTIFY_SOCKET` (a Unix datagram socket
//! this test binds) receives READY=1 once every worker is ready, STATUS=, WATCHDOG=1 and,
//! on SIGTERM, STOPPING=1 — all from the agent's own pid.

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use heapwarden_tests::{AgentConfig, heapwarden as heapwarden_binary, http_get};

/// Kills the agent's whole process group (agent and workers) however the test ends.
struct AgentGuard(std::process::Child);

impl Drop for AgentGuard {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// One sd_notify datagram: its assignments and the sender's pid (SO_PASSCRED).
fn recv_notify(socket: &UnixDatagram, deadline: Instant) -> Option<(Vec<String>, i32)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg};
    let remaining = deadline.checked_duration_since(Instant::now())?;
    socket
        .set_read_timeout(Some(remaining.max(Duration::from_millis(1))))
        .ok()?;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!(UnixCredentials);
    let fd = std::os::fd::AsRawFd::as_raw_fd(socket);
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty()).ok()?;
    let pid = msg
        .cmsgs()
        .ok()?
        .find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
            _ => None,
        })
        .unwrap_or(0);
    let len = msg.bytes;
    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
    Some((text.lines().map(str::to_owned).collect(), pid))
}

#[test]
fn agent_speaks_sd_notify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let notify_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::PassCred, &true)
        .expect("SO_PASSCRED");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
    // Two probe-linked test workers: the agent's readiness logic, not the demo's start-up,
    // decides when READY=1 is due.
    let pool = AgentConfig::new(2, &[env!("CARGO_BIN_EXE_probe-worker")]);
    let admin = pool.admin;
    let config = dir.path().join("heapwarden.toml");
    let state = dir.path().join("state").display().to_string();
    let toml = format!("state-dir = {state:?}\n{pool}");
    std::fs::write(&config, toml).expect("write config");
    let mut cmd = Command::new(heapwarden_binary());
    cmd.arg("run")
        .arg("-c")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        // systemd's contract: a ping at least every WATCHDOG_USEC (WatchdogSec=).
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log)
        .process_group(0);
    let agent = AgentGuard(cmd.spawn().expect("spawn heapwarden run"));
    let agent_pid = agent.0.id() as i32;
    let log_tail = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();

    let (mut ready, mut status, mut pings) = (false, None, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(90);
    while !(ready && status.is_some() && pings.len() >= 3) {
        let Some((lines, pid)) = recv_notify(&socket, deadline) else {
            panic!(
                "no READY/STATUS/3×WATCHDOG within 90 s: ready={ready} status={status:?} pings={}\n{}",
                pings.len(),
                log_tail()
            );
        };
        assert_eq!(
            pid, agent_pid,
            "notification from pid {pid}, not the agent: {lines:?}"
        );
        for line in lines {
            match line.split_once('=') {
                Some(("READY", "1")) => ready = true,
                Some(("STATUS", text)) if !text.is_empty() => status = Some(text.to_owned()),
                Some(("WATCHDOG", "1")) => pings.push(Instant::now()),
                _ => {}
            }
        }
    }
    eprintln!("sd_notify STATUS={}", status.unwrap_or_default());
    let gaps = pings.windows(2).map(|w| w[1] - w[0]);
    assert!(
        gaps.clone().all(|g| g < Duration::from_secs(2)),
        "watchdog gaps {:?}",
        gaps.collect::<Vec<_>>()
    );
    // READY=1 promises a serving pool: every worker is ready.
    let readyz = http_get(admin, "/readyz", Duration::from_secs(10));
    assert!(
        readyz.is_ok_and(|(status, _)| status == 200),
        "/readyz after READY=1\n{}",
        log_tail()
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent_pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM the agent");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stopping = false;
    while !stopping {
        let Some((lines, _)) = recv_notify(&socket, deadline) else {
            panic!("no STOPPING=1 within 60 s of SIGTERM\n{}", log_tail());
        };
        stopping = lines.iter().any(|l| l == "STOPPING=1");
    }
    let mut agent = agent;
    let remaining = deadline.saturating_duration_since(Instant::now());
    let status = heapwarden_tests::try_poll(remaining, || agent.0.try_wait().ok().flatten())
        .expect("agent still running 60 s after SIGTERM");
    assert!(
        status.success(),
        "agent exit after SIGTERM: {status}\n{}",
        log_tail()
    );
}
