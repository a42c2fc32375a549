//! `--only export`: the Pyroscope exporter against the test receiver. Push latency
//! (profile committed → receiver has it) p50/p99 and the agent's CPU per pushed profile
//! (manual dumps with export on, minus the same dumps with export off); then 16
//! probe-workers under wrk with `every = "60s"` against export off: the workers'
//! throughput and the agent's CPU. `--only export-tls`: the same push latency and cost
//! over http and over https (the receiver with a test CA's certificate, trusted through
//! `ca-file`).

use std::process::Command;
use std::time::{Duration, Instant};

use heapwarden_tests::msg;
use heapwarden_tests::pyroscope::Receiver;
use heapwarden_tests::tls::TestCa;

use super::{Agent, Bench, BenchResult, Spec, median, percentile, progress};

/// `receiver`: None for export off.
fn export_section(receiver: Option<&Receiver>, every: &str) -> String {
    format!(
        "[watchdog]\nwarmup = \"1h\"\n[profiles]\nmax-count = 5000\nmax-bytes = \"4GiB\"\n\
         min-free-disk = \"64MiB\"\n[export.pyroscope]\nurl = {:?}\nservice-name = \"bench\"\n\
         every = {every:?}\n",
        receiver.map(Receiver::url).unwrap_or_default()
    )
}

/// The agent's own user + system CPU seconds so far.
fn cpu_seconds(bench: &Bench, agent: &Agent) -> f64 {
    let stat =
        std::fs::read_to_string(format!("/proc/{}/stat", agent.proc.pid())).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat; index 11 and 12 after the comm.
    (ticks(11) + ticks(12)) / bench.clock_ticks
}

fn dump(agent: &Agent, slot: usize) -> BenchResult<u64> {
    let token = std::fs::read_to_string(agent.state.join("admin-token"))?;
    let (status, body) = heapwarden_tests::http_request(
        agent.admin,
        "POST",
        &format!("/api/v1/workers/{slot}/profile"),
        Some(token.trim()),
        b"",
        Duration::from_secs(30),
    )?;
    if status != 201 {
        return Err(format!("dump answered {status}: {body}").into());
    }
    let meta: serde_json::Value = serde_json::from_str(&body)?;
    meta["created_unix_ms"]
        .as_u64()
        .ok_or_else(|| "no created_unix_ms".into())
}

/// Agent CPU seconds for `n` manual dumps, and each profile's commit time.
fn dumps(bench: &Bench, agent: &Agent, n: usize) -> BenchResult<(f64, Vec<u64>)> {
    let before = cpu_seconds(bench, agent);
    let mut created = Vec::new();
    for _ in 0..n {
        created.push(dump(agent, 0)?);
    }
    Ok((cpu_seconds(bench, agent) - before, created))
}

