//! The agent's RSS and CPU with idle workers, and the cost of a sampling round.

use super::*;

/// One idle window: agent memory and CPU, and the sampler's own round timing.
pub(super) struct Window {
    pub(super) rss_mean: f64,
    pub(super) rss_max: f64,
    hwm: f64,
    /// Anonymous (heap, stacks) and file-backed (the mapped binary) parts of VmRSS at the end.
    pub(super) rss_anon: f64,
    pub(super) rss_file: f64,
    pub(super) cpu_percent: f64,
    rounds: f64,
    pub(super) round_mean_ms: f64,
}

pub(super) fn status_kib(pid: u32, field: &str) -> f64 {
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

/// Nanoseconds on a CPU of each thread of `pid` (`/proc/PID/task/TID/schedstat`, first
/// field): unlike `stat`'s 10 ms ticks, precise enough for a process using 0.1 % of a
/// core over a 30 s window.
fn thread_cpu_ns(pid: u32) -> std::collections::HashMap<u32, f64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Default::default();
    };
    tasks
        .filter_map(|t| {
            let tid: u32 = t.ok()?.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")).ok()?;
            Some((tid, text.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// CPU seconds the threads spent between two [`thread_cpu_ns`] readings (a thread that
/// started in between counts whole; one that exited in between is lost, which the agent's
/// steady state does not do: its blocking thread is used every round).
fn cpu_seconds_between(
    before: &std::collections::HashMap<u32, f64>,
    after: &std::collections::HashMap<u32, f64>,
) -> f64 {
    after
        .iter()
        .map(|(tid, ns)| ns - before.get(tid).copied().unwrap_or(0.0))
        .sum::<f64>()
        / 1e9
}

/// How often a window scrapes `/metrics`: a common Prometheus `scrape_interval`.
const SCRAPE_SECONDS: u64 = 15;

pub(super) fn measure_window(
    bench: &Bench,
    spec: &Spec,
    seconds: u64,
    what: &str,
) -> BenchResult<Window> {
    progress(format!("footprint: {what}, {seconds} s window"));
    let agent = Agent::start(bench, spec)?;
    agent.wait_ready(1, Duration::from_secs(60));
    // Let start-up settle so the window sees the steady state only;
    // BENCH_SETTLE_SECONDS=40 also leaves out each worker's baseline heap profile (taken
    // once `warmup`, 30 s, has passed), a one-off cost that is no part of sampling.
    let settle = std::env::var("BENCH_SETTLE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    std::thread::sleep(Duration::from_secs(settle));
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
    let (threads0, t0) = (thread_cpu_ns(pid), Instant::now());
    let mut rss = Vec::new();
    for second in 1..=seconds {
        let next = t0 + Duration::from_secs(second);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        // Scraped as Prometheus would (every SCRAPE_SECONDS): the exposition's code and
        // CPU are part of the agent's steady state.
        if second % SCRAPE_SECONDS == 0 {
            agent.metrics();
        }
        rss.push(status_kib(pid, "VmRSS:") / 1024.0);
    }
    let (threads1, wall) = (thread_cpu_ns(pid), t0.elapsed().as_secs_f64());
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
        cpu_percent: cpu_seconds_between(&threads0, &threads1) / wall * 100.0,
        rounds: count1 - count0,
        round_mean_ms: (sum1 - sum0) / (count1 - count0) * 1000.0,
    })
}

pub(super) fn footprint(bench: &Bench) -> BenchResult<()> {
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
