//! The native probe never touches the program's own descriptors (issue #16, defect 1).
//! The test plays the agent on a socketpair and runs `tests/native/fds.c` under the
//! preload, as the agent would (fd 4, `HEAPWARDEN_WORKER_PID` = the pid that execs):
//! - a program that makes 3..20 its own (a wrapper's `exec 5>file`) gets no frame in its
//!   file, and the probe keeps answering;
//! - a program that calls `closefrom(3)` and opens socketpairs receives no frame on them,
//!   and the probe goes quiet (the agent sees end-of-stream);
//! - a forked child holds no copy of the channel.

mod native_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use heapwarden_probes::{AgentMsg, DumpKind, FrameDecoder, WorkerMsg, channel::encode};
use heapwarden_tests::tools::{assert_success, run_tool};
use heapwarden_tests::{Sandbox, TimeoutGuard, heapwarden, poll_until};
use native_support::{assert_preload_built, source};

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    agent: UnixStream,
    decoder: FrameDecoder,
}

fn compile(sandbox: &Sandbox) -> std::path::PathBuf {
    let out = sandbox.path().join("fds");
    let mut cc = Command::new("cc");
    cc.args(["-O1", "-g", "-Wall"])
        .arg(source("fds.c"))
        .arg("-o")
        .arg(&out);
    assert_success("cc fds.c", &run_tool(cc, "gcc"));
    out
}

fn start(program: &std::path::Path, args: &[&str]) -> Worker {
    assert_preload_built();
    let library = heapwarden().with_file_name("libheapwarden_preload.so");
    let (agent, worker_end) = UnixStream::pair().unwrap();
    agent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let ino = nix::sys::stat::fstat(&worker_end).unwrap().st_ino;
    let raw = worker_end.as_raw_fd();
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"exec env HEAPWARDEN_WORKER_PID=$$ "$@""#)
        .arg("sh")
        .arg(format!("LD_PRELOAD={}", library.display()))
        .arg(program)
        .args(args)
        .env("HEAPWARDEN_CONTROL_FD", "4")
        .env("HEAPWARDEN_CONTROL_INO", ino.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe and acts on plain integers; it clears
    // close-on-exec on the copy at 4, as the agent's own spawn does.
    unsafe {
        command.pre_exec(move || {
            let moved = if raw == 4 {
                libc::fcntl(4, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, 4)
            };
            if moved < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("start the program");
    drop(worker_end);
    let stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut worker = Worker {
        child,
        stdin,
        stdout,
        agent,
        decoder: FrameDecoder::new(),
    };
    match worker.next_msg() {
        Some(WorkerMsg::Hello { .. }) => {}
        other => panic!("expected the probe's hello, got {other:?}"),
    }
    worker
}

impl Worker {
    /// The next frame from the probe; `None` at end-of-stream.
    fn next_msg(&mut self) -> Option<WorkerMsg> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(msg) = self.decoder.next_frame::<WorkerMsg>().unwrap() {
                return Some(msg);
            }
            let n = self.agent.read(&mut chunk).expect("read the channel");
            if n == 0 {
                return None;
            }
            self.decoder.push(&chunk[..n]);
        }
    }

    /// Sends a sample request; `false` when the probe's end is already gone.
    fn sample(&mut self, seq: u64) -> bool {
        let frame = encode(&AgentMsg::Sample {
            seq,
            metrics: false,
        })
        .unwrap();
        match self.agent.write_all(&frame) {
            Ok(()) => true,
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => false,
            Err(error) => panic!("write the channel: {error}"),
        }
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    fn result(&mut self) -> i64 {
        self.say("check");
        let line = self.line();
        let value = line
            .strip_prefix("result ")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the program failed: {status}");
        value.parse().unwrap()
    }
}

#[test]
fn a_program_that_takes_low_descriptors_gets_no_frame_and_the_probe_keeps_answering() {
    let _guard = TimeoutGuard::new("native_fds_dup", Duration::from_secs(30));
    let sandbox = Sandbox::new();
    let program = compile(&sandbox);
    let file = sandbox.path().join("mine.out");
    let mut worker = start(&program, &["dup", file.to_str().unwrap()]);
    worker.say("go");
    assert_eq!(worker.line(), "ready");
    for seq in 1..=3 {
        assert!(worker.sample(seq));
        match worker.next_msg() {
            Some(WorkerMsg::Stats { seq: got, .. }) => assert_eq!(got, seq),
            other => panic!("expected stats {seq}, got {other:?}"),
        }
    }
    assert_eq!(worker.result(), 0, "the program's file got probe frames");
}

/// Whether a thread of `pid` waits in the kernel for a FIFO's other end (`open(2)` of a
/// FIFO blocks in `wait_for_partner` until a reader comes).
fn blocked_opening_a_fifo(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        std::fs::read_to_string(task.path().join("wchan")).is_ok_and(|w| w == "wait_for_partner")
    })
}

#[test]
fn after_closefrom_the_programs_sockets_get_nothing_and_the_probe_goes_quiet() {
    let _guard = TimeoutGuard::new("native_fds_closefrom", Duration::from_secs(30));
    let sandbox = Sandbox::new();
    let program = compile(&sandbox);
    let mut worker = start(&program, &["closefrom"]);
    // A dump into a FIFO holds the probe's reader mid-request (jemalloc's open blocks
    // until the FIFO is read), so its answer is written after the program's closefrom.
    let fifo = sandbox.path().join("dump.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let frame = encode(&AgentMsg::Dump {
        seq: 7,
        path: fifo.to_str().unwrap().to_string(),
        kind: DumpKind::Profile,
        max_bytes: None,
    })
    .unwrap();
    worker.agent.write_all(&frame).unwrap();
    // Only once the probe's reader is blocked opening the FIFO may the program close
    // everything: before that, its closefrom could take the request unread.
    let pid = worker.child.id();
    poll_until(
        Duration::from_secs(20),
        "the probe blocked opening the dump FIFO",
        || blocked_opening_a_fifo(pid),
    );
    worker.say("go");
    assert_eq!(worker.line(), "ready");
    let dumped = std::fs::read(&fifo).expect("read the dump from the FIFO");
    assert!(!dumped.is_empty());
    // Every copy of the channel is gone with the program's closefrom: the answer goes
    // nowhere (not into the program's sockets) and the agent sees end-of-stream.
    assert_eq!(worker.next_msg(), None, "the probe still talks");
    assert_eq!(
        worker.result(),
        0,
        "bytes reached the program's own sockets"
    );
}

#[test]
fn a_forked_child_holds_no_copy_of_the_channel() {
    let _guard = TimeoutGuard::new("native_fds_fork", Duration::from_secs(30));
    let sandbox = Sandbox::new();
    let program = compile(&sandbox);
    let mut worker = start(&program, &["fork"]);
    worker.say("go");
    assert_eq!(worker.line(), "ready");
    assert!(worker.sample(1));
    assert!(matches!(worker.next_msg(), Some(WorkerMsg::Stats { .. })));
    assert_eq!(worker.result(), 0, "the forked child kept sockets");
}