pub(super) fn export(bench: &Bench) -> BenchResult<()> {
    let n = if bench.quick { 20 } else { 100 };
    let receiver = Receiver::start();
    let mut spec = Spec::probe(bench, 1);

    progress(format!("export: {n} manual dumps with export off"));
    spec.sections = export_section(None, "off");
    let off = Agent::start(bench, &spec)?;
    off.wait_ready(1, Duration::from_secs(30));
    let (cpu_off, _) = dumps(bench, &off, n)?;
    off.stop();

    progress(format!("export: {n} manual dumps pushed to the receiver"));
    spec.sections = export_section(Some(&receiver), "off");
    let on = Agent::start(bench, &spec)?;
    on.wait_ready(1, Duration::from_secs(30));
    let before = cpu_seconds(bench, &on);
    let (_, created) = dumps(bench, &on, n)?;
    let arrived = receiver.wait_for(n, Duration::from_secs(60));
    // Until the agent has logged the last push: its CPU then includes every push.
    on.proc.logs.wait_for_n(
        n,
        Duration::from_secs(60),
        "every push recorded",
        msg("A heap profile reached Pyroscope."),
    );
    let cpu_on = cpu_seconds(bench, &on) - before;
    on.stop();
    let latencies: Vec<f64> = created
        .iter()
        .zip(&arrived)
        .map(|(c, r)| r.unix_ms.saturating_sub(*c) as f64)
        .collect();
    println!("## Pyroscope export: push latency and cost\n");
    println!("| figure | value |\n|---|---:|");
    println!("| profiles pushed | {n} |");
    println!(
        "| latency, profile stored → receiver has it, p50 / p99 | {:.1} ms / {:.1} ms |",
        median(&latencies),
        percentile(&latencies, 0.99)
    );
    println!(
        "| agent CPU per profile, export off (dump, store) | {:.2} ms |",
        cpu_off / n as f64 * 1000.0
    );
    println!(
        "| agent CPU per profile, export on (dump, store, push) | {:.2} ms |",
        cpu_on / n as f64 * 1000.0
    );
    println!(
        "| agent CPU per pushed profile (on − off) | {:.2} ms |\n",
        (cpu_on - cpu_off) / n as f64 * 1000.0
    );

    let workers = 16;
    let (every, window) = if bench.quick {
        ("10s", 25)
    } else {
        ("60s", 130)
    };
    println!(
        "## Pyroscope export: {workers} workers under wrk, `every = \"{every}\"` against export off ({window} s each)\n"
    );
    println!(
        "| export | requests/s | agent CPU % | periodic profiles pushed |\n|---|---:|---:|---:|"
    );
    let mut baseline = None;
    for (label, sections) in [
        ("off", export_section(None, "off")),
        (every, export_section(Some(&receiver), every)),
    ] {
        progress(format!(
            "export: {workers} workers, every = {label}, {window} s of wrk"
        ));
        let mut spec = Spec::probe(bench, workers);
        spec.sections = sections;
        let agent = Agent::start(bench, &spec)?;
        agent.wait_ready(1, Duration::from_secs(60));
        let listen = agent_listen(&agent)?;
        let before_received = receiver.received().len();
        let cpu_before = cpu_seconds(bench, &agent);
        let started = Instant::now();
        let out = Command::new("wrk")
            .args(["-t2", "-c32", &format!("-d{window}s")])
            .arg(format!("http://{listen}/"))
            .output()
            .map_err(|e| format!("wrk: {e} (apt-get install wrk)"))?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = (cpu_seconds(bench, &agent) - cpu_before) / seconds * 100.0;
        let text = String::from_utf8_lossy(&out.stdout);
        let rps: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN);
        let pushed = receiver.received().len() - before_received;
        agent.stop();
        let delta = baseline.map_or(String::new(), |b: f64| {
            format!(" ({:+.2} %)", (rps - b) / b * 100.0)
        });
        baseline.get_or_insert(rps);
        println!("| {label} | {rps:.0}{delta} | {cpu:.2} | {pushed} |");
    }
    println!();
    Ok(())
}

/// Push latency (p50/p99) and agent CPU per pushed profile, http against https.
pub(super) fn export_tls(bench: &Bench) -> BenchResult<()> {
    let n = if bench.quick { 20 } else { 100 };
    let ca = TestCa::new("bench CA");
    let dir = tempfile::tempdir()?;
    let ca_file = ca.write_ca(dir.path(), "ca.pem");
    println!("## Pyroscope export: http against https ({n} manual dumps each)\n");
    println!(
        "| transport | latency p50 | latency p99 | agent CPU per profile (dump, store, push) |\n|---|---:|---:|---:|"
    );
    for https in [false, true] {
        let receiver = if https {
            Receiver::start_tls(&ca)
        } else {
            Receiver::start()
        };
        let label = if https { "https" } else { "http" };
        progress(format!("export-tls: {n} manual dumps pushed over {label}"));
        let mut spec = Spec::probe(bench, 1);
        spec.sections = export_section(Some(&receiver), "off");
        if https {
            spec.sections
                .push_str(&format!("ca-file = {:?}\n", ca_file.display().to_string()));
        }
        let agent = Agent::start(bench, &spec)?;
        agent.wait_ready(1, Duration::from_secs(30));
        let before = cpu_seconds(bench, &agent);
        let (_, created) = dumps(bench, &agent, n)?;
        let arrived = receiver.wait_for(n, Duration::from_secs(60));
        agent.proc.logs.wait_for_n(
            n,
            Duration::from_secs(60),
            "every push recorded",
            msg("A heap profile reached Pyroscope."),
        );
        let cpu = cpu_seconds(bench, &agent) - before;
        agent.stop();
        let latencies: Vec<f64> = created
            .iter()
            .zip(&arrived)
            .map(|(c, r)| r.unix_ms.saturating_sub(*c) as f64)
            .collect();
        println!(
            "| {label} | {:.1} ms | {:.1} ms | {:.2} ms |",
            median(&latencies),
            percentile(&latencies, 0.99),
            cpu / n as f64 * 1000.0
        );
    }
    println!();
    Ok(())
}

/// `pool.listen` from the agent's config file.
fn agent_listen(agent: &Agent) -> BenchResult<String> {
    let text = std::fs::read_to_string(&agent.config)?;
    let mut in_pool = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_pool = line == "[pool]";
        } else if in_pool && let Some(v) = line.strip_prefix("listen = ") {
            return Ok(v.trim_matches('"').to_string());
        }
    }
    Err("no pool.listen in the config".into())
}
