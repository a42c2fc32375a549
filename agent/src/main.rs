//! The `heapwarden` binary: every role dispatches from `cli::main`.

// The agent runs on the C library's allocator: it measured smaller than jemalloc with
// 8 workers (docs/src/internals/performance.md, "Agent footprint"). `--features jemalloc` builds the other variant
// for that comparison.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static AGENT_ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    heapwarden::cli::main()
}
