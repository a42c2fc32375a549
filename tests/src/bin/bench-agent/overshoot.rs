//! The predicted rule's overshoot table: workers leaking at 1, 5, 10 and 20 MiB/s against
//! a 200 MiB `max-memory` (every other setting at its default), replaced again and again
//! (4 slots leaking at once, staggered by what they hold at start: 40–70 MiB, 130–160 MiB
//! for the 1 MiB/s row) under a client loop;
//! for each replaced worker, its peak watched figure, the rule that tripped, the
//! prediction's lead and the measured trip → exit time. Rows for the Rust probe-worker
//! (peak = its own `stats.allocated` at exit), a Node worker (`heapUsed + external` at
//! exit) and a native (LD_PRELOAD) C worker (peak extrapolated from the tripping sample
//! at the leak's rate to the exit), the same 10 MiB/s leak with `predict = "off"`, and the
//! Rust 20 MiB/s leak with the fast lane off (`fast-interval` = `interval`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use heapwarden_tests::ClientLoop;

use super::*;

const SLOTS: usize = 4;

/// How the agent acts on the leak.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// The defaults: the predicted rule, with the fast lane.
    Predict,
    /// The predicted rule on full rounds only (`fast-interval = "1s"`).
    NoLane,
    /// `predict = "off"`: `max-memory` alone.
    Off,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Predict => "on",
            Mode::NoLane => "on, fast lane off",
            Mode::Off => "off",
        }
    }

    fn sections(self) -> &'static str {
        match self {
            Mode::Predict => "predict = \"on\"\n",
            Mode::NoLane => "predict = \"on\"\n[sampling]\nfast-interval = \"1s\"\n",
            Mode::Off => "predict = \"off\"\n",
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Rust,
    Node,
    Native,
}

impl Kind {
    /// Its name in `BENCH_OVERSHOOT_WORKERS`.
    fn key(self) -> &'static str {
        match self {
            Kind::Rust => "rust",
            Kind::Node => "node",
            Kind::Native => "native",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Rust => "Rust probe-worker",
            Kind::Node => "Node (`app.js`, Buffer leak)",
            Kind::Native => "C under `probe = \"native\"`",
        }
    }
}

/// One replaced worker.
struct Replaced {
    rule: String,
    trip_mib: f64,
    peak_mib: f64,
    eta: Option<f64>,
    horizon: Option<f64>,
    trip_to_exit: f64,
}

