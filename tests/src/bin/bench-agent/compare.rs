//! `--compare NAME=PATH,…`: the agent footprint of other `heapwarden` builds (an older
//! release, a jemalloc variant) next to this one, in one run; each runs the
//! `probe-worker` beside it when there is one (a whole older build), else this tree's. Each case measures every
//! build in turn before the next case starts, so load from other work on a shared
//! machine falls on all of them alike.

use super::footprint::{Window, measure_window};
use super::*;

/// `before=/path/heapwarden,jemalloc=/other/heapwarden` → (name, path) pairs.
pub(super) fn parse_builds(list: &str) -> BenchResult<Vec<(String, PathBuf)>> {
    let builds: Vec<(String, PathBuf)> = list
        .split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| match item.split_once('=') {
            Some((name, path)) => Ok((name.trim().to_string(), PathBuf::from(path.trim()))),
            None => Err(format!("--compare takes NAME=PATH items, got {item:?}")),
        })
        .collect::<Result<_, _>>()?;
    if builds.is_empty() {
        return Err("--compare needs at least one NAME=PATH".into());
    }
    for (name, path) in &builds {
        if !path.is_file() {
            return Err(format!("--compare {name}: {} does not exist", path.display()).into());
        }
    }
    Ok(builds)
}

pub(super) fn compare(bench: &Bench, others: &[(String, PathBuf)]) -> BenchResult<()> {
    let seconds = std::env::var("BENCH_COMPARE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if bench.quick { 10 } else { 60 });
    let mut builds = others.to_vec();
    builds.push(("this build".to_string(), bench.heapwarden()));
    // BENCH_COMPARE_WORKERS=8,16 picks the rows; 8/16/32/64 by default.
    let counts: Vec<usize> = std::env::var("BENCH_COMPARE_WORKERS")
        .ok()
        .map(|list| {
            list.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .filter(|c: &Vec<usize>| !c.is_empty())
        .unwrap_or_else(|| vec![8, 16, 32, 64]);
    let cases: Vec<(String, usize)> = counts
        .into_iter()
        .map(|n| (format!("{n} probe-workers"), n))
        .collect();
    let mut rows = Vec::new();
    for (what, workers) in &cases {
        let (what, workers) = (what.as_str(), *workers);
        for (name, path) in &builds {
            let mut spec = Spec {
                agent: Some(path.clone()),
                ..Spec::probe(bench, workers)
            };
            // A build's own probe-worker, when it was built beside it: the probe's side of
            // the channel is part of what is compared.
            let own_worker = path.with_file_name("probe-worker");
            if own_worker.is_file() {
                spec.command = vec![own_worker.display().to_string()];
            }
            let window = measure_window(bench, &spec, seconds, &format!("{what}, {name}"))?;
            rows.push((what, name.clone(), window));
        }
    }
    println!(
        "## Agent footprint, builds side by side: idle workers sampled every 1 s, {seconds} s windows\n"
    );
    println!(
        "| build | binary MiB | workers | VmRSS mean MiB | VmRSS max MiB | RssAnon / RssFile MiB | CPU % of one core | sampling round ms (mean) |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    for (what, name, w) in &rows {
        let path = &builds
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone());
        let size = path
            .as_ref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(f64::NAN, |m| m.len() as f64 / MIB);
        println!(
            "| {name} | {size:.1} | {what} | {:.1} | {:.1} | {:.1} / {:.1} | {:.3} | {:.2} |",
            w.rss_mean, w.rss_max, w.rss_anon, w.rss_file, w.cpu_percent, w.round_mean_ms
        );
    }
    println!();
    per_worker(&builds, &rows, &cases);
    Ok(())
}

/// What one more worker costs each build: the slope between the fewest and the most
/// workers measured (CPU per worker and sampling interval of 1 s, RSS per worker).
fn per_worker(
    builds: &[(String, PathBuf)],
    rows: &[(&str, String, Window)],
    cases: &[(String, usize)],
) {
    let (Some(fewest), Some(most)) = (cases.first(), cases.last()) else {
        return;
    };
    let added = most.1.saturating_sub(fewest.1);
    if added == 0 {
        return;
    }
    let window = |case: &str, build: &str| {
        rows.iter()
            .find(|(what, name, _)| *what == case && name == build)
            .map(|(_, _, w)| w)
    };
    println!(
        "## Per worker, {} → {} workers (slope; 1 % of a core = 10 ms per second)\n",
        fewest.1, most.1
    );
    println!("| build | CPU µs per worker per 1 s sample | RSS KiB per worker |");
    println!("|---|---:|---:|");
    for (name, _) in builds {
        let (Some(low), Some(high)) = (window(&fewest.0, name), window(&most.0, name)) else {
            continue;
        };
        let cpu_us = (high.cpu_percent - low.cpu_percent) * 10_000.0 / added as f64;
        let rss_kib = (high.rss_mean - low.rss_mean) * 1024.0 / added as f64;
        println!("| {name} | {cpu_us:.0} | {rss_kib:.0} |");
    }
    println!();
}
