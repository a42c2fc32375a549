//! End to end: a native worker killed in the middle of writing its heap dump. The raw
//! dump's path is made a FIFO before the dump is asked for, so jemalloc's `prof.dump`
//! in the worker blocks on a full pipe after its first 64 KiB — the test reads the first
//! bytes (proof the dump is under way), then SIGKILLs the worker. The store must hold no
//! partial file afterwards, the agent must keep running and profile the replacement.

mod native_support;

use std::io::Read;
use std::process::Command;

use heapwarden_tests::tools::{assert_success, run_tool};
use heapwarden_tests::{Sandbox, TimeoutGuard, heapwarden, http_get, msg, poll, poll_until};
use native_support::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn a_worker_killed_while_dumping_leaves_no_partial_profile_and_the_agent_goes_on() {
    let _guard = TimeoutGuard::new("native_killed_while_dumping", SECS(90));
    let sandbox = Sandbox::new();
    let worker = compile_worker(&sandbox, "deep-worker", &[]);
    // Sampling every 4 KiB and 128 distinct stack depths: a dump of a few hundred KiB.
    let native = start_native(
        sandbox,
        1,
        &format!(r#"[{:?}, "deep"]"#, worker.display().to_string()),
        "[pool.env]\n_RJEM_MALLOC_CONF = \"lg_prof_sample:12\"\n[watchdog]\nwarmup = \"1h\"\n",
    );
    let logs = &native.agent.logs;
    logs.wait_for(SECS(30), "the deep worker", msg("native worker ready"));
    let pid = poll(SECS(30), "the worker attached with heap figures", || {
        let rows = native.cli(&["ps"]);
        rows[0]["heap_allocated_bytes"].as_u64()?;
        rows[0]["pid"].as_i64()
    });

    let dir = native.profiles_dir();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index"))
            .expect("index JSON");
    let id = index["next_id"].as_u64().expect("next_id");
    let fifo = dir.join(format!("{id}.raw"));
    let mut mkfifo = Command::new("mkfifo");
    mkfifo.arg(&fifo);
    assert_success("mkfifo", &run_tool(mkfifo, "coreutils"));

    let config = native.config.clone();
    let dump = std::thread::spawn(move || {
        Command::new(heapwarden())
            .args(["dump", "0", "-c"])
            .arg(config)
            .output()
            .expect("run heapwarden dump")
    });
    // Opens once jemalloc opened the dump for writing; then it writes until the pipe
    // is full and blocks inside prof.dump.
    let mut reader = std::fs::File::open(&fifo).expect("open the dump FIFO");
    let mut head = [0u8; 4096];
    reader
        .read_exact(&mut head)
        .expect("the first bytes of the dump");
    assert!(head.starts_with(b"heap_v2/"), "{:?}", &head[..32]);
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill the worker");
    let rest = std::io::copy(&mut reader, &mut std::io::sink()).unwrap_or(0);
    println!(
        "the dump was cut after {} of its bytes",
        head.len() as u64 + rest
    );
    drop(reader);

    let answer = dump.join().expect("dump thread");
    assert!(
        !answer.status.success(),
        "the dump of a killed worker succeeded"
    );
    let error = String::from_utf8_lossy(&answer.stderr);
    assert!(error.contains("heap dump"), "{error}");

    // Nothing partial in the store: no raw dump, no half-written pprof, no index entry.
    logs.wait_for(SECS(10), "the failed profile", |r| {
        r["msg"] == "A heap profile was not written." && r["outcome"] == "dump_failed"
    });
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("profile dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["index.json"], "files left in the store");
    let profiles = native.cli(&["profiles"]);
    assert_eq!(profiles.as_array().map(Vec::len), Some(0), "{profiles}");

    // The agent goes on: healthy, the slot restarted, the new worker profiled.
    let (status, _) = http_get(native.admin, "/healthz", SECS(5)).expect("healthz");
    assert_eq!(status, 200);
    poll_until(SECS(30), "the replacement ready with heap figures", || {
        let rows = native.cli(&["ps"]);
        rows[0]["pid"] != pid
            && rows[0]["ready"] == true
            && rows[0]["heap_allocated_bytes"].is_u64()
    });
    let next = native.cli(&["dump", "0"]);
    assert!(next["id"].as_u64() > Some(id), "{next}");
    assert!(
        native
            .profiles_dir()
            .join(format!("{}.pb.gz", next["id"]))
            .is_file()
    );
}