pub(super) fn overshoot(bench: &Bench) -> BenchResult<()> {
    println!("## Acting ahead: peak of the replaced worker against a {LIMIT_MIB} MiB max-memory\n");
    println!(
        "Config: defaults (1 s sampling, 250 ms in the fast lane, `predict = \"on\"`, `predict-margin = 2.0`, \
         `predict-samples = 3`, `predict-level = 0.5`) but `max-memory = \"{LIMIT_MIB}MiB\"`, {SLOTS} slots leaking at once \
         (`max-concurrent-replacements = {SLOTS}`), a client loop of 2 threads on the service (not for the C \
         worker, which serves nothing). Peak: the old worker's watched figure when it exits (a leak only grows).\n"
    );
    println!(
        "| worker | leak MiB/s | predict | runs | peak ≤ {LIMIT_MIB} MiB | peak median / max MiB | rules | figure at trip median MiB \
         | predicted s to limit at trip (median) | horizon s | trip → old worker gone s median / max | failed requests / served |\n\
         |---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"
    );
    let c_worker = compile_c_worker()?;
    // BENCH_OVERSHOOT_RUNS: runs of every row but the 10 MiB/s ones (8 by default).
    let others: usize = std::env::var("BENCH_OVERSHOOT_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(8);
    let runs = |rate: f64| match (bench.quick, rate == 10.0) {
        (true, _) => 4,
        (false, true) => 20,
        (false, false) => others,
    };
    let mut cases: Vec<(Kind, f64, Mode)> = [1.0, 5.0, 10.0, 20.0]
        .into_iter()
        .map(|rate| (Kind::Rust, rate, Mode::Predict))
        .collect();
    cases.push((Kind::Rust, 20.0, Mode::NoLane));
    cases.push((Kind::Rust, 10.0, Mode::Off));
    for kind in [Kind::Node, Kind::Native] {
        cases.push((kind, 10.0, Mode::Predict));
        cases.push((kind, 20.0, Mode::Predict));
    }
    // BENCH_OVERSHOOT_RATES=10,20 limits the rows (a smoke run).
    if let Ok(rates) = std::env::var("BENCH_OVERSHOOT_RATES") {
        let rates: Vec<f64> = rates
            .split(',')
            .filter_map(|r| r.trim().parse().ok())
            .collect();
        cases.retain(|(_, rate, _)| rates.contains(rate));
    }
    // BENCH_OVERSHOOT_WORKERS=node,native limits the rows to those workers (rust, node,
    // native).
    if let Ok(kinds) = std::env::var("BENCH_OVERSHOOT_WORKERS") {
        let kinds: Vec<String> = kinds.split(',').map(|k| k.trim().to_lowercase()).collect();
        cases.retain(|(kind, _, _)| kinds.iter().any(|k| *k == kind.key()));
    }
    let preload = bench
        .heapwarden()
        .with_file_name("libheapwarden_preload.so");
    if cases.iter().any(|(kind, _, _)| *kind == Kind::Native) && !preload.is_file() {
        // Without it the C worker runs probe-less, watched on PSS: rows of another thing.
        return Err(format!(
            "{} is missing: build it with `cargo build --release -p heapwarden-preload-build`",
            preload.display()
        )
        .into());
    }
    for (kind, rate, mode) in cases {
        let wanted = if mode == Mode::Predict {
            runs(rate)
        } else {
            runs(1.0)
        };
        progress(format!(
            "overshoot: {} at {rate} MiB/s, predict {}, {wanted} runs",
            kind.name(),
            mode.label()
        ));
        let (replaced, failed, served) = leak_runs(bench, kind, rate, mode, wanted, &c_worker)?;
        println!("{}", row(kind, rate, mode, &replaced, failed, served));
    }
    println!(
        "| PM2 7 `max_memory_restart` (checks every 30 s; measured for the README) | 10 | | | | 321 max | | | | | ≈ 12 (up to 30) after the crossing | |\n"
    );
    Ok(())
}

fn row(
    kind: Kind,
    rate: f64,
    mode: Mode,
    replaced: &[Replaced],
    failed: Option<usize>,
    served: u64,
) -> String {
    let peaks: Vec<f64> = replaced.iter().map(|r| r.peak_mib).collect();
    let under = peaks.iter().filter(|p| **p <= LIMIT_MIB).count();
    let mut rules: HashMap<&str, usize> = HashMap::new();
    for r in replaced {
        *rules.entry(r.rule.as_str()).or_default() += 1;
    }
    let mut rules: Vec<String> = rules.iter().map(|(r, n)| format!("{r} {n}")).collect();
    rules.sort();
    let collect =
        |f: fn(&Replaced) -> Option<f64>| -> Vec<f64> { replaced.iter().filter_map(f).collect() };
    let fmt = |v: f64| {
        if v.is_finite() {
            format!("{v:.2}")
        } else {
            "—".into()
        }
    };
    let exits = collect(|r| Some(r.trip_to_exit));
    format!(
        "| {} | {rate} | {} | {} | **{under} of {}** | {:.1} / {:.1} | {} | {:.1} | {} | {} | {} / {} | {} |",
        kind.name(),
        mode.label(),
        replaced.len(),
        replaced.len(),
        median(&peaks),
        percentile(&peaks, 1.0),
        rules.join(", "),
        median(&collect(|r| Some(r.trip_mib))),
        fmt(median(&collect(|r| r.eta))),
        fmt(median(&collect(|r| r.horizon))),
        fmt(median(&exits)),
        fmt(percentile(&exits, 1.0)),
        failed.map_or_else(
            || "— (no service)".to_string(),
            |f| format!("{f} / {served}")
        ),
    )
}

/// Runs one agent until `wanted` leaking workers were replaced; returns them, the failed
/// requests (None: no client loop) and the requests served.
fn leak_runs(
    bench: &Bench,
    kind: Kind,
    rate: f64,
    mode: Mode,
    wanted: usize,
    c_worker: &Path,
) -> BenchResult<(Vec<Replaced>, Option<usize>, u64)> {
    let mut spec = Spec::probe(bench, SLOTS);
    // Staggered starts: slot n holds base + 10·n MiB (the C worker: its 8 MiB working set);
    // slow leaks start higher so a run takes about a minute.
    let base = if rate < 5.0 { 130 } else { 40 };
    let sh = |line: String| vec!["sh".to_string(), "-c".to_string(), line];
    let (command, env): (Vec<String>, Vec<(&'static str, String)>) = match kind {
        Kind::Rust => (
            sh(format!(
                "PROBE_WORKER_HOLD_MIB=$(({base} + 10 * HEAPWARDEN_WORKER_SLOT)) exec {:?}",
                bench.probe_worker()
            )),
            vec![
                ("PROBE_WORKER_LEAK_MIB_PER_SEC", rate.to_string()),
                ("PROBE_WORKER_REPORT_HEAP", "1".into()),
            ],
        ),
        Kind::Node => (
            // Run as `node` itself: that is what selects the Node probe.
            vec!["node".into(), node_app().display().to_string()],
            vec![
                ("LEAK", "buffer".into()),
                ("LEAK_BYTES", ((rate * MIB / 10.0) as u64).to_string()),
                ("REPORT_HEAP", "1".into()),
            ],
        ),
        Kind::Native => {
            spec.pool_extra = "probe = \"native\"\n".into();
            (
                sh(format!(
                    "LEAK_SLOT=$HEAPWARDEN_WORKER_SLOT exec {:?} leak",
                    c_worker.display().to_string()
                )),
                // LEAK_KIB every 10 ms.
                vec![(
                    "LEAK_KIB",
                    ((rate * 1024.0 / 100.0).round() as u64).to_string(),
                )],
            )
        }
    };
    spec.command = command;
    spec.env = env;
    spec.min_uptime = "200ms";
    spec.sections = format!(
        "[watchdog]\nmax-memory = \"{LIMIT_MIB}MiB\"\nmax-concurrent-replacements = {SLOTS}\n\
         max-leak-restarts-per-hour = 1000\n{}",
        mode.sections()
    );
    let agent = Agent::start(bench, &spec)?;
    agent.wait_ready(1, Duration::from_secs(60));
    let clients =
        (kind != Kind::Native).then(|| ClientLoop::start(agent.service, 2, |_| "/".into()));
    let trip_msg = msg("A leak rule tripped.");
    let deadline = Instant::now()
        + Duration::from_secs(60 + (wanted as f64 * 250.0 / rate / SLOTS as f64) as u64 * 2);
    let gone = |records: &[Value], pid: &Value| records.iter().any(|r| is_exit_of(r, pid));
    loop {
        let records = agent.proc.logs.records();
        let done = records
            .iter()
            .filter(|r| trip_msg(r) && gone(&records, &r["pid"]))
            .count();
        if done >= wanted || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let (failed, served) = match clients {
        Some(c) => {
            let served = c.ok.load(Ordering::Relaxed);
            let (_, failed) = c.finish();
            (Some(failed.len()), served)
        }
        None => (None, 0),
    };
    let records = agent.stop();
    let mut replaced = Vec::new();
    for trip in records.iter().filter(|r| trip_msg(r)).take(wanted) {
        let pid = &trip["pid"];
        let exit_of = |m: &str| records.iter().find(|r| r["pid"] == *pid && r["msg"] == m);
        let Some(exited) = records.iter().find(|r| is_exit_of(r, pid)) else {
            continue;
        };
        let trip_mib = trip["bytes"].as_f64().unwrap_or(f64::NAN) / MIB;
        let trip_to_exit = ts(exited) - ts(trip);
        let reported = exit_of("probe-worker exits.")
            .and_then(|r| r["fields"]["heap_allocated"].as_f64())
            .or_else(|| {
                exit_of("node worker exits.")
                    .and_then(|r| r["fields"]["heap_used_plus_external"].as_f64())
            });
        let peak_mib = match reported {
            Some(bytes) => bytes / MIB,
            // The C worker: the tripping sample plus the leak until it was gone.
            None => trip_mib + rate * trip_to_exit,
        };
        replaced.push(Replaced {
            rule: trip["rule"].as_str().unwrap_or("?").to_string(),
            trip_mib,
            peak_mib,
            eta: trip["seconds_to_limit"].as_f64(),
            horizon: trip["horizon_seconds"].as_f64(),
            trip_to_exit,
        });
    }
    Ok((replaced, failed, served))
}

/// Whether `record` says the worker `pid` is gone: the agent's lines (a drained worker's
/// own, since a drain is never logged as a crash) or the worker's last line.
fn is_exit_of(record: &Value, pid: &Value) -> bool {
    record["pid"] == *pid
        && matches!(
            record["msg"].as_str(),
            Some(
                "A worker exited."
                    | "A drained worker has exited."
                    | "A worker was killed by a signal."
                    | "probe-worker exits."
                    | "node worker exits."
            )
        )
}

fn node_app() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node/app.js")
}

/// The native tests' C worker, compiled once into the temp dir against the preload's
/// header (`probes/preload/include/heapwarden.h`), as the tests compile it.
fn compile_c_worker() -> BenchResult<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = manifest.join("native/worker.c");
    let include = manifest.join("../probes/preload/include");
    let out = std::env::temp_dir().join(format!("bench-agent-c-worker-{}", std::process::id()));
    let status = Command::new("cc")
        .args(["-O1", "-g", "-Wall", "-I"])
        .arg(&include)
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .status()?;
    if !status.success() {
        return Err(format!("cc {} failed", source.display()).into());
    }
    Ok(out)
}
