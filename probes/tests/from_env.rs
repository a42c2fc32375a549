//! `Probe::from_env` in a real child process: the descriptor named by
//! `HEAPWARDEN_CONTROL_FD` is adopted, its inherited number closed, the socket kept only
//! with close-on-exec, and the channel works.

heapwarden_probes::install!();

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use heapwarden_probes::channel::encode;
use heapwarden_probes::{AgentMsg, FrameDecoder, Probe, WorkerMsg};

const CHILD_ENV: &str = "HEAPWARDEN_PROBES_FROM_ENV_CHILD";
const INHERITED_FD: &str = "5";
const O_CLOEXEC_FLAG: u32 = 0o2000000;

/// Socket descriptors of this process and whether each has close-on-exec.
fn socket_fds() -> Vec<(String, bool)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")
        .expect("list fds")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{name}")).unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|line| line.strip_prefix("flags:"))
            .and_then(|octal| u32::from_str_radix(octal.trim(), 8).ok())
            .unwrap_or(0);
        found.push((name, flags & O_CLOEXEC_FLAG != 0));
    }
    found
}

/// Runs only as the child of the test below.
#[test]
fn child_adopts_the_control_fd() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let probe = Probe::from_env().expect("probe from HEAPWARDEN_CONTROL_FD");
    assert!(
        Probe::from_env().is_none(),
        "the descriptor is adopted only once"
    );
    assert!(
        std::fs::read_link(format!("/proc/self/fd/{INHERITED_FD}")).is_err(),
        "inherited number still open"
    );
    let sockets = socket_fds();
    assert!(!sockets.is_empty(), "no socket left");
    assert!(
        sockets.iter().all(|(_, cloexec)| *cloexec),
        "socket without CLOEXEC: {sockets:?}"
    );
    probe.ready();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !probe.is_drained() {
        assert!(Instant::now() < deadline, "agent never sent Drain");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn from_env_adopts_the_inherited_socket_with_cloexec() {
    let (worker_end, mut agent) = UnixStream::pair().expect("socketpair");
    let exe = std::env::current_exe().expect("test executable");
    // The shell turns stdin (the socket) into a plain inherited fd 5, as the agent's
    // trampoline does, then becomes the test binary running only the child test.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec {INHERITED_FD}<&0 0</dev/null; exec \"$0\" \"$@\""
        ))
        .arg(exe)
        .args(["child_adopts_the_control_fd", "--exact", "--nocapture"])
        .env(CHILD_ENV, "1")
        .env("HEAPWARDEN_CONTROL_FD", INHERITED_FD)
        .stdin(Stdio::from(OwnedFd::from(worker_end)))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");

    agent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut decoder = FrameDecoder::new();
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while received.len() < 2 {
        match decoder.next_frame::<WorkerMsg>().expect("valid frame") {
            Some(msg) => received.push(msg),
            None => {
                let n = agent.read(&mut chunk).expect("child answers within 10 s");
                assert!(n > 0, "child closed the channel early");
                decoder.push(&chunk[..n]);
            }
        }
    }
    assert!(matches!(&received[0], WorkerMsg::Hello { pid, .. } if *pid == child.id()));
    assert_eq!(received[1], WorkerMsg::Ready);
    std::io::Write::write_all(
        &mut agent,
        &encode(&AgentMsg::Drain { deadline_ms: 0 }).unwrap(),
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let _ = child.stdout.take().map(|mut s| s.read_to_string(&mut out));
    assert!(status.success(), "child failed: {out}");
    assert!(out.contains("1 passed"), "child test did not run: {out}");
}
