//! The native probe's figures, printed as tables:
//! `cargo run --release --manifest-path probes/preload/Cargo.toml --example bench_native`
//! (`--quick` for fewer runs).
//!
//! It compiles the C programs in `bench/native/` with `cc -O2`, then runs them and
//! `bench/native/alloc_loop.py` and `alloc_deep.py` plainly (glibc malloc, pymalloc) and
//! under the release `libheapwarden_preload.so`: as a descendant (jemalloc, sampling off) and attached as
//! the worker (sampling on at `lg_prof_sample:19`), the way the agent runs a worker —
//! `HEAPWARDEN_WORKER_PID` naming it and a control socket whose other end this program
//! holds. Over that socket it measures Sample→Stats round trips and `prof.dump` time and
//! size with 30 and 300 MiB held. Each row is the median of its runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use heapwarden_probes::channel::encode;
use heapwarden_probes::{AgentMsg, DumpKind, FrameDecoder, WorkerMsg};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The library of this example's own build (`probes/preload/target/release/`), next to
/// `examples/<this>`.
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let lib = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("libheapwarden_preload.so");
    assert!(
        lib.is_file(),
        "{} missing: cargo build --release --manifest-path probes/preload/Cargo.toml",
        lib.display()
    );
    lib
}

fn compile(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let status = Command::new("cc")
        .args(["-O2", "-g"])
        .arg(repo().join(format!("bench/native/{name}.c")))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("run cc (Debian package gcc)");
    assert!(status.success(), "cc {name}.c failed");
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    /// Preloaded, but not the worker: jemalloc with sampling off.
    Descendant,
    /// Preloaded and attached to a control socket: sampling on.
    Attached,
}

/// A running program and, when attached, the agent's end of its control socket.
struct Run {
    child: Child,
    agent: Option<Agent>,
}

fn start(program: &Path, args: &[&str], mode: Mode, env: &[(&str, &str)]) -> Run {
    // `sh` sets HEAPWARDEN_WORKER_PID to its own pid and execs the program, as the agent
    // does for a worker; LD_PRELOAD applies to the exec only.
    let mut command = Command::new("/bin/sh");
    let script = match mode {
        Mode::Plain => "exec \"$@\"",
        Mode::Descendant => "LD_PRELOAD=\"$LIB\" exec \"$@\"",
        Mode::Attached => "export HEAPWARDEN_WORKER_PID=$$; LD_PRELOAD=\"$LIB\" exec \"$@\"",
    };
    command
        .args(["-c", script, "sh"])
        .arg(program)
        .args(args)
        .env("LIB", library())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut agent = None;
    let mut worker_end = None;
    if mode == Mode::Attached {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        // Inherited by the child only: cleared just before the spawn, closed right after.
        fcntl(&theirs, FcntlArg::F_SETFD(FdFlag::empty())).expect("clear close-on-exec");
        command.env("HEAPWARDEN_CONTROL_FD", theirs.as_raw_fd().to_string());
        agent = Some(Agent::new(ours));
        worker_end = Some(theirs);
    }
    let child = command.spawn().expect("spawn the program");
    drop(worker_end);
    Run { child, agent }
}

impl Run {
    fn finish(mut self) -> (String, String) {
        drop(self.child.stdin.take());
        drop(self.agent.take());
        let out = self.child.wait_with_output().expect("wait");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn first_stdout_line(&mut self) -> String {
        let mut line = String::new();
        let stdout = self.child.stdout.as_mut().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).expect("a line");
        line
    }
}

struct Agent {
    socket: UnixStream,
    decoder: FrameDecoder,
    chunk: Vec<u8>,
}

impl Agent {
    fn new(socket: UnixStream) -> Agent {
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Agent {
            socket,
            decoder: FrameDecoder::new(),
            chunk: vec![0; 64 * 1024],
        }
    }

    fn send(&mut self, msg: &AgentMsg) {
        self.socket
            .write_all(&encode(msg).expect("frame"))
            .expect("send");
    }

    fn recv(&mut self) -> WorkerMsg {
        loop {
            if let Some(msg) = self.decoder.next_frame::<WorkerMsg>().expect("frame") {
                return msg;
            }
            let n = self
                .socket
                .read(&mut self.chunk)
                .expect("read from the worker");
            assert!(n > 0, "the worker closed the channel");
            self.decoder.push(&self.chunk[..n]);
        }
    }
}

fn json_field(text: &str, field: &str) -> f64 {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v[field].as_f64())
        .unwrap_or_else(|| panic!("no {field} in {text:?}"))
}

