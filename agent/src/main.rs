//! The `heapwarden` binary: every role dispatches from `cli::main`.

// jemalloc with profiling compiled in but inactive: the agent pays nothing for it, and
// a worker role switches sampling on (heapwarden_probes::activate_profiling).
heapwarden_probes::install!();

fn main() -> std::process::ExitCode {
    heapwarden::cli::main()
}
