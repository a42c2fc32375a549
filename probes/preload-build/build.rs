//! Builds `probes/preload/` (a workspace of its own) into `<profile dir>/preload/` with the
//! cargo that runs this script, then copies the library next to the agent. Not a
//! dependency of the agent: a change to the preload rebuilds the library, not the agent.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

const LIBRARY: &str = "libheapwarden_preload.so";

/// What the preload's build reads, relative to `probes/`: its own sources and those of
/// the crates it uses by path (the Rust probe and the protocol).
const INPUTS: [&str; 8] = [
    "preload/src",
    "preload/Cargo.toml",
    "preload/Cargo.lock",
    "src",
    "Cargo.toml",
    "protocol/src",
    "protocol/Cargo.toml",
    "protocol/frames.json",
];

/// Set by the cargo that runs this script for its own purposes; the nested build must
/// not see them. `RUSTC_WORKSPACE_WRAPPER` is clippy's driver under `cargo clippy` and in
/// .ci/run's linting build: the preload is linted by its own `cargo clippy` (.ci/run),
/// and a wrapper here would only make the nested build differ between a linting build
/// and a plain one.
const NOT_INHERITED: [&str; 5] = [
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTC_WORKSPACE_WRAPPER",
    "CLIPPY_ARGS",
    "CARGO_PRIMARY_PACKAGE",
];

fn var(name: &str) -> OsString {
    env::var_os(name).unwrap_or_else(|| panic!("cargo did not set {name} for the build script"))
}

fn main() {
    let probes = PathBuf::from(var("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("probes/preload-build has a parent")
        .to_path_buf();
    for input in INPUTS {
        println!("cargo::rerun-if-changed={}", probes.join(input).display());
    }

    // OUT_DIR is <target>/[<triple>/]<profile>/build/<this crate>-<hash>/out, so the
    // agent's directory is three levels up.
    let out_dir = PathBuf::from(var("OUT_DIR"));
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .expect("OUT_DIR is <target>/<profile>/build/<crate>/out");
    let (profile, profile_subdir) = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("release") => ("release", "release"),
        Some("debug") => ("dev", "debug"),
        // A custom profile of the root workspace: the preload knows dev and release only.
        _ if env::var("PROFILE").as_deref() == Ok("release") => ("release", "release"),
        _ => ("dev", "debug"),
    };
    let nested_target = profile_dir.join("preload");
    let target = env::var("TARGET").expect("TARGET");
    let cross = env::var("HOST").ok().as_deref() != Some(target.as_str());

    let mut cargo = Command::new(var("CARGO"));
    cargo
        .arg("build")
        .arg("--lib")
        .arg("--manifest-path")
        .arg(probes.join("preload/Cargo.toml"))
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(&nested_target);
    if cross {
        cargo.args(["--target", &target]);
    }
    for name in NOT_INHERITED {
        cargo.env_remove(name);
    }
    let output = cargo
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo for probes/preload: {e}"));
    if !output.status.success() {
        panic!(
            "building the preload library (probes/preload, its own workspace) failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let built = if cross {
        nested_target.join(&target).join(profile_subdir)
    } else {
        nested_target.join(profile_subdir)
    }
    .join(LIBRARY);
    install_next_to_agent(&built, &profile_dir.join(LIBRARY));
}

/// Copies through a temporary name and renames, so a worker loading the old library
/// while this runs keeps a whole file.
fn install_next_to_agent(built: &Path, dest: &Path) {
    let partial = dest.with_extension("so.partial");
    std::fs::copy(built, &partial).unwrap_or_else(|e| {
        panic!(
            "cannot copy {} to {}: {e}",
            built.display(),
            partial.display()
        )
    });
    std::fs::rename(&partial, dest).unwrap_or_else(|e| {
        panic!(
            "cannot rename {} to {}: {e}",
            partial.display(),
            dest.display()
        )
    });
}
