//! A Rust worker's C libraries allocate from the probe's jemalloc: the demo's SQLite (an
//! in-memory database seeded with [`SEED_ROWS`] rows, a few tens of MiB of SQLite pages)
//! is in the worker's `heap_allocated` and in its heap profile, under SQLite's own
//! functions. While the preload library shared the root workspace, cargo's feature
//! unification gave the demo a `_rjem_`-prefixed jemalloc, and SQLite allocated from the
//! C library's malloc, outside both: run against that demo (09be8e5's release build),
//! this test fails with no `sqlite3` function in the profile at all.
#![forbid(unsafe_code)]

mod native_support;

use std::time::Duration;

use heapwarden_tests::{AgentConfig, Sandbox, TimeoutGuard, cli_json, poll, wait_until_ok};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MIB: f64 = 1024.0 * 1024.0;

/// Rows in the in-memory `demo_items` table (each ~70 bytes with its index entry).
const SEED_ROWS: &str = "400000";
/// What SQLite must hold, at least, in the profile and the heap figure.
const SQLITE_AT_LEAST: f64 = 12.0 * MIB;

/// A `go tool pprof` size (`26.52MB`, `512kB`, `0`) in bytes.
fn pprof_bytes(cell: &str) -> Option<f64> {
    let split = cell
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(cell.len());
    let (number, unit) = cell.split_at(split);
    let scale = match unit {
        "" | "B" => 1.0,
        "kB" => 1024.0,
        "MB" => MIB,
        "GB" => 1024.0 * MIB,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * scale)
}

/// The largest cumulative size of a function whose name starts with `prefix`, and its
/// name, from `go tool pprof -top -cum`.
fn largest_cum(table: &str, prefix: &str) -> Option<(f64, String)> {
    table
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|row| {
            let cells: Vec<&str> = row.split_whitespace().collect();
            let function = cells.get(5)?;
            function
                .starts_with(prefix)
                .then(|| Some((pprof_bytes(cells[3])?, function.to_string())))?
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
}

#[test]
fn the_demos_sqlite_memory_is_in_its_heap_figures_and_its_profile() {
    let _guard = TimeoutGuard::new("demo_sqlite_heap", SECS(240));
    let sandbox = Sandbox::new();
    let config = AgentConfig::new(1, &[])
        .set("sampling", "interval", "200ms")
        .set("watchdog", "warmup", "1h")
        .set("demo", "database-url", "sqlite::memory:")
        .set("demo", "seed-rows", SEED_ROWS);
    let agent = sandbox.agent(&config.to_string());
    // Ready once seeded: the worker fills the table before it reports ready.
    wait_until_ok(config.admin, "/readyz", SECS(180), &agent.logs);
    let path = sandbox.path().join("heapwarden.toml");
    let cli = |args: &[&str]| {
        cli_json(&path, args).unwrap_or_else(|e| {
            panic!("heapwarden {args:?}: {e}\nagent log:\n{}", agent.logs.raw())
        })
    };
    let heap = poll(SECS(30), "the worker's heap figure", || {
        cli(&["ps"])[0]["heap_allocated_bytes"].as_f64()
    });

    let dump = cli(&["dump", "0"]);
    let id = dump["id"].as_u64().unwrap_or_else(|| panic!("{dump}"));
    let file = sandbox.path().join("sqlite.pb.gz");
    cli(&[
        "pull",
        &id.to_string(),
        "-o",
        file.to_str().expect("utf-8 path"),
    ]);
    let file = file.to_str().expect("utf-8 path");
    let table = native_support::go_pprof(sandbox.path(), &["-top", "-cum", file]);
    let (sqlite, function) = largest_cum(&table, "sqlite3")
        .unwrap_or_else(|| panic!("no sqlite3 function in the profile:\n{table}"));
    println!(
        "heap_allocated {:.1} MiB; largest SQLite frame {function} {:.1} MiB",
        heap / MIB,
        sqlite / MIB
    );
    assert!(
        sqlite >= SQLITE_AT_LEAST,
        "{function} holds {:.1} MiB in the profile, less than {:.0} MiB: SQLite does not \
         allocate from the probe's jemalloc\n{table}",
        sqlite / MIB,
        SQLITE_AT_LEAST / MIB
    );
    assert!(
        heap >= SQLITE_AT_LEAST,
        "heap_allocated {:.1} MiB does not hold SQLite's {:.1} MiB",
        heap / MIB,
        sqlite / MIB
    );
}

#[test]
fn pprof_sizes_parse() {
    assert_eq!(pprof_bytes("0"), Some(0.0));
    assert_eq!(pprof_bytes("512kB"), Some(512.0 * 1024.0));
    assert_eq!(pprof_bytes("1.50MB"), Some(1.5 * MIB));
    assert_eq!(pprof_bytes("12%"), None);
    let table = "Type: inuse_space\n      flat  flat%   sum%        cum   cum%\n\
                 0     0%     0%    20.01MB 80.00%  sqlite3_step\n\
                 1MB  4.00%  4.00%    2MB  8.00%  sqlite3MemMalloc\n";
    let (bytes, name) = largest_cum(table, "sqlite3").expect("a row");
    assert_eq!(name, "sqlite3_step");
    assert!((bytes - 20.01 * MIB).abs() < 1.0);
}
