//! Benchmark of the heap-profile pipeline: a worker (`leak-dumper`) holding ~30 MB and
//! ~200 MB dumps its raw jemalloc profile, and `heapwarden __convert-profile` (the helper
//! the agent spawns) converts it to symbolized pprof. Prints one table row per size: raw
//! dump size and time, conversion time, output size, and the helper's peak RSS (its own
//! `VmHWM`, reported in the summary it prints).
//!
//! Build the binaries in the same profile first, then run the example:
//! `cargo build -p heapwarden -p heapwarden-tests --bins && cargo run -p heapwarden --example bench_profiles`

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    // target/<profile>/examples/bench_profiles → target/<profile>/<name>
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .expect("example lives in target/<profile>/examples")
}

struct Row {
    label: &'static str,
    raw_bytes: u64,
    dump_us: u64,
    convert_ms: u128,
    helper_reported_ms: u64,
    out_bytes: u64,
    helper_rss_kib: i64,
}

fn bench(label: &'static str, leak_mib: u64, dir: &Path) -> Result<Row, String> {
    let (base, raw, out) = (
        dir.join("b.raw"),
        dir.join(format!("{label}.raw")),
        dir.join(format!("{label}.pb.gz")),
    );
    let dumper = Command::new(sibling("leak-dumper"))
        .arg(&base)
        .arg(&raw)
        .arg(leak_mib.to_string())
        .output()
        .map_err(|e| format!("leak-dumper: {e}"))?;
    let text = String::from_utf8_lossy(&dumper.stdout);
    // "dumped PATH in N us" for the second (post-leak) dump.
    let dump_us = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("unexpected leak-dumper output: {text}"))?;
    let started = Instant::now();
    let measured = Command::new(sibling("heapwarden"))
        .args(["__convert-profile", "--raw"])
        .arg(&raw)
        .arg("--out")
        .arg(&out)
        .output()
        .map_err(|e| e.to_string())?;
    let convert_ms = started.elapsed().as_millis();
    let text = String::from_utf8_lossy(&measured.stdout);
    let summary: serde_json::Value = text
        .lines()
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| {
            format!(
                "no summary: {text}{}",
                String::from_utf8_lossy(&measured.stderr)
            )
        })?;
    let helper_rss_kib = summary["peak_rss_kib"].as_i64().unwrap_or(-1);
    Ok(Row {
        label,
        raw_bytes: summary["raw_bytes"].as_u64().unwrap_or(0),
        dump_us,
        convert_ms,
        helper_reported_ms: summary["elapsed_ms"].as_u64().unwrap_or(0),
        out_bytes: summary["out_bytes"].as_u64().unwrap_or(0),
        helper_rss_kib,
    })
}

fn main() -> ExitCode {
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "| worker heap | raw dump | dump time | convert (wall, incl. spawn) | convert (helper) | .pb.gz | helper peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|");
    // The worker holds an 8 MiB baseline plus the leak.
    for (label, leak_mib) in [("~30MB", 22), ("~200MB", 192)] {
        match bench(label, leak_mib, dir.path()) {
            Ok(r) => println!(
                "| {} | {} B | {} µs | {} ms | {} ms | {} B | {} MiB |",
                r.label,
                r.raw_bytes,
                r.dump_us,
                r.convert_ms,
                r.helper_reported_ms,
                r.out_bytes,
                r.helper_rss_kib / 1024
            ),
            Err(e) => {
                eprintln!("bench {label}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
