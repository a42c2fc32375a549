//! The preload's C header (`probes/preload/include/heapwarden.h`) is the one declaration
//! of its C API: it compiles on its own as C and as C++ with every warning an error, a
//! program built against it links and runs without the preload (the functions are weak),
//! and every function the preload exports under a `heapwarden_` name is declared in it
//! with the signature the Rust side defines.
#![forbid(unsafe_code)]

use std::process::Command;

use heapwarden_tests::Sandbox;
use heapwarden_tests::tools::{assert_success, repo_root, run_tool};

fn include_dir() -> std::path::PathBuf {
    repo_root().join("probes/preload/include")
}

#[test]
fn the_header_compiles_as_c_and_cxx_and_links_without_the_preload() {
    let sandbox = Sandbox::new();
    let program = sandbox.write(
        "uses_header.c",
        "#include <heapwarden.h>\n#include <stdio.h>\n\
         static void on_drain(uint64_t deadline_ms) { (void)deadline_ms; }\n\
         int main(void) {\n\
           heapwarden_drain_handler h = on_drain;\n\
           if (heapwarden_set_drain_handler) heapwarden_set_drain_handler(h);\n\
           printf(\"registered=%d\\n\", heapwarden_set_drain_handler != 0);\n\
           return 0;\n}\n",
    );
    let exe = sandbox.path().join("uses_header");
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(include_dir())
        .arg(&program)
        .arg("-o")
        .arg(&exe);
    assert_success("cc against heapwarden.h", &run_tool(cc, "gcc"));
    let run = Command::new(&exe).output().expect("run the program");
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "registered=0\n",
        "without the preload the weak symbol is NULL"
    );
    let mut cxx = Command::new("cc");
    cxx.args(["-x", "c++", "-fsyntax-only", "-Wall", "-Werror", "-I"])
        .arg(include_dir())
        .arg(include_dir().join("heapwarden.h"));
    assert_success("the header as C++", &run_tool(cxx, "g++"));
}

#[test]
fn every_exported_heapwarden_function_is_declared_with_its_rust_signature() {
    let header =
        std::fs::read_to_string(include_dir().join("heapwarden.h")).expect("read the header");
    let src = repo_root().join("probes/preload/src");
    let mut exported = Vec::new();
    for entry in std::fs::read_dir(&src).expect("preload sources").flatten() {
        let text = std::fs::read_to_string(entry.path()).expect("read source");
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("pub extern \"C\" fn heapwarden_") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                exported.push((format!("heapwarden_{name}"), text.clone()));
            }
        }
    }
    assert!(
        exported
            .iter()
            .any(|(n, _)| n == "heapwarden_set_drain_handler"),
        "the preload exports heapwarden_set_drain_handler"
    );
    for (name, _) in &exported {
        assert!(
            header.contains(&format!("{name}(")),
            "{name} is exported by the preload but not declared in heapwarden.h"
        );
    }
    // The handler's one argument: a u64 deadline in milliseconds, in both languages.
    let drain = std::fs::read_to_string(src.join("drain.rs")).expect("drain.rs");
    assert!(
        drain.contains("type DrainHandler = extern \"C\" fn(deadline_ms: u64);"),
        "drain.rs changed the handler's type; update heapwarden.h"
    );
    assert!(
        header.contains("typedef void (*heapwarden_drain_handler)(uint64_t deadline_ms);"),
        "{header}"
    );
    assert!(header.contains(
        "void heapwarden_set_drain_handler(heapwarden_drain_handler handler) __attribute__((weak));"
    ));
}
