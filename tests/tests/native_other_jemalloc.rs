//! A program linked against the system's `libjemalloc.so.2` (as redis-server is) runs
//! under the native preload with one allocator (issue #16, defect 10): its `mallctl`
//! reads the jemalloc that holds its heap (about 20 MiB held, not the system library's
//! empty instance), and `sdallocx`/`mallocx` work on the same heap. Skipped, with a line,
//! where `libjemalloc.so.2` is not installed (Debian: `libjemalloc2`).

use std::path::Path;
use std::process::Command;

use heapwarden_tests::tools::{assert_success, run_tool};
use heapwarden_tests::{Sandbox, heapwarden};

const SYSTEM_JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
const PROGRAM: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int mallctl(const char *, void *, size_t *, void *, size_t);
void *mallocx(size_t, int);
void sdallocx(void *, size_t, int);
int main(void) {
    static void *held[20 * 1024];
    for (int i = 0; i < 20 * 1024; i++) { held[i] = malloc(1024); memset(held[i], 1, 1024); }
    void *x = mallocx(4096, 0);
    sdallocx(x, 4096, 0);
    unsigned long long epoch = 1; size_t len = sizeof epoch;
    mallctl("epoch", &epoch, &len, &epoch, len);
    size_t allocated = 0; len = sizeof allocated;
    if (mallctl("stats.allocated", &allocated, &len, NULL, 0) != 0) return 2;
    printf("allocated %zu\n", allocated);
    for (int i = 0; i < 20 * 1024; i++) free(held[i]);
    return 0;
}
"#;

#[test]
fn mallctl_of_a_program_linking_libjemalloc_reads_the_heap_it_allocates_from() {
    if !Path::new(SYSTEM_JEMALLOC).is_file() {
        println!("skipped: {SYSTEM_JEMALLOC} is not installed");
        return;
    }
    let sandbox = Sandbox::new();
    let source = sandbox.write("linked.c", PROGRAM);
    let program = sandbox.path().join("linked");
    let mut cc = Command::new("cc");
    cc.args(["-O1", "-o"])
        .arg(&program)
        .arg(&source)
        .arg(SYSTEM_JEMALLOC);
    assert_success("cc linked.c", &run_tool(cc, "gcc"));
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
