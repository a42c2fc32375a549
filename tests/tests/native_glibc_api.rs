//! glibc's allocator query calls answer for jemalloc under the native preload (issue
//! #16, defect 11): with 20 MiB held, `mallinfo2().uordblks` is about 20 MiB, not the 0
//! of glibc's idle arena; `malloc_trim` purges and returns 1; `mallopt` succeeds;
//! `malloc_stats` prints jemalloc's statistics.

use std::process::Command;

use heapwarden_tests::tools::{assert_success, repo_root, run_tool};
use heapwarden_tests::{Sandbox, heapwarden};

#[test]
fn mallinfo2_and_friends_describe_jemalloc_under_the_preload() {
    let sandbox = Sandbox::new();
    let program = sandbox.path().join("glibc_api");
    let mut cc = Command::new("cc");
    cc.args(["-O1", "-g", "-Wall"])
        .arg(repo_root().join("tests/native/glibc_api.c"))
        .arg("-o")
        .arg(&program);
    assert_success("cc glibc_api.c", &run_tool(cc, "gcc"));
    let library = heapwarden().with_file_name("libheapwarden_preload.so");
    assert!(library.is_file(), "build the preload library first");
    let output = Command::new(&program)
        .env("LD_PRELOAD", &library)
        .output()
        .expect("run");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = |name: &str| -> i64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing: {stdout}"))
            .parse()
            .unwrap()
    };
    let held = 20 << 20;
    for name in ["mallinfo2.uordblks", "mallinfo.uordblks"] {
        let reported = value(name);
        assert!(
            (reported - held).abs() < held / 10,
            "{name} = {reported}, {held} held"
        );
    }
    assert!(value("mallinfo2.arena") >= value("mallinfo2.uordblks"));
    assert_eq!(value("malloc_trim"), 1);
    assert_eq!(value("mallopt"), 1);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("jemalloc statistics"), "{stderr}");
}
