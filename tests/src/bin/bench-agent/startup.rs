//! Start-up time and restart latency after a crash.

use super::*;

pub(super) fn startup(bench: &Bench) -> BenchResult<()> {
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

pub(super) fn restart_latency(bench: &Bench) -> BenchResult<()> {
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
pub(super) fn poll_row(
    agent: &Agent,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(row) = agent.worker_row(0).filter(|r| done(r)) {
            return Some(row);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}
