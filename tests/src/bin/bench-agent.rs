//! `bench-agent`: measures the release agent from the outside and prints markdown tables —
//! start-up time, restart latency after a crash, the agent's own footprint, the cost of a
//! sampling round, leak-detection latency and heap-profile dump + convert time.
//!
//! Run it through `bench/agent.sh` (builds the release binaries first). Flags:
//! `--quick` shortens every scenario for a smoke run (its figures are not the reference
//! ones); `--only startup,restart,footprint,detection,dump` runs a subset.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use heapwarden_tests::{Proc, free_port, msg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

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
    if wanted("footprint") {
        footprint(&bench)?;
    }
    if wanted("detection") {
        profiles.extend(detection(&bench)?);
    }
    if wanted("dump") {
        profiles.extend(dumps(&bench)?);
        profile_table(&profiles);
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
    workers: usize,
    command: Vec<String>,
    env: Vec<(&'static str, String)>,
    min_uptime: &'static str,
    initial_delay: &'static str,
    sections: String,
}

impl Spec {
    fn probe(bench: &Bench, workers: usize) -> Spec {
        Spec {
            workers,
            command: vec![bench.probe_worker()],
            env: Vec::new(),
            min_uptime: "1s",
            initial_delay: "100ms",
            sections: String::new(),
        }
    }
}

/// A running `heapwarden run` in its own temporary state directory.
struct Agent {
    proc: Proc,
    admin: SocketAddr,
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
        let command: Vec<String> = spec.command.iter().map(|a| format!("{a:?}")).collect();
        let env: String = spec
            .env
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}\n"))
            .collect();
        let text = format!(
            "state-dir = {state:?}\n[admin]\nlisten = \"{admin}\"\n[pool]\nworkers = {}\nlisten = \"127.0.0.1:{}\"\n\
             command = [{}]\nmin-uptime = \"{}\"\n[pool.env]\n{env}[pool.restart]\nmax-restarts = 1000\n\
             initial-delay = \"{}\"\n{}\n",
            spec.workers,
            free_port(),
            command.join(", "),
            spec.min_uptime,
            spec.initial_delay,
            spec.sections,
        );
        let config = dir.path().join("heapwarden.toml");
        std::fs::write(&config, text)?;
        let mut command = Command::new(bench.heapwarden());
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
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        status,
        response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
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

// ---------------------------------------------------------------------------- start-up

fn startup(bench: &Bench) -> BenchResult<()> {
    let runs = if bench.quick { 2 } else { 5 };
    println!("## Start-up: spawn of `heapwarden run` → \"Every worker is ready.\"\n");
    println!("| probe-workers | runs | median ms | min ms | max ms |\n|---:|---:|---:|---:|---:|");
    for workers in [8, 16] {
        let mut times = Vec::new();
        for run in 0..runs {
            progress(format!(
                "start-up: {workers} workers, run {}/{runs}",
                run + 1
            ));
            let agent = Agent::start(bench, &Spec::probe(bench, workers))?;
            let ready = agent.wait_ready(1, Duration::from_secs(60));
            times.push((ready - agent.spawned) * 1000.0);
            agent.stop();
        }
        let (lo, hi) = (percentile(&times, 0.0), percentile(&times, 1.0));
        println!(
            "| {workers} | {runs} | {:.0} | {lo:.0} | {hi:.0} |",
            median(&times)
        );
    }
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------- restart

fn restart_latency(bench: &Bench) -> BenchResult<()> {
    let kills = if bench.quick { 10 } else { 50 };
    println!("## Restart after a crash: SIGKILL of the only probe-worker, {kills} times\n");
    println!(
        "| initial-delay | kills | kill → \"A worker started.\" p50 / p99 ms | kill → ready (agent log) p50 / p99 ms \
         | kill → ready (API, 5 ms poll) p50 / p99 ms |\n|---|---:|---:|---:|---:|"
    );
    for delay in ["100ms", "0ms"] {
        let mut spec = Spec::probe(bench, 1);
        spec.initial_delay = delay;
        spec.min_uptime = "200ms";
        let agent = Agent::start(bench, &spec)?;
        agent.wait_ready(1, Duration::from_secs(30));
        let (mut started, mut ready_log, mut ready_api) = (Vec::new(), Vec::new(), Vec::new());
        for kill_no in 0..kills {
            progress(format!(
                "restart: initial-delay {delay}, kill {}/{kills}",
                kill_no + 1
            ));
            // Past min-uptime, so the backoff is reset and this restart uses the initial delay.
            let pid = poll_row(&agent, Duration::from_secs(20), |r| {
                r["ready"] == true && r["uptime_seconds"].as_f64().unwrap_or(0.0) >= 0.3
            })
            .and_then(|r| r["pid"].as_i64())
            .ok_or("the worker did not become ready")? as i32;
            let (t0_epoch, t0) = (now_epoch(), Instant::now());
            kill(Pid::from_raw(pid), Signal::SIGKILL)?;
            let row = poll_row(&agent, Duration::from_secs(20), |r| {
                r["ready"] == true && r["pid"].as_i64().is_some_and(|p| p as i32 != pid)
            })
            .ok_or("no replacement became ready")?;
            ready_api.push(t0.elapsed().as_secs_f64() * 1000.0);
            let new_pid = row["pid"].clone();
            let start =
                agent
                    .proc
                    .logs
                    .wait_for(Duration::from_secs(10), "the replacement's start", |r| {
                        r["msg"] == "A worker started." && r["pid"] == new_pid
                    });
            started.push((ts(&start) - t0_epoch) * 1000.0);
            ready_log
                .push((agent.wait_ready(kill_no + 2, Duration::from_secs(10)) - t0_epoch) * 1000.0);
        }
        agent.stop();
        let pair = |v: &[f64]| format!("{:.1} / {:.1}", percentile(v, 0.5), percentile(v, 0.99));
        println!(
            "| {delay} | {kills} | {} | {} | {} |",
            pair(&started),
            pair(&ready_log),
            pair(&ready_api)
        );
    }
    println!("\np99 of 50 samples is the slowest one (nearest rank).\n");
    Ok(())
}

/// Polls `/api/v1/workers` every 5 ms until slot 0's row satisfies `done`.
fn poll_row(agent: &Agent, timeout: Duration, done: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(row) = agent.worker_row(0).filter(|r| done(r)) {
            return Some(row);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

// ---------------------------------------------------------------------------- footprint

/// One idle window: agent memory and CPU, and the sampler's own round timing.
struct Window {
    rss_mean: f64,
    rss_max: f64,
    hwm: f64,
    /// Anonymous (heap, stacks) and file-backed (the mapped binary) parts of VmRSS at the end.
    rss_anon: f64,
    rss_file: f64,
    cpu_percent: f64,
    rounds: f64,
    round_mean_ms: f64,
}

fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(field)
                    .map(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .flatten()
        .unwrap_or(f64::NAN)
}

/// utime + stime of `pid`, in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(f64::NAN)
}

fn measure_window(bench: &Bench, spec: &Spec, seconds: u64, what: &str) -> BenchResult<Window> {
    progress(format!("footprint: {what}, {seconds} s window"));
    let agent = Agent::start(bench, spec)?;
    agent.wait_ready(1, Duration::from_secs(60));
    // Let start-up settle so the window sees the steady state only.
    std::thread::sleep(Duration::from_secs(2));
    let pid = agent.proc.child.id();
    let rounds = |body: Option<String>| {
        let body = body.unwrap_or_default();
        let sum = metric(&body, "heapwarden_sample_duration_seconds_sum").unwrap_or(f64::NAN);
        (
            sum,
            metric(&body, "heapwarden_sample_duration_seconds_count").unwrap_or(f64::NAN),
        )
    };
    let (sum0, count0) = rounds(agent.metrics());
    let (cpu0, t0) = (cpu_ticks(pid), Instant::now());
    let mut rss = Vec::new();
    for second in 1..=seconds {
        let next = t0 + Duration::from_secs(second);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        rss.push(status_kib(pid, "VmRSS:") / 1024.0);
    }
    let (cpu1, wall) = (cpu_ticks(pid), t0.elapsed().as_secs_f64());
    let hwm = status_kib(pid, "VmHWM:") / 1024.0;
    let (rss_anon, rss_file) = (
        status_kib(pid, "RssAnon:") / 1024.0,
        status_kib(pid, "RssFile:") / 1024.0,
    );
    let (sum1, count1) = rounds(agent.metrics());
    agent.stop();
    Ok(Window {
        rss_mean: rss.iter().sum::<f64>() / rss.len().max(1) as f64,
        rss_max: percentile(&rss, 1.0),
        hwm,
        rss_anon,
        rss_file,
        cpu_percent: (cpu1 - cpu0) / bench.clock_ticks / wall * 100.0,
        rounds: count1 - count0,
        round_mean_ms: (sum1 - sum0) / (count1 - count0) * 1000.0,
    })
}

fn footprint(bench: &Bench) -> BenchResult<()> {
    let seconds = if bench.quick { 10 } else { 60 };
    let sleepers = Spec {
        command: vec!["sh".into(), "-c".into(), "sleep 1000".into()],
        ..Spec::probe(bench, 16)
    };
    let mut smaps_every_round = Spec::probe(bench, 16);
    smaps_every_round.sections = "[sampling]\npss-every = 1\n".into();
    let cases = [
        (
            "8 probe-workers",
            8.0,
            Spec::probe(bench, 8),
            seconds,
            "≤ 8 MiB, ≤ 0.2% (PM2 7 daemon: 57 MiB with 8)",
        ),
        (
            "16 probe-workers",
            16.0,
            Spec::probe(bench, 16),
            seconds,
            "≤ 20 MiB, ≤ 1%",
        ),
        (
            "16 `sh -c 'sleep 1000'` (procfs only)",
            16.0,
            sleepers,
            seconds,
            "≤ 20 MiB, ≤ 1%",
        ),
        (
            "16 probe-workers, pss-every = 1",
            16.0,
            smaps_every_round,
            seconds / 4,
            "(sampling-cost variant)",
        ),
    ];
    let mut windows = Vec::new();
    for (what, workers, spec, secs, target) in cases {
        windows.push((
            what,
            workers,
            measure_window(bench, &spec, secs, what)?,
            secs,
            target,
        ));
    }
    println!("## Agent footprint: idle workers, sampled every 1 s\n");
    println!(
        "| workers | window s | VmRSS mean MiB | VmRSS max MiB | VmHWM MiB | RssAnon / RssFile MiB | CPU % of one core | target |\n\
         |---|---:|---:|---:|---:|---:|---:|---|"
    );
    for (what, _, w, secs, target) in windows.iter().take(3) {
        println!(
            "| {what} | {secs} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {:.3} | {target} |",
            w.rss_mean, w.rss_max, w.hwm, w.rss_anon, w.rss_file, w.cpu_percent
        );
    }
    println!(
        "\n## Sampling round cost (`heapwarden_sample_duration_seconds` sum / count over the window)\n"
    );
    println!("| workers | rounds | mean round ms | per worker µs |\n|---|---:|---:|---:|");
    for (what, workers, w, _, _) in &windows {
        println!(
            "| {what} | {:.0} | {:.3} | {:.1} |",
            w.rounds,
            w.round_mean_ms,
            w.round_mean_ms * 1000.0 / workers
        );
    }
    if let (Some(p10), Some(p1), Some(sh)) = (windows.get(1), windows.get(3), windows.get(2)) {
        // pss-every = 10 reads smaps_rollup in 1 round of 10; pss-every = 1 in every round.
        let smaps = (p1.2.round_mean_ms - p10.2.round_mean_ms) / 0.9 * 1000.0 / 16.0;
        let heap = (p10.2.round_mean_ms - sh.2.round_mean_ms) * 1000.0 / 16.0;
        println!(
            "\nDerived, per worker: smaps_rollup read ≈ {smaps:.1} µs; heap-stats round trip ≈ {heap:.1} µs more than a procfs-only worker."
        );
    }
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------- detection

/// One "A heap profile was written." record.
struct ProfileRecord {
    what: String,
    millis: f64,
    bytes: f64,
    cli_millis: Option<f64>,
    /// `Some(outcome)` for "A heap profile was not written." records.
    failed: Option<String>,
}

fn profile_records(
    records: &[Value],
    what: impl Fn(&Value) -> Option<String>,
) -> Vec<ProfileRecord> {
    records
        .iter()
        .filter_map(|r| {
            let failed = match r["msg"].as_str()? {
                "A heap profile was written." => None,
                "A heap profile was not written." => {
                    progress(format!("a profile was not written: {r}"));
                    Some(r["outcome"].as_str().unwrap_or("?").to_string())
                }
                _ => return None,
            };
            Some(ProfileRecord {
                what: what(r)?,
                millis: r["seconds"].as_f64().map_or(f64::NAN, |s| s * 1000.0),
                bytes: r["bytes"].as_f64().unwrap_or(f64::NAN),
                cli_millis: None,
                failed,
            })
        })
        .collect()
}

fn detection(bench: &Bench) -> BenchResult<Vec<ProfileRecord>> {
    let window = if bench.quick { "20s" } else { "60s" };
    println!("## Leak detection: one probe-worker leaking, sampled every 1 s\n");
    println!(
        "Config: `warmup = \"5s\"`, `max-memory = \"{LIMIT_MIB}MiB\"`, `growth = \"off\"`, \
         `trend-window = \"{window}\"`, `trend-min-rate = \"1MiB/min\"` (or `\"off\"`), `action = \"restart\"`; \
         heap = `heapwarden_worker_heap_allocated_bytes{{worker=\"0\"}}` polled every 100 ms.\n"
    );
    println!(
        "| leak | held at start | trend rule | ready → trip s | rule | heap at trip MiB | fitted rate MiB/s \
         | crossing → tripping sample s | first /metrics ≥ {LIMIT_MIB} MiB → trip log s | peak heap seen MiB |\n\
         |---|---:|---|---:|---|---:|---:|---:|---:|---:|"
    );
    let runs = [
        (1.0, 0, true),
        (10.0, 0, true),
        (1.0, 180, false),
        (10.0, 0, false),
    ];
    let mut profiles = Vec::new();
    for (rate, hold, trend) in runs {
        let trend_text = if trend { "on" } else { "off" };
        progress(format!(
            "detection: {rate} MiB/s, hold {hold} MiB, trend {trend_text}"
        ));
        let mut spec = Spec::probe(bench, 1);
        spec.env = vec![
            ("PROBE_WORKER_LEAK_MIB_PER_SEC", rate.to_string()),
            ("PROBE_WORKER_HOLD_MIB", hold.to_string()),
        ];
        spec.sections = format!(
            "[watchdog]\nwarmup = \"5s\"\nmax-memory = \"{LIMIT_MIB}MiB\"\ngrowth = \"off\"\n\
             trend-window = \"{window}\"\ntrend-min-rate = \"{}\"\n",
            if trend { "1MiB/min" } else { "off" }
        );
        let label = format!("| {rate} MiB/s | {hold} MiB | {trend_text} |");
        let (row, records) = detection_run(bench, &spec)?;
        println!("{label} {row}");
        profiles.extend(profile_records(&records, |r| {
            Some(format!(
                "{}, watchdog (the 4 leak runs above)",
                r["trigger"].as_str()?
            ))
        }));
    }
    println!(
        "| PM2 `max_memory_restart` (comparison: checks every 30 s) | | | | | | | ≈ 12 (up to 30) | | 321 |\n\n\
         \"Crossing → tripping sample\" = (heap at trip − {LIMIT_MIB} MiB) / fitted rate: how long the heap had been \
         over the limit when the sample that tripped was taken (the fitted rate is a least-squares slope through \
         the distinct heap values seen on /metrics). \"First /metrics ≥ limit → trip log\": the trip record's `ts` \
         minus the first poll that showed the heap over the limit (negative: the trip was logged before the \
         scrape saw the value). \"—\": the trend rule tripped below the limit.\n"
    );
    Ok(profiles)
}

/// One leak run: the table cells after the run's label, and the agent's log records.
fn detection_run(bench: &Bench, spec: &Spec) -> BenchResult<(String, Vec<Value>)> {
    let agent = Agent::start(bench, spec)?;
    let ready = agent.wait_ready(1, Duration::from_secs(30));
    let trip_msg = msg("A leak rule tripped.");
    let mut seen: Vec<(f64, f64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut after_trip = None;
    // Keeps polling 2 s past the trip, so the scrape that shows the tripping sample is seen.
    while after_trip.is_none_or(|t: Instant| t.elapsed() < Duration::from_secs(2))
        && Instant::now() < deadline
    {
        let heap = agent
            .metrics()
            .and_then(|b| metric(&b, "heapwarden_worker_heap_allocated_bytes{worker=\"0\"}"));
        if let Some(heap) = heap.filter(|h| seen.last().is_none_or(|(_, last)| last != h)) {
            seen.push((now_epoch(), heap / MIB));
        }
        if after_trip.is_none() && !agent.proc.logs.matching(&trip_msg).is_empty() {
            after_trip = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(trip) = agent.proc.logs.matching(&trip_msg).into_iter().next() else {
        let log =
            std::env::temp_dir().join(format!("bench-agent-no-trip-{}.log", std::process::id()));
        std::fs::write(&log, agent.proc.logs.raw())?;
        let last = seen.last().map(|(_, h)| *h).unwrap_or(f64::NAN);
        agent.stop();
        return Ok((
            format!(
                "no trip in 150 s (last heap {last:.1} MiB; agent log: {}) | | | | | | |",
                log.display()
            ),
            Vec::new(),
        ));
    };
    agent.proc.logs.wait_for(
        Duration::from_secs(60),
        "the leak report",
        msg("A memory leak was detected."),
    );
    let records = agent.stop();
    let trip_at = ts(&trip);
    let trip_mib = trip["bytes"].as_f64().unwrap_or(f64::NAN) / MIB;
    let crossed = trip_mib >= LIMIT_MIB;
    // The rate from the leaking worker's own values: up to the peak, before its replacement.
    let peak_at = seen
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.1.total_cmp(&b.1.1))
        .map_or(0, |(i, _)| i);
    let rate = seen.get(..=peak_at).and_then(fitted_rate);
    let fmt = |v: Option<f64>| {
        v.filter(|x| x.is_finite())
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "—".into())
    };
    let over_for = rate.map(|r| (trip_mib - LIMIT_MIB) / r).filter(|_| crossed);
    let first_over = seen
        .iter()
        .find(|(_, h)| *h >= LIMIT_MIB)
        .map(|(t, _)| trip_at - t)
        .filter(|_| crossed);
    let peak = seen.iter().map(|(_, h)| *h).fold(f64::NAN, f64::max);
    let row = format!(
        "{:.2} | {} | {trip_mib:.1} | {} | {} | {} | {peak:.1} |",
        trip_at - ready,
        trip["rule"].as_str().unwrap_or("?"),
        fmt(rate),
        fmt(over_for),
        fmt(first_over),
    );
    Ok((row, records))
}

/// Least-squares slope (value units per second) through `(time, value)` points.
fn fitted_rate(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let (mt, mv) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (t, v)| (a + t / n, b + v / n));
    let (cov, var) = points.iter().fold((0.0, 0.0), |(c, s), (t, v)| {
        (c + (t - mt) * (v - mv), s + (t - mt) * (t - mt))
    });
    (var > 0.0).then(|| cov / var)
}

// ---------------------------------------------------------------------------- dumps

fn dumps(bench: &Bench) -> BenchResult<Vec<ProfileRecord>> {
    let reps = if bench.quick { 2 } else { 5 };
    let mut spec = Spec::probe(bench, 2);
    // Slot 0 holds 30 MiB, slot 1 holds 200 MiB.
    spec.command = vec![
        "sh".into(),
        "-c".into(),
        format!(
            "PROBE_WORKER_HOLD_MIB=$((30 + HEAPWARDEN_WORKER_SLOT * 170)) exec {:?}",
            bench.probe_worker()
        ),
    ];
    spec.sections = "[watchdog]\nwarmup = \"1h\"\n".into();
    let agent = Agent::start(bench, &spec)?;
    agent.wait_ready(1, Duration::from_secs(30));
    let mut cli = [Vec::new(), Vec::new()];
    for rep in 0..reps {
        for (slot, times) in cli.iter_mut().enumerate() {
            progress(format!("dump: slot {slot}, {}/{reps}", rep + 1));
            let started = Instant::now();
            let out = Command::new(bench.heapwarden())
                .args(["dump", &slot.to_string(), "--json", "-c"])
                .arg(&agent.config)
                .output()?;
            if !out.status.success() {
                return Err(format!(
                    "heapwarden dump {slot} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    agent.proc.logs.wait_for_n(
        2 * reps,
        Duration::from_secs(10),
        "manual profiles",
        msg("A heap profile was written."),
    );
    let records = agent.stop();
    let mut profiles = profile_records(&records, |r| {
        let held = if r["worker"] == 0 { 30 } else { 200 };
        (r["trigger"] == "manual").then(|| format!("manual, `heapwarden dump` ({held} MiB held)"))
    });
    for p in &mut profiles {
        let slot = usize::from(p.what.contains("200 MiB"));
        p.cli_millis = Some(median(&cli[slot]));
    }
    Ok(profiles)
}

fn profile_table(profiles: &[ProfileRecord]) {
    println!(
        "## Heap profile: dump (in the worker) + convert/symbolize (helper process) + store\n"
    );
    println!(
        "| profile | written | median ms | min – max ms | `heapwarden dump` wall ms (median) | median stored KiB | not written |\n\
         |---|---:|---:|---:|---:|---:|---|"
    );
    let mut kinds: Vec<&str> = profiles.iter().map(|p| p.what.as_str()).collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        let (written, failed): (Vec<&ProfileRecord>, Vec<&ProfileRecord>) = profiles
            .iter()
            .filter(|p| p.what == kind)
            .partition(|p| p.failed.is_none());
        let ms: Vec<f64> = written.iter().map(|p| p.millis).collect();
        let kib: Vec<f64> = written.iter().map(|p| p.bytes / 1024.0).collect();
        let cli = written
            .iter()
            .find_map(|p| p.cli_millis)
            .map(|c| format!("{c:.0}"))
            .unwrap_or_else(|| "—".into());
        let failed: Vec<&str> = failed.iter().filter_map(|p| p.failed.as_deref()).collect();
        println!(
            "| {kind} | {} | {:.0} | {:.0} – {:.0} | {cli} | {:.1} | {} |",
            written.len(),
            median(&ms),
            percentile(&ms, 0.0),
            percentile(&ms, 1.0),
            median(&kib),
            if failed.is_empty() {
                "0".to_string()
            } else {
                format!("{} ({})", failed.len(), failed.join(", "))
            },
        );
    }
    println!();
}
