//! Nothing to link: this crate exists for its build script, which builds the native
//! preload library's own workspace (`probes/preload/`, excluded from the root one) with
//! this build's cargo, profile and target, and copies `libheapwarden_preload.so` into
//! this build's output directory (`target/release/`, `target/debug/`), next to the agent,
//! where the agent looks for it first. So `cargo build --release` at the root builds
//! everything a `heapwarden run` needs, while the preload's `_rjem_`-prefixed jemalloc
//! stays out of the Rust workers' build (see docs/src/internals/build-and-contracts.md).
#![forbid(unsafe_code)]
