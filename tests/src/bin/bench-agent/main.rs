//! `bench-agent`: measures the release agent from the outside and prints markdown tables —
//! start-up time, restart latency after a crash, the agent's own footprint, the cost of a
//! sampling round, leak-detection latency, heap-profile dump + convert time, and worker
//! churn (start rate, descriptors and RSS before/after); with `--only export`, the
//! Pyroscope exporter's push latency and cost (`export`); with `--only export-tls`, that
//! latency and cost over http and over https.
//!
//! Run it through `bench/agent.sh` (builds the release binaries first). Flags:
//! `--quick` shortens every scenario for a smoke run (its figures are not the reference
//! ones); `--only startup,restart,footprint,detection,dump,churn,export` runs a subset;
//! `--only overshoot` (not in the default set) prints the predicted rule's overshoot
//! table (`overshoot`);
//! `--compare NAME=PATH,…` measures the footprint of other `heapwarden` builds next to
//! this one in the same run (`compare`).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use heapwarden_tests::{Proc, free_port, msg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

mod churn;
mod compare;
mod detection;
mod export;
mod footprint;
mod overshoot;
mod startup;

use churn::churn;
use detection::{detection, dumps, profile_table};
use footprint::footprint;
use startup::{restart_latency, startup};

const MIB: f64 = 1024.0 * 1024.0;
const LIMIT_MIB: f64 = 200.0;

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> BenchResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(str::to_string).collect());
    // A comparison is of footprints unless more is asked for.
    let only = only.or_else(|| {
        args.iter()
            .any(|a| a == "--compare")
            .then(|| vec!["footprint".to_string()])
    });
    let builds = args
        .iter()
        .position(|a| a == "--compare")
        .map(|i| compare::parse_builds(args.get(i + 1).map(String::as_str).unwrap_or("")))
        .transpose()?;
    let bench = Bench::new(quick)?;
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|w| w == name));
    println!(
        "# heapwarden agent benchmark{}\n",
        if quick {
            " (--quick: smoke run, not reference figures)"
        } else {
            ""
        }
    );
    println!("{}\n", machine_line());
    let mut profiles = Vec::new();
    if wanted("startup") {
        startup(&bench)?;
    }
    if wanted("restart") {
        restart_latency(&bench)?;
    }
    if let Some(builds) = &builds {
        compare::compare(&bench, builds)?;
    } else if wanted("footprint") {
        footprint(&bench)?;
    }
    if wanted("detection") {
        profiles.extend(detection(&bench)?);
    }
    if wanted("dump") {
        profiles.extend(dumps(&bench)?);
        profile_table(&profiles);
    }
    if wanted("churn") {
        churn(&bench)?;
    }
    // Not in a default run: it takes about 7 minutes and needs wrk.
    if only
        .as_ref()
        .is_some_and(|o| o.iter().any(|w| w == "export"))
    {
        export::export(&bench)?;
    }
    // Not in a default run (about a minute): `--only export-tls`.
    if only
        .as_ref()
        .is_some_and(|o| o.iter().any(|w| w == "export-tls"))
    {
        export::export_tls(&bench)?;
    }
    // Not in the default set (about 10 minutes): `--only overshoot`.
    if only
        .as_ref()
        .is_some_and(|o| o.iter().any(|w| w == "overshoot"))
    {
        overshoot::overshoot(&bench)?;
    }
    Ok(())
}

/// Where the release binaries are, and how long to run.
struct Bench {
    dir: PathBuf,
    quick: bool,
    clock_ticks: f64,
}

impl Bench {
    fn new(quick: bool) -> BenchResult<Bench> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .ok_or("bench-agent has no parent directory")?
            .to_path_buf();
        for name in ["heapwarden", "probe-worker"] {
            if !dir.join(name).exists() {
                return Err(format!(
                    "{} is missing: run bench/agent.sh (cargo build --release --workspace --bins)",
                    dir.join(name).display()
                )
                .into());
            }
        }
        let clock_ticks = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        Ok(Bench {
            dir,
            quick,
            clock_ticks,
        })
    }

    fn probe_worker(&self) -> String {
        self.dir.join("probe-worker").display().to_string()
    }

    fn heapwarden(&self) -> PathBuf {
        self.dir.join("heapwarden")
    }
}

fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Machine: {cpu}, {cores} cores, Linux {}; release build.",
        kernel.trim()
    )
}

