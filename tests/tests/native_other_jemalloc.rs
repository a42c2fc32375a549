//! A program linked against the system's `libjemalloc.so.2` (as redis-server is) runs
//! under the native preload with one allocator (issue #16, defect 10): its `mallctl`
//! reads the jemalloc that holds its heap (about 20 MiB held, not the system library's
//! empty instance), and `sdallocx`/`mallocx` work on the same heap. As a worker, the
//! probe says so in one line naming the other library. Skipped, with a line,
//! where `libjemalloc.so.2` is not installed (Debian: `libjemalloc2`).

use std::path::{Path, PathBuf};
use std::process::Command;

mod native_support;

use heapwarden_tests::tools::{assert_success, run_tool};
use heapwarden_tests::{Sandbox, TimeoutGuard, heapwarden, msg};
use native_support::{ATTACHED, SECS, start_native};

const SYSTEM_JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
const PROGRAM: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int mallctl(const char *, void *, size_t *, void *, size_t);
void *mallocx(size_t, int);
void sdallocx(void *, size_t, int);
int main(int argc, char **argv) {
    (void)argv;
    static void *held[20 * 1024];
    for (int i = 0; i < 20 * 1024; i++) { held[i] = malloc(1024); memset(held[i], 1, 1024); }
    void *x = mallocx(4096, 0);
    sdallocx(x, 4096, 0);
    unsigned long long epoch = 1; size_t len = sizeof epoch;
    mallctl("epoch", &epoch, &len, &epoch, len);
    size_t allocated = 0; len = sizeof allocated;
    if (mallctl("stats.allocated", &allocated, &len, NULL, 0) != 0) return 2;
    printf("allocated %zu\n", allocated);
    fflush(stdout);
    for (int i = 0; i < 20 * 1024; i++) free(held[i]);
    if (argc > 1) for (;;) pause(); /* "stay": a worker, until the agent stops it */
    return 0;
}
"#;

/// `PROGRAM` linked against the system's jemalloc, in the sandbox.
fn compile(sandbox: &Sandbox) -> PathBuf {
    let source = sandbox.write("linked.c", PROGRAM);
    let program = sandbox.path().join("linked");
    let mut cc = Command::new("cc");
    cc.args(["-O1", "-o"])
        .arg(&program)
        .arg(&source)
        .arg(SYSTEM_JEMALLOC);
    assert_success("cc linked.c", &run_tool(cc, "gcc"));
    program
}

#[test]
fn mallctl_of_a_program_linking_libjemalloc_reads_the_heap_it_allocates_from() {
    if !Path::new(SYSTEM_JEMALLOC).is_file() {
        println!("skipped: {SYSTEM_JEMALLOC} is not installed");
        return;
    }
    let sandbox = Sandbox::new();
    let program = compile(&sandbox);
    let preload = heapwarden().with_file_name("libheapwarden_preload.so");
    let output = Command::new(&program)
        .env("LD_PRELOAD", &preload)
        .output()
        .expect("run");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let allocated: i64 = stdout
        .trim()
        .strip_prefix("allocated ")
        .unwrap_or_else(|| panic!("{stdout}"))
        .parse()
        .unwrap();
    let held = 20 << 20;
    assert!(
        (allocated - held).abs() < held / 10,
        "mallctl says {allocated} B allocated with {held} B held"
    );
}

#[test]
fn a_worker_linking_libjemalloc_is_told_once_which_library_the_probe_serves() {
    if !Path::new(SYSTEM_JEMALLOC).is_file() {
        println!("skipped: {SYSTEM_JEMALLOC} is not installed");
        return;
    }
    let _guard = TimeoutGuard::new("native_other_jemalloc_line", SECS(60));
    let sandbox = Sandbox::new();
    let program = compile(&sandbox);
    let command = serde_json::to_string(&[program.to_str().unwrap(), "stay"]).unwrap();
    let native = start_native(sandbox, 1, &command, "");
    let logs = &native.agent.logs;
    // The probe writes its jemalloc line before the attach line, on the same stderr.
    logs.wait_for(SECS(30), "the probe attached", msg(ATTACHED));
    let lines = logs.matching(|r| {
        r["msg"]
            .as_str()
            .is_some_and(|m| m.starts_with("The program links another jemalloc"))
    });
    assert_eq!(lines.len(), 1, "{lines:?}");
    let library = lines[0]["fields"]["library"].as_str().unwrap_or_default();
    assert!(library.ends_with("libjemalloc.so.2"), "{}", lines[0]);
}
