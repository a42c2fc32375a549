//! Leak detection latency and heap-profile dump + convert time.

use super::*;

/// One "A heap profile was written." record.
pub(super) struct ProfileRecord {
    what: String,
    millis: f64,
    bytes: f64,
    cli_millis: Option<f64>,
    /// `Some(outcome)` for "A heap profile was not written." records.
    failed: Option<String>,
}

pub(super) fn profile_records(
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

pub(super) fn detection(bench: &Bench) -> BenchResult<Vec<ProfileRecord>> {
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
pub(super) fn detection_run(bench: &Bench, spec: &Spec) -> BenchResult<(String, Vec<Value>)> {
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
pub(super) fn fitted_rate(points: &[(f64, f64)]) -> Option<f64> {
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

pub(super) fn dumps(bench: &Bench) -> BenchResult<Vec<ProfileRecord>> {
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

pub(super) fn profile_table(profiles: &[ProfileRecord]) {
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
