//! A library loaded with `RTLD_DEEPBIND` under the native preload is named once on
//! stderr (issue #16, defect 8): its malloc binds to glibc's, not jemalloc, which can
//! crash the program, and the line says why. Loads without the flag say nothing.

use std::process::Command;

use heapwarden_tests::tools::{assert_success, run_tool};
use heapwarden_tests::{Sandbox, heapwarden};

const LIBRARY: &str = "int plugin_answer(void) { return 42; }\n";
const PROGRAM: &str = r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int flags = RTLD_NOW | (argv[2][0] == 'd' ? RTLD_DEEPBIND : 0);
    for (int i = 0; i < 3; i++) {
        void *lib = dlopen(argv[1], flags);
        if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
        int (*answer)(void) = (int (*)(void))dlsym(lib, "plugin_answer");
        printf("answer %d\n", answer());
        dlclose(lib);
    }
    return 0;
}
"#;

fn cc(args: &[&str], what: &str) {
    let mut cc = Command::new("cc");
    cc.args(args);
    assert_success(what, &run_tool(cc, "gcc"));
}

#[test]
fn a_deepbind_load_is_named_once_and_plain_loads_say_nothing() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path();
    let lib_c = sandbox.write("plugin.c", LIBRARY);
    let prog_c = sandbox.write("loader.c", PROGRAM);
    let lib = dir.join("libplugin.so");
    let prog = dir.join("loader");
    cc(
        &[
            "-shared",
            "-fPIC",
            "-o",
            lib.to_str().unwrap(),
            lib_c.to_str().unwrap(),
        ],
        "cc plugin.c",
    );
    cc(
        &[
            "-O1",
            "-o",
            prog.to_str().unwrap(),
            prog_c.to_str().unwrap(),
        ],
        "cc loader.c",
    );
    let preload = heapwarden().with_file_name("libheapwarden_preload.so");
    let run = |mode: &str| {
        let out = Command::new(&prog)
            .arg(&lib)
            .arg(mode)
            .env("LD_PRELOAD", &preload)
            .output()
            .expect("run the loader");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .matches("answer 42")
                .count(),
            3
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let deep = run("deep");
    assert_eq!(deep.matches("RTLD_DEEPBIND").count(), 1, "{deep}");
    assert!(deep.contains("libplugin.so"), "{deep}");
    let plain = run("plain");
    assert!(!plain.contains("RTLD_DEEPBIND"), "{plain}");
}
