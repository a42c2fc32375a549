//! Test worker for the heap-profile pipeline: holds a baseline, dumps jemalloc's raw
//! profile to `argv[1]`, leaks from a function with a known name, dumps to `argv[2]`.
//!
//! Usage: `leak-dumper BASE_RAW LEAK_RAW [LEAK_MIB]` (default 64 MiB). It prints one line
//! per dump (`dumped PATH in MICROS us`) and exits; `tests/pprof.rs` and the profile
//! benchmark convert the dumps with `heapwarden __convert-profile`.
//!
//! With `--hold` as the last argument it waits for stdin to close before exiting, so a
//! caller can symbolize against the live pid.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;

heapwarden_probes::install!();

/// Where the leak lives: a global that is never freed, as in a real leak.
static LEAKED: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// The allocation site the end-to-end test looks for at the top of the `-base` diff.
#[inline(never)]
fn leaky_function_for_pprof_test(mib: usize) {
    let mut leaked = LEAKED.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..mib * 4 {
        // 256 KiB blocks, filled so the pages are really resident.
        leaked.push(std::hint::black_box(vec![(i % 251) as u8; 256 * 1024]));
    }
}

/// What the worker holds before the leak starts (its normal working set).
#[inline(never)]
fn baseline_working_set(mib: usize) -> Vec<Vec<u8>> {
    (0..mib * 4)
        .map(|i| vec![(i % 13) as u8; 256 * 1024])
        .collect()
}

fn dump(path: &Path) -> Result<(), String> {
    let took = heapwarden_probes::dump_profile(path).map_err(|e| e.to_string())?;
    println!("dumped {} in {} us", path.display(), took.as_micros());
    Ok(())
}

fn run(args: &[String]) -> Result<(), String> {
    let (base, leak) = match args {
        [base, leak, ..] => (Path::new(base), Path::new(leak)),
        _ => return Err("usage: leak-dumper BASE_RAW LEAK_RAW [LEAK_MIB] [--hold]".into()),
    };
    let hold = args.last().is_some_and(|a| a == "--hold");
    let leak_mib = match args.get(2).filter(|a| *a != "--hold") {
        Some(n) => n
            .parse()
            .map_err(|_| format!("LEAK_MIB is not a number: {n}"))?,
        None => 64,
    };
    heapwarden_probes::activate_profiling().map_err(|e| e.to_string())?;
    let working_set = std::hint::black_box(baseline_working_set(8));
    dump(base)?;
    leaky_function_for_pprof_test(leak_mib);
    dump(leak)?;
    if hold {
        println!("holding pid {}", std::process::id());
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }
    drop(working_set);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leak-dumper: {e}");
            ExitCode::FAILURE
        }
    }
}
