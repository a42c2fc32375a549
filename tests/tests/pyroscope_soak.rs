//! Soak: the Pyroscope sink is down while many profiles are written (manual dumps in a
//! loop, through the admin API): the agent's RSS stays flat and its descriptors (but the
//! sampler's `/proc` readers) return to their count before the outage; when the sink is
//! back, the backlog drains to the exact count, each profile once. A bounded run is in
//! the suite; the 1,000-profile run is `cargo test -p heapwarden-tests --test
//! pyroscope_soak -- --ignored --nocapture` (`SOAK_PROFILES=N` changes the count).

use std::collections::BTreeSet;
use std::time::Duration;

use heapwarden_tests::pyroscope::Receiver;
use heapwarden_tests::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const WARM_UP: usize = 20;

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The agent's descriptors but the sampler's kept-open `/proc` readers: it opens a
/// worker thread's `children` list when a round first walks it, which may fall between
/// the two counts.
fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| !target.starts_with("/proc/"))
        .count()
}

fn soak(profiles: usize) {
    let mut receiver = Receiver::start();
    receiver.down();
    let sandbox = Sandbox::new();
    let worker = bin("probe-worker");
    let config = AgentConfig::new(1, &[worker.to_str().unwrap()])
        .set("pool", "min-uptime", "1s")
        .set("watchdog", "warmup", "1h")
        .set("log", "level", "warn")
        .set(
            "profiles",
            "max-count",
            &(profiles + WARM_UP + 10).to_string(),
        )
        .set("profiles", "max-bytes", "8GiB")
        .set("profiles", "min-free-disk", "64MiB")
        .set("export.pyroscope", "url", &receiver.url())
        .set("export.pyroscope", "service-name", "soak")
        .set("export.pyroscope", "timeout", "1s");
    let agent = sandbox.agent(&config.to_string());
    wait_until_ok(config.admin, "/readyz", SECS(60), &agent.logs);
    let token = std::fs::read_to_string(sandbox.path().join("state/admin-token")).expect("token");
    let dump = || {
        let (status, body) = http_request(
            config.admin,
            "POST",
            "/api/v1/workers/0/profile",
            Some(token.trim()),
            b"",
            SECS(30),
        )
        .expect("dump request");
        assert_eq!(status, 201, "{body}");
    };
    let pid = agent.pid();
    for _ in 0..WARM_UP {
        dump();
    }
    let (rss_before, fds_before) = (rss_kib(pid), fds(pid));
    for _ in 0..profiles {
        dump();
    }
    let (rss_after, fds_after) = (rss_kib(pid), fds(pid));
    eprintln!(
        "soak: {profiles} profiles with the sink down: agent RSS {rss_before} → {rss_after} KiB, fds {fds_before} → {fds_after}"
    );
    assert!(
        rss_after < rss_before + 1024,
        "agent RSS grew by {} KiB over {profiles} unsent profiles",
        rss_after.saturating_sub(rss_before)
    );
    // One connection attempt may be open at the moment of reading.
    assert!(
        fds_after <= fds_before + 1,
        "descriptors piled up: {fds_before} → {fds_after}"
    );

    receiver.up();
    let total = profiles + WARM_UP;
    let started = std::time::Instant::now();
    receiver.wait_for(total, SECS(120 + profiles as u64 / 5));
    eprintln!(
        "soak: the backlog of {total} drained in {:?}",
        started.elapsed()
    );
    poll_until(SECS(30), "the agent recorded every push", || {
        let (_, page) = http_get(config.admin, "/metrics", SECS(5)).expect("metrics");
        page.lines().any(|l| {
            l.strip_prefix("heapwarden_profile_exports_total{outcome=\"sent\"} ")
                .and_then(|v| v.trim().parse::<usize>().ok())
                == Some(total)
        })
    });
    let received = receiver.received();
    assert_eq!(received.len(), total, "exactly one push per profile");
    let ids: BTreeSet<&str> = received.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), total, "no profile arrived twice");
    // The admin server closes the last /metrics connection when it reads the client's
    // EOF: wait for the count to come back rather than read it at one instant.
    poll_until(
        SECS(10),
        "descriptors back to the baseline after the drain",
        || fds(pid) <= fds_before + 1,
    );
}

#[test]
fn a_backlog_written_while_the_sink_is_down_costs_no_memory_and_drains_exactly() {
    let _guard = TimeoutGuard::new("pyroscope_soak_bounded", SECS(180));
    soak(60);
}

#[test]
#[ignore = "the issue's 1,000-profile soak, several minutes: run with --ignored"]
fn soak_a_thousand_profiles() {
    let _guard = TimeoutGuard::new("pyroscope_soak", SECS(1800));
    let n = std::env::var("SOAK_PROFILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    soak(n);
}
