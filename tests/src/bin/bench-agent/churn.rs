//! Worker churn: crash-looping workers restarted without delay, the agent's start rate and
//! what it holds before and after (descriptors, RSS) — issue 11's "10,429 starts in 37 s
//! left 10,456 fds and 64 MiB RSS".

use super::*;

/// Descriptors and RSS (KiB) of `pid`.
fn holdings(pid: i32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    (fds, rss)
}

fn restarts(agent: &Agent) -> f64 {
    agent
        .metrics()
        .map(|body| {
            body.lines()
                .filter(|l| l.starts_with("heapwarden_worker_restarts_total{"))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0)
}

pub(super) fn churn(bench: &Bench) -> BenchResult<()> {
    let target = if bench.quick { 2_000.0 } else { 10_000.0 };
    let workers = 4;
    println!(
        "## Worker churn: {workers} crash-looping slots, zero backoff, until {target} restarts\n"
    );
    println!(
        "| starts | seconds | starts/s | agent CPU ms/start | fds before → after | RSS KiB before → after |\n\
         |---:|---:|---:|---:|---|---|"
    );
    let dir = tempfile::tempdir()?;
    let stop = dir.path().join("stop");
    std::fs::write(&stop, "")?;
    let spec = Spec {
        agent: None,
        workers,
        command: vec![
            "sh".into(),
            "-c".into(),
            format!("[ -e {} ] && exec sleep 600", stop.display()),
        ],
        env: Vec::new(),
        min_uptime: "100ms",
        initial_delay: "0s",
        pool_extra: String::new(),
        // Continues [pool.restart]: a short window, so a slot never counts as failed.
        sections: "max-delay = \"0s\"\nwindow = \"1s\"\n[log]\nlevel = \"warn\"\n".into(),
    };
    let agent = Agent::start(bench, &spec)?;
    let pid = agent.proc.pid();
    let ready = |agent: &Agent| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while agent.get("/readyz", false).map(|r| r.0) != Some(200) {
            if Instant::now() > deadline {
                return Err("the pool did not become ready");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    };
    ready(&agent)?;
    std::thread::sleep(Duration::from_millis(300));
    let before = holdings(pid);
    let cpu_before = cpu_ticks(pid);
    std::fs::remove_file(&stop)?;
    for child in children(pid) {
        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    }
    let started = Instant::now();
    let mut last_report = Instant::now();
    while restarts(&agent) < target {
        if last_report.elapsed() > Duration::from_secs(5) {
            progress(format!("churn: {} restarts", restarts(&agent)));
            last_report = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let seconds = started.elapsed().as_secs_f64();
    std::fs::write(&stop, "")?;
    let starts = restarts(&agent);
    let cpu_ms = (cpu_ticks(pid) - cpu_before) / bench.clock_ticks * 1000.0;
    ready(&agent)?;
    std::thread::sleep(Duration::from_millis(300));
    let after = holdings(pid);
    println!(
        "| {starts:.0} | {seconds:.1} | {:.0} | {:.2} | {} → {} | {} → {} |\n",
        starts / seconds,
        cpu_ms / starts,
        before.0,
        after.0,
        before.1,
        after.1
    );
    agent.stop();
    Ok(())
}

fn cpu_ticks(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<f64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            // After comm: state is not numeric, so utime/stime are the 11th/12th numbers.
            Some(f.get(10)? + f.get(11)?)
        })
        .unwrap_or(0.0)
}

fn children(pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            found.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    found
}
