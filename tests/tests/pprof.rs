//! End to end: a worker (`leak-dumper`) writes jemalloc raw dumps before and after leaking
//! from a function with a known name; `heapwarden __convert-profile` turns them into
//! pprof; `go tool pprof -top` must show function names, and the top entry of
//! `-top -base BASELINE LEAK` must be the leaking function.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use heapwarden_tests::bin;

const LEAKY: &str = "leaky_function_for_pprof_test";

/// Runs a command to completion, killing it past `timeout`; panics on failure.
fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {shown}: {e}"));
    let exited = heapwarden_tests::try_poll(timeout, || child.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{shown} did not finish within {timeout:?}; killed");
    }
    let output = child.wait_with_output().expect("collect output");
    assert!(
        output.status.success(),
        "{shown} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn go() -> PathBuf {
    let candidates = [
        PathBuf::from("/usr/bin/go"),
        PathBuf::from("/usr/lib/go/bin/go"),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .expect("`go` is needed for `go tool pprof`: install the Debian package golang-go")
}

fn pprof_top(dir: &Path, args: &[&Path]) -> String {
    let mut cmd = Command::new(go());
    cmd.args(["tool", "pprof", "-top"])
        .args(args)
        .env("PPROF_TMPDIR", dir)
        .env("HOME", dir)
        .env("PPROF_NO_BROWSER", "1");
    let out = run(&mut cmd, Duration::from_secs(60));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The function column of the first row of a `-top` table.
fn top_entry(table: &str) -> &str {
    table
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .and_then(|row| row.split_whitespace().nth(5))
        .unwrap_or_else(|| panic!("no rows in pprof output:\n{table}"))
}

#[test]
fn converted_profiles_open_in_go_pprof_and_the_diff_names_the_leak() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (base_raw, leak_raw) = (dir.path().join("base.raw"), dir.path().join("leak.raw"));
    let (base, leak) = (dir.path().join("base.pb.gz"), dir.path().join("leak.pb.gz"));
    let worker = bin("leak-dumper");
    let heapwarden = bin("heapwarden");
    run(
        Command::new(&worker)
            .arg(&base_raw)
            .arg(&leak_raw)
            .arg("64"),
        Duration::from_secs(60),
    );
    for (raw, out) in [(&base_raw, &base), (&leak_raw, &leak)] {
        let output = run(
            Command::new(&heapwarden)
                .arg("__convert-profile")
                .arg("--raw")
                .arg(raw)
                .arg("--out")
                .arg(out),
            Duration::from_secs(120),
        );
        let summary: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("helper prints a JSON summary");
        assert!(summary["samples"].as_u64() > Some(0), "{summary}");
    }

    let leak_top = pprof_top(dir.path(), &[&leak]);
    assert!(
        leak_top.contains(LEAKY) && leak_top.contains("baseline_working_set"),
        "function names missing from -top:\n{leak_top}"
    );
    assert!(
        !leak_top.contains("prof_backtrace") && !leak_top.contains("__rust_alloc"),
        "allocator frames were not trimmed:\n{leak_top}"
    );
    let diff = pprof_top(dir.path(), &[Path::new("-base"), &base, &leak]);
    let top = top_entry(&diff);
    assert!(
        top.ends_with(LEAKY),
        "top entry of the -base diff is {top:?}:\n{diff}"
    );
}
