//! Cost of the probe's operations, printed as a table:
//! `cargo run --release -p heapwarden-probes --example bench_probe`.
//!
//! Rows: `HeapStats::read` (epoch advance + six MIB reads), a raw `prof.dump` with ~30 MiB
//! held, a Sample→Stats and Ping→Pong round trip over a socketpair through the probe's
//! threads, and allocation throughput with sampling off and on (`lg_prof_sample:19`).

heapwarden_probes::install!();

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use heapwarden_probes::channel::encode;
use heapwarden_probes::{
    AgentMsg, FrameDecoder, HeapStats, Probe, ReadHeapStats, WorkerMsg, dump_profile,
};

struct Row {
    what: &'static str,
    runs: usize,
    p50: Duration,
    p99: Duration,
    note: String,
}

fn row(what: &'static str, mut samples: Vec<Duration>, note: String) -> Row {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Row {
        what,
        runs: samples.len(),
        p50: at(0.5),
        p99: at(0.99),
        note,
    }
}

fn bench_heap_stats() -> Row {
    let samples = (0..10_000)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(HeapStats::read().expect("heap stats"));
            started.elapsed()
        })
        .collect();
    row("HeapStats::read", samples, String::new())
}

#[inline(never)]
fn hold_for_bench(mib: usize) -> Vec<Box<[u8]>> {
    (0..mib)
        .map(|_| vec![1u8; 1024 * 1024].into_boxed_slice())
        .collect()
}

fn bench_dump(dir: &std::path::Path) -> Row {
    let held = std::hint::black_box(hold_for_bench(30));
    let path = dir.join("bench.heap");
    let samples = (0..200)
        .map(|_| dump_profile(&path).expect("prof.dump"))
        .collect();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    drop(held);
    row(
        "prof.dump, 30 MiB held",
        samples,
        format!("file {size} bytes"),
    )
}

fn round_trips(what: &'static str, request: impl Fn(u64) -> AgentMsg) -> Row {
    let (worker_end, mut agent_rx) = UnixStream::pair().expect("socketpair");
    let mut agent_tx = agent_rx.try_clone().expect("clone socket");
    let _probe = Probe::from_fd(OwnedFd::from(worker_end)).expect("probe");
    let mut decoder = FrameDecoder::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut next = move || -> WorkerMsg {
        loop {
            if let Some(msg) = decoder.next_frame().expect("frame") {
                return msg;
            }
            let n = agent_rx.read(&mut chunk).expect("read");
            assert!(n > 0, "probe closed");
            decoder.push(&chunk[..n]);
        }
    };
    assert!(matches!(next(), WorkerMsg::Hello { .. }));
    let samples = (0..10_000u64)
        .map(|seq| {
            let started = Instant::now();
            let frame = encode(&request(seq)).expect("encode");
            agent_tx.write_all(&frame).expect("write");
            std::hint::black_box(next());
            started.elapsed()
        })
        .collect();
    row(what, samples, "agent-side encode+decode included".into())
}

/// Mixed-size allocate/free pairs, as a server's request path does; ns per pair.
#[inline(never)]
fn alloc_churn(pairs: usize) -> Duration {
    let started = Instant::now();
    for i in 0..pairs {
        let size = 16 + (i * 7919) % 4096;
        std::hint::black_box(vec![0u8; size]);
    }
    started.elapsed()
}

fn bench_alloc(what: &'static str) -> Row {
    const PAIRS: usize = 200_000;
    let samples = (0..25).map(|_| alloc_churn(PAIRS) / PAIRS as u32).collect();
    row(what, samples, "per allocate+free pair".into())
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Sampling starts off (the agent role); measure that first, then as a worker.
    let mut rows = vec![bench_alloc("alloc+free, prof_active:false")];
    heapwarden_probes::activate_profiling().expect("profiling compiled in");
    rows.push(bench_alloc("alloc+free, prof_active:true"));
    rows.push(bench_heap_stats());
    rows.push(bench_dump(dir.path()));
    rows.push(round_trips("Sample->Stats round trip", |seq| {
        AgentMsg::Sample {
            seq,
            metrics: false,
        }
    }));
    rows.push(round_trips("Ping->Pong round trip", |seq| AgentMsg::Ping {
        seq,
    }));

    println!(
        "{:<32} {:>7} {:>12} {:>12}  note",
        "operation", "runs", "p50 (µs)", "p99 (µs)"
    );
    for r in rows {
        println!(
            "{:<32} {:>7} {:>12.3} {:>12.3}  {}",
            r.what,
            r.runs,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
            r.note
        );
    }
}