fn json_text(text: &str, field: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v[field].as_str().map(String::from))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn throughput_rows(runs: usize, malloc_loop: &Path) {
    println!(
        "| workload | glibc / pymalloc | preload, sampling off | preload attached (lg_prof_sample:19) | attach: prof.active |"
    );
    println!("|---|---:|---:|---:|---:|");
    let measure =
        |name: &str, program: &Path, args: &[&str], field: &str, envs: [&[(&str, &str)]; 3]| {
            let mut cells = Vec::new();
            let mut activation = Vec::new();
            let mut python_frames = None;
            for (mode, env) in [Mode::Plain, Mode::Descendant, Mode::Attached]
                .into_iter()
                .zip(envs)
            {
                let values = (0..runs)
                    .map(|_| {
                        let (out, err) = start(program, args, mode, env).finish();
                        if mode == Mode::Attached {
                            activation.push(json_field(&err, "activation_us"));
                            python_frames = json_text(&err, "python_frames");
                        }
                        json_field(&out, field)
                    })
                    .collect();
                cells.push(median(values));
            }
            println!(
                "| {name} | {:.2} M/s | {:.2} M/s ({:+.0}%) | {:.2} M/s ({:+.0}%) | {:.0} µs |",
                cells[0] / 1e6,
                cells[1] / 1e6,
                (cells[1] / cells[0] - 1.0) * 100.0,
                cells[2] / 1e6,
                (cells[2] / cells[0] - 1.0) * 100.0,
                median(activation)
            );
            // CPython rows: whether the attached runs recorded Python frames.
            if program.ends_with("python3") {
                println!(
                    "|   attached runs: Python frames {} | | | | |",
                    python_frames.as_deref().unwrap_or("?")
                );
            }
        };
    measure(
        "C malloc+free pairs (16 B–4 KiB, 4096 live)",
        malloc_loop,
        &["20000000"],
        "pairs_per_second",
        [&[], &[], &[]],
    );
    let python = Path::new("/usr/bin/python3");
    let script = repo().join("bench/native/alloc_loop.py");
    let script = script.to_str().expect("utf-8 path");
    let pymalloc: &[(&str, &str)] = &[];
    let malloc: &[(&str, &str)] = &[("PYTHONMALLOC", "malloc")];
    measure(
        "CPython dict+str+list objects, PYTHONMALLOC=malloc under the preload",
        python,
        &[script, "2000000"],
        "objects_per_second",
        [pymalloc, malloc, malloc],
    );
    let deep = repo().join("bench/native/alloc_deep.py");
    measure(
        "CPython 64 KiB strings 30 calls deep (~1 in 8 sampled, 30 frames walked each)",
        python,
        &[deep.to_str().expect("utf-8 path"), "400000"],
        "allocations_per_second",
        [malloc, malloc, malloc],
    );
    measure(
        "CPython, PYTHONMALLOC=malloc in every column (glibc malloc first)",
        python,
        &[script, "2000000"],
        "objects_per_second",
        [malloc, malloc, malloc],
    );
}

fn channel_rows(hold: &Path, rounds: usize) {
    println!();
    println!("| held | Sample→Stats p50 | p99 | prof.dump in the worker p50 | p99 | dump size |");
    println!("|---|---:|---:|---:|---:|---:|");
    let dir = std::env::temp_dir().join(format!("bench-native-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for mib in ["30", "300"] {
        let mut run = start(hold, &[mib], Mode::Attached, &[]);
        let agent_hello = run.agent.as_mut().expect("attached").recv();
        assert!(
            matches!(agent_hello, WorkerMsg::Hello { .. }),
            "{agent_hello:?}"
        );
        run.first_stdout_line();
        let agent = run.agent.as_mut().expect("attached");
        let mut trips = Vec::new();
        for seq in 0..rounds as u64 {
            let sent = Instant::now();
            agent.send(&AgentMsg::Sample {
                seq,
                metrics: false,
            });
            match agent.recv() {
                WorkerMsg::Stats { .. } => trips.push(sent.elapsed()),
                other => panic!("{other:?}"),
            }
        }
        trips.sort();
        let mut dumps = Vec::new();
        let mut size = 0;
        for seq in 0..20 {
            let path = dir.join(format!("{mib}-{seq}.heap"));
            agent.send(&AgentMsg::Dump {
                seq,
                path: path.display().to_string(),
                kind: DumpKind::Profile,
                max_bytes: None,
            });
            match agent.recv() {
                WorkerMsg::ProfileWritten {
                    error: None,
                    micros,
                    ..
                } => dumps.push(Duration::from_micros(micros)),
                other => panic!("{other:?}"),
            }
            size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let _ = std::fs::remove_file(&path);
        }
        dumps.sort();
        run.finish();
        println!(
            "| {mib} MiB (8 sites) | {:.0} µs | {:.0} µs | {:.2} ms | {:.2} ms | {:.1} KiB |",
            percentile(&trips, 0.5).as_secs_f64() * 1e6,
            percentile(&trips, 0.99).as_secs_f64() * 1e6,
            percentile(&dumps, 0.5).as_secs_f64() * 1e3,
            percentile(&dumps, 0.99).as_secs_f64() * 1e3,
            size as f64 / 1024.0
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn startup_row(runs: usize, hold: &Path) {
    println!();
    println!("| start-up: exec → first line of a C program | p50 | p90 |");
    println!("|---|---:|---:|");
    for (name, mode) in [
        ("glibc", Mode::Plain),
        ("preload, not the worker", Mode::Descendant),
        ("preload, attached", Mode::Attached),
    ] {
        let mut took: Vec<Duration> = (0..runs)
            .map(|_| {
                let started = Instant::now();
                let mut run = start(hold, &["0"], mode, &[]);
                run.first_stdout_line();
                let took = started.elapsed();
                run.finish();
                took
            })
            .collect();
        took.sort();
        println!(
            "| {name} | {:.2} ms | {:.2} ms |",
            percentile(&took, 0.5).as_secs_f64() * 1e3,
            percentile(&took, 0.9).as_secs_f64() * 1e3
        );
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = std::env::temp_dir().join(format!("bench-native-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let malloc_loop = compile(&dir, "malloc_loop");
    let hold = compile(&dir, "hold");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "library: {}; load average: {}",
        library().display(),
        load.trim()
    );
    println!();
    throughput_rows(if quick { 1 } else { 5 }, &malloc_loop);
    channel_rows(&hold, if quick { 500 } else { 5000 });
    startup_row(if quick { 20 } else { 100 }, &hold);
    let _ = std::fs::remove_dir_all(&dir);
}