/// What to run: a pool of `workers` running `command`, plus whole TOML sections.
struct Spec {
    /// The `heapwarden` to run; None: the one next to bench-agent.
    agent: Option<PathBuf>,
    workers: usize,
    command: Vec<String>,
    env: Vec<(&'static str, String)>,
    min_uptime: &'static str,
    initial_delay: &'static str,
    /// More `[pool]` keys, one per line (`probe = "native"`).
    pool_extra: String,
    sections: String,
}

impl Spec {
    fn probe(bench: &Bench, workers: usize) -> Spec {
        Spec {
            agent: None,
            workers,
            command: vec![bench.probe_worker()],
            env: Vec::new(),
            min_uptime: "1s",
            initial_delay: "100ms",
            pool_extra: String::new(),
            sections: String::new(),
        }
    }
}

/// A running `heapwarden run` in its own temporary state directory.
struct Agent {
    proc: Proc,
    admin: SocketAddr,
    /// The pool's service address (`pool.listen`).
    service: SocketAddr,
    config: PathBuf,
    state: PathBuf,
    /// Wall-clock (epoch seconds) just before the spawn, comparable with log `ts`.
    spawned: f64,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start(bench: &Bench, spec: &Spec) -> BenchResult<Agent> {
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("state");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let service: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let command: Vec<String> = spec.command.iter().map(|a| format!("{a:?}")).collect();
        let env: String = spec
            .env
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}\n"))
            .collect();
        let text = format!(
            "state-dir = {state:?}\n[admin]\nlisten = \"{admin}\"\n[pool]\nworkers = {}\nlisten = \"127.0.0.1:{}\"\n\
             command = [{}]\nmin-uptime = \"{}\"\n{}[pool.env]\n{env}[pool.restart]\nmax-restarts = 1000\n\
             initial-delay = \"{}\"\n{}\n",
            spec.workers,
            service.port(),
            command.join(", "),
            spec.min_uptime,
            spec.pool_extra,
            spec.initial_delay,
            spec.sections,
        );
        let config = dir.path().join("heapwarden.toml");
        std::fs::write(&config, text)?;
        let mut command = Command::new(spec.agent.clone().unwrap_or_else(|| bench.heapwarden()));
        command
            .arg("run")
            .arg("-c")
            .arg(&config)
            .current_dir(dir.path());
        let spawned = now_epoch();
        let proc = Proc::spawn(command);
        Ok(Agent {
            proc,
            admin,
            service,
            config,
            state,
            spawned,
            _dir: dir,
        })
    }

    fn wait_ready(&self, n: usize, timeout: Duration) -> f64 {
        let records = self.proc.logs.wait_for_n(
            n,
            timeout,
            "Every worker is ready.",
            msg("Every worker is ready."),
        );
        ts(&records[n - 1])
    }

    /// SIGTERM, then up to 30 s for the drain; the `Proc` drop SIGKILLs whatever is left.
    fn stop(mut self) -> Vec<Value> {
        self.proc.signal(Signal::SIGTERM);
        let _ = self.proc.wait_exit(Duration::from_secs(30));
        self.proc.logs.records()
    }

    fn get(&self, path: &str, token: bool) -> Option<(u16, String)> {
        let token = if token {
            std::fs::read_to_string(self.state.join("admin-token")).ok()
        } else {
            None
        };
        http_get(self.admin, path, token.as_deref().map(str::trim))
    }

    fn metrics(&self) -> Option<String> {
        self.get("/metrics", false)
            .filter(|(s, _)| *s == 200)
            .map(|(_, b)| b)
    }

    fn worker_row(&self, slot: u64) -> Option<Value> {
        let (status, body) = self.get("/api/v1/workers", true)?;
        let rows: Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
        rows.as_array()?.iter().find(|r| r["slot"] == slot).cloned()
    }
}

fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    heapwarden_tests::http_request(addr, "GET", path, token, b"", Duration::from_secs(5)).ok()
}

fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .and_then(|(_, v)| v.parse().ok())
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The agent's RFC 3339 UTC `ts` (e.g. 2026-11-22T15:31:21.4099614Z) as epoch seconds.
fn ts(record: &Value) -> f64 {
    let parse = |text: &str| -> Option<f64> {
        let (date, time) = text.trim_end_matches('Z').split_once('T')?;
        let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
        let (y, m, day) = (d.next()??, d.next()??, d.next()??);
        let mut t = time.split(':').map(|p| p.parse::<f64>().ok());
        let (h, min, s) = (t.next()??, t.next()??, t.next()??);
        // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
        let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
        Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
    };
    record["ts"].as_str().and_then(parse).unwrap_or(f64::NAN)
}

/// Nearest-rank percentile (p in 0..=1); the median of an even count averages the middle two.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    if p == 0.5 && v.len().is_multiple_of(2) {
        return (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0;
    }
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn median(values: &[f64]) -> f64 {
    percentile(values, 0.5)
}

fn progress(text: impl AsRef<str>) {
    eprintln!("[bench-agent] {}", text.as_ref());
}
