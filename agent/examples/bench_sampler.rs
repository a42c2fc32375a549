//! Cost of the sampler's procfs reads, per worker, against a real child process that
//! holds ~80 MiB, plus the per-call cost of the parsers. Prints a table.
//!
//! ```text
//! cargo run --release -p heapwarden --example bench_sampler [-- --mib 80 --iters 2000]
//! ```

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use heapwarden::sampler::procfs::{ProcFs, parse_smaps_rollup, parse_stat};
use heapwarden::sampler::tree::{
    ChildSource, ParentTable, TreeCache, kernel_lists_children, process_tree,
};
use heapwarden::sampler::{HostReaders, Roots, collect_host, collect_trees, read_tree};

/// Kills the holder child however the bench ends.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hold(mib: usize) {
    // Touch every page so it is resident, then wait for the parent to close stdin.
    let block = vec![1u8; mib << 20];
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    std::hint::black_box(&block);
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    name: String,
    iters: usize,
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
}

fn measure(name: &str, iters: usize, mut f: impl FnMut()) -> Row {
    f();
    let mut times: Vec<Duration> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let total: Duration = times.iter().sum();
    Row {
        name: name.to_string(),
        iters,
        mean_us: us(total) / iters as f64,
        p50_us: us(times[iters / 2]),
        p99_us: us(times[(iters * 99 / 100).min(iters - 1)]),
    }
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--hold") {
        hold(arg("--mib", 80));
        return Ok(());
    }
    let mib = arg("--mib", 80);
    let iters = arg("--iters", 2000).max(10);
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(["--hold", "--mib", &mib.to_string()])
        .stdin(Stdio::piped())
        .spawn()?;
    let holder = Holder(child);
    let pid = holder.0.id();
    let proc = ProcFs::system();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = Vec::new();
    while proc.rss_bytes(pid, &mut buf)? < (mib as u64) << 20 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the holder child did not reach {mib} MiB in 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let stat_text = std::fs::read(format!("/proc/{pid}/stat"))?;
    let smaps_text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let kernel = kernel_lists_children(&proc, std::process::id());
    let table = ParentTable::scan(&proc);
    let roots = Roots::system(&PathBuf::from("/sys/fs/cgroup"));
    let mut host = HostReaders::new(&roots);
    let smaps_iters = (iters / 10).max(10);
    let sixteen = vec![pid; 16];
    // Reused across iterations: walked every 5th, as in the agent's rounds.
    let mut cached = TreeCache::default();

    let rows = vec![
        // Before: two files per process, each through read_to_string (openat, statx,
        // read, read, close).
        measure("before: statm+stat, read_to_string", iters, || {
            let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"));
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
            let _ = std::hint::black_box((statm, stat));
        }),
        // Now: RSS and CPU from one `stat` read into a reused buffer (openat, read, close).
        measure("fast path: one stat read (RSS + CPU)", iters, || {
            let _ = std::hint::black_box(proc.stat(pid, &mut buf));
        }),
        measure(
            "smaps_rollup read+parse (PSS/USS/swap)",
            smaps_iters,
            || {
                let _ = std::hint::black_box(proc.smaps_rollup(pid, &mut Vec::new()));
            },
        ),
        measure("tree: kernel children files", iters, || {
            std::hint::black_box(process_tree(&proc, pid, ChildSource::Kernel));
        }),
        measure("tree: ppid scan of /proc (per round)", smaps_iters, || {
            let _ = std::hint::black_box(ParentTable::scan(&proc));
        }),
        measure("read_tree fast (table given)", iters, || {
            let _ = std::hint::black_box(read_tree(&proc, pid, ChildSource::Table(&table), false));
        }),
        measure("read_tree slow (smaps, table given)", smaps_iters, || {
            let _ = std::hint::black_box(read_tree(&proc, pid, ChildSource::Table(&table), true));
        }),
        measure(
            "collect_trees fast, 16 workers, trees walked",
            smaps_iters,
            || {
                // A fresh cache walks every tree, as the first round and every 5th do.
                std::hint::black_box(collect_trees(
                    &roots,
                    &sixteen,
                    false,
                    &mut TreeCache::default(),
                ));
            },
        ),
        measure(
            "collect_trees fast, 16 workers, trees cached",
            smaps_iters,
            || {
                std::hint::black_box(collect_trees(&roots, &sixteen, false, &mut cached));
            },
        ),
        measure(
            "collect_trees slow, 16 workers",
            (smaps_iters / 4).max(10),
            || {
                std::hint::black_box(collect_trees(
                    &roots,
                    &sixteen,
                    true,
                    &mut TreeCache::default(),
                ));
            },
        ),
        // Kept open between rounds, as the sampler reads them.
        measure("host: agent+meminfo+loadavg+cgroup", iters, || {
            std::hint::black_box(collect_host(&roots, &mut host));
        }),
        measure("parse only: stat", iters * 10, || {
            std::hint::black_box(parse_stat(pid, std::hint::black_box(&stat_text)));
        }),
        measure("parse only: smaps_rollup", iters * 10, || {
            std::hint::black_box(parse_smaps_rollup(std::hint::black_box(&smaps_text)));
        }),
    ];

    println!(
        "sampler procfs costs; child pid {pid} holding {} MiB RSS; kernel children files: {kernel}; \
processes in /proc: {}",
        proc.rss_bytes(pid, &mut Vec::new())? >> 20,
        table.len(),
    );
    println!(
        "{:<42} {:>8} {:>11} {:>11} {:>11}",
        "operation", "iters", "mean µs", "p50 µs", "p99 µs"
    );
    for r in &rows {
        println!(
            "{:<42} {:>8} {:>11.2} {:>11.2} {:>11.2}",
            r.name, r.iters, r.mean_us, r.p50_us, r.p99_us
        );
    }
    drop(holder);
    Ok(())
}
