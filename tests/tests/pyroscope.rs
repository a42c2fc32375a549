//! End to end: the real agent and demo workers push every heap profile to a test
//! Pyroscope receiver (`heapwarden_tests::pyroscope`, which decodes and validates pushes
//! as Pyroscope does). Labels and the leaking function arrive; an outage loses nothing
//! and duplicates nothing; 429 is waited out; 400 is final; a hanging sink delays no dump
//! or replacement; a restart resumes from the cursor; a reload switches export on and off.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use heapwarden_tests::pyroscope::{Mode, Receiver};
use heapwarden_tests::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const LEAK_FN: &str = "leak_on_purpose_for_heap_profile";

struct Setup {
    sandbox: Sandbox,
    agent: Proc,
    admin: SocketAddr,
    config: PathBuf,
    text: String,
}

fn demo_config(workers: usize) -> AgentConfig {
    AgentConfig::new(workers, &[])
        .set("pool", "min-uptime", "1s")
        .set("pool", "drain-timeout", "3s")
        .set("pool", "kill-timeout", "2s")
        .set("sampling", "interval", "250ms")
        .set("watchdog", "warmup", "2s")
        .set("watchdog", "max-memory", "1GiB")
        .set("watchdog", "growth", "off")
        .set("log", "level", "info")
        .set("demo", "seed-rows", "50")
}

fn with_export(config: AgentConfig, url: &str) -> AgentConfig {
    config
        .set("export.pyroscope", "url", url)
        .set("export.pyroscope", "service-name", "shop")
        .set("export.pyroscope", "timeout", "5s")
        .set_raw("export.pyroscope", "labels", "{ env = \"e2e\" }")
        .set(
            "export.pyroscope",
            "link-base",
            "http://pyroscope.example:4040",
        )
}

fn start_in(sandbox: Sandbox, config: &AgentConfig) -> Setup {
    let text = config.to_string();
    let agent = sandbox.agent(&text);
    wait_until_ok(config.admin, "/readyz", SECS(60), &agent.logs);
    Setup {
        config: sandbox.path().join("heapwarden.toml"),
        sandbox,
        agent,
        admin: config.admin,
        text,
    }
}

impl Setup {
    fn cli(&self, args: &[&str]) -> Value {
        cli_json(&self.config, args).unwrap_or_else(|e| panic!("heapwarden {args:?}: {e}"))
    }

    /// A manual dump of `slot`; returns its profile id.
    fn dump(&self, slot: usize) -> u64 {
        let meta = self.cli(&["dump", &slot.to_string()]);
        meta["id"].as_u64().expect("profile id")
    }

    fn profiles(&self) -> Vec<Value> {
        self.cli(&["profiles"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// One sample of a metric family from /metrics (`name{labels}` as written there).
    fn metric(&self, series: &str) -> f64 {
        let (_, page) = http_get(self.admin, "/metrics", SECS(5)).expect("scrape /metrics");
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
    }

    fn reload(&self, text: &str) {
        let state = self.sandbox.path().join("state");
        std::fs::write(
            &self.config,
            format!("state-dir = {:?}\n{text}", state.display().to_string()),
        )
        .expect("rewrite the config");
        self.cli(&["reload"]);
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("host name")
        .trim()
        .to_string()
}

#[test]
fn baseline_and_leak_profiles_arrive_labelled_and_an_outage_loses_and_repeats_nothing() {
    let _guard = TimeoutGuard::new("pyroscope_leak", SECS(150));
    let mut receiver = Receiver::start();
    let config = with_export(demo_config(2), &receiver.url())
        .set("watchdog", "trend-window", "4s")
        .set("watchdog", "trend-min-rate", "1MiB/s")
        .set("watchdog", "action", "restart")
        .set("demo", "leak-rate", "6MiB")
        .set("demo", "leak-slots", "[1]")
        .set("pool.env", "HEAPWARDEN_RELEASE", "v9");
    let setup = start_in(Sandbox::new(), &config);
    let logs = &setup.agent.logs;

    // Both baselines arrive with the labels, and the leak's pprof names the function.
    // Under load the leaking slot can trip (and its replacement write a baseline) before
    // the other slot's baseline is pushed: wait for a baseline of each slot.
    let first = try_poll(SECS(60), || {
        let mut baselines: Vec<_> = receiver
            .received()
            .into_iter()
            .filter(|r| r.label("trigger") == "baseline")
            .collect();
        let mut seen = BTreeSet::new();
        baselines.retain(|r| seen.insert(r.label("worker").to_string()));
        (baselines.len() >= 2).then_some(baselines)
    })
    .unwrap_or_else(|| {
        let received: Vec<_> = (receiver.received().iter())
            .map(|r| {
                (
                    r.label("worker").to_string(),
                    r.label("trigger").to_string(),
                )
            })
            .collect();
        panic!(
            "timed out after 60s waiting for both slots' baselines pushed\n\
             received (worker, trigger): {received:?}\nattempts: {:?}\n\
             profiles: {:#?}\nagent log:\n{}",
            receiver.attempts(),
            setup.profiles(),
            logs.raw()
        )
    });
    for r in &first {
        assert_eq!(r.label("service_name"), "shop", "{:?}", r.labels);
        assert_eq!(r.label("__name__"), "memory");
        assert_eq!(r.label("instance"), host_name());
        assert_eq!(r.label("runtime"), "rust");
        assert_eq!(r.label("trigger"), "baseline");
        assert_eq!(r.label("release"), "v9");
        assert_eq!(r.label("env"), "e2e");
        assert!(!r.labels.contains_key("rule"));
        assert!(
            r.labels.keys().all(|k| !k.contains("pid")),
            "{:?}",
            r.labels
        );
        assert!(r.time_nanos > 0, "the profile carries its own time");
    }
    let slots: BTreeSet<&str> = first.iter().map(|r| r.label("worker")).collect();
    assert_eq!(slots, BTreeSet::from(["0", "1"]));

    // The sink goes down before the leak is caught: the leak profile waits on disk.
    // Under load slot 1 may have tripped already (its profile then reached the sink):
    // take the first detection after the sink went down.
    let on_slot_1 =
        |r: &serde_json::Value| r["msg"] == "A memory leak was detected." && r["worker"] == 1;
    let before = logs.matching(on_slot_1).len();
    receiver.down();
    let detection = logs
        .wait_for_n(
            before + 1,
            SECS(60),
            "leak detection on worker 1",
            on_slot_1,
        )
        .remove(before);
    assert_eq!(detection["profile_export"], "pending", "{detection}");
    let link = detection["profile_link"].as_str().unwrap_or_default();
    assert!(
        link.starts_with("http://pyroscope.example:4040/explore?query=memory"),
        "{detection}"
    );
    let leak_id = detection["profile_id"].as_u64().expect("leak profile id");
    let manual = setup.dump(0);
    logs.wait_for(SECS(30), "a failed push", |r| {
        r["msg"]
            == "A profile could not be pushed to Pyroscope; retrying with backoff until it is older than an hour."
    });
    let pending = setup.metric("heapwarden_profile_export_pending ");
    assert!(pending >= 2.0, "leak and manual profiles wait: {pending}");

    receiver.up();
    // Everything stored reaches the sink once, in the order it was stored. The leaking
    // slot keeps leaking (and being profiled), so compare snapshots taken in order:
    // a profile is received before the agent marks it sent.
    let marked = poll(SECS(60), "every stored profile sent", || {
        let profiles = setup.profiles();
        let all_sent = profiles
            .iter()
            .all(|p| p["export"]["outcome"] == "sent" && p["export"]["at_unix_ms"].is_u64());
        (all_sent && profiles.iter().any(|p| p["id"] == manual)).then_some(profiles.len())
    });
    let received = receiver.received();
    let marked_after = setup
        .profiles()
        .iter()
        .filter(|p| p["export"]["outcome"] == "sent")
        .count();
    assert!(
        marked <= received.len() && received.len() <= marked_after + 1,
        "one push per stored profile: {marked} marked, {} received, {marked_after} marked after",
        received.len()
    );
    let ids: BTreeSet<&str> = received.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), received.len(), "no profile arrived twice");
    // In the order stored (`stored_seq`), which is not always the order taken: a slow
    // dump is stored after a quicker one that started later (and Pyroscope takes
    // profiles out of order).
    let mut sent: Vec<(u64, u64)> = (setup.profiles().iter())
        .filter(|p| p["export"]["outcome"] == "sent")
        .filter_map(|p| {
            Some((
                p["stored_seq"].as_u64()?,
                p["export"]["at_unix_ms"].as_u64()?,
            ))
        })
        .collect();
    sent.sort_unstable();
    assert!(
        sent.windows(2).all(|w| w[0].1 <= w[1].1),
        "pushed in the order stored: (stored_seq, sent at) {sent:?}"
    );
    let leak = received
        .iter()
        .find(|r| r.label("trigger") == "leak")
        .expect("the leak profile arrived");
    assert_eq!(leak.label("worker"), "1");
    assert_eq!(leak.label("rule"), detection["rule"].as_str().unwrap());
    assert!(
        leak.functions.iter().any(|f| f.contains(LEAK_FN)),
        "the pushed pprof names the leak: {:?}",
        leak.functions
    );
    assert!(received.iter().any(|r| r.label("trigger") == "manual"));
    let sent = setup.metric("heapwarden_profile_exports_total{outcome=\"sent\"}");
    assert!(sent as usize >= marked, "{sent} counted, {marked} marked");
    assert!(setup.metric("heapwarden_profile_exports_total{outcome=\"retried\"}") >= 1.0);

    // `diff` prints the link into Pyroscope next to the growth.
    let diff = setup.cli(&["diff", &leak_id.to_string()]);
    let link = diff["pyroscope_link"].as_str().unwrap_or_default();
    assert!(link.contains("worker%3D%221%22"), "{diff}");
}

#[test]
fn rate_limits_are_waited_out_refusals_are_final_and_a_hanging_sink_delays_nothing() {
    let _guard = TimeoutGuard::new("pyroscope_answers", SECS(150));
    let receiver = Receiver::start();
    let setup = start_in(
        Sandbox::new(),
        &with_export(demo_config(1), &receiver.url())
            .set("watchdog", "warmup", "1h")
            .set("export.pyroscope", "timeout", "1s"),
    );

    // 429 + Retry-After: 2 → the next attempt comes no sooner than 2 s later.
    receiver.set_mode(Mode::TooMany {
        retry_after_secs: 2,
    });
    let limited = setup.dump(0);
    let attempts = receiver.wait_for_attempts(1, SECS(30));
    assert_eq!(attempts[0].status, 429);
    receiver.set_mode(Mode::Accept);
    let arrived = receiver.wait_for(1, SECS(30));
    let after = arrived[0].at.duration_since(attempts[0].at);
    assert!(
        after >= Duration::from_millis(1900),
        "Retry-After honoured: {after:?}"
    );
    assert!(setup.metric("heapwarden_profile_exports_total{outcome=\"retried\"}") >= 1.0);

    // 400: counted, marked, never tried again; the next profile goes through.
    receiver.set_mode(Mode::BadRequest);
    let refused = setup.dump(0);
    receiver.wait_for_attempts(attempts.len() + 2, SECS(30));
    receiver.set_mode(Mode::Accept);
    let next = setup.dump(0);
    receiver.wait_for(2, SECS(30));
    let bad = receiver
        .attempts()
        .iter()
        .filter(|a| a.status == 400)
        .count();
    assert_eq!(bad, 1, "a refused profile is not retried");
    assert_eq!(
        setup.metric("heapwarden_profile_exports_total{outcome=\"rejected\"}"),
        1.0
    );
    let profiles = setup.profiles();
    let outcome = |id: u64| {
        profiles
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["export"].clone())
            .unwrap_or_default()
    };
    assert_eq!(outcome(limited)["outcome"], "sent");
    assert_eq!(outcome(refused)["outcome"], "rejected");
    assert!(
        outcome(refused)["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("refused on command by the test receiver"),
        "the server's message is kept: {}",
        outcome(refused)
    );
    assert_eq!(outcome(next)["outcome"], "sent");
    let logged = setup
        .agent
        .logs
        .matching(|r| r["msg"] == "A heap profile will not reach Pyroscope.");
    assert_eq!(logged.len(), 1, "logged once: {logged:?}");

    // A sink that accepts connections and never answers: dumps, samples and a
    // replacement go on at their usual pace, and no socket piles up.
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", setup.agent.pid()))
            .unwrap()
            .count()
    };
    let fds_before = fds();
    receiver.set_mode(Mode::Hang);
    let hung_from = receiver.attempts().len();
    let started = Instant::now();
    setup.dump(0);
    receiver.wait_for_attempts(hung_from + 1, SECS(30));
    for _ in 0..3 {
        let t = Instant::now();
        setup.dump(0);
        assert!(
            t.elapsed() < SECS(10),
            "a dump waited on the sink: {:?}",
            t.elapsed()
        );
    }
    setup.cli(&["restart", "0"]);
    poll_until(SECS(30), "worker 0 replaced", || {
        let w = setup.cli(&["ps"]);
        w[0]["restarts"].as_u64().unwrap_or(0) >= 1 && w[0]["ready"] == true
    });
    let rounds = setup.metric("heapwarden_sample_duration_seconds_count ");
    poll_until(SECS(10), "sampling rounds go on", || {
        setup.metric("heapwarden_sample_duration_seconds_count ") >= rounds + 4.0
    });
    receiver.wait_for_attempts(hung_from + 3, SECS(30));
    assert!(started.elapsed() < SECS(60));
    let fds_now = fds();
    assert!(
        fds_now <= fds_before + 2,
        "sockets piled up under a hanging sink: {fds_before} → {fds_now}"
    );
    receiver.set_mode(Mode::Accept);
    poll_until(SECS(60), "the backlog drained after the hang", || {
        setup
            .profiles()
            .iter()
            .all(|p| p["export"]["outcome"].is_string())
    });
}

/// The exporter's cursor file: the id of the last profile the sink has.
fn cursor(setup: &Setup) -> String {
    let path = setup.sandbox.path().join("state/export/pyroscope.cursor");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The cursor counts profiles in the order they were stored (`stored_seq`), not by id.
fn stored_seq(setup: &Setup, id: u64) -> String {
    let profiles = setup.profiles();
    let entry = profiles.iter().find(|p| p["id"] == id);
    entry.map_or_else(String::new, |p| p["stored_seq"].to_string())
}

#[test]
fn a_restart_resumes_from_the_cursor_and_a_reload_switches_export_off_and_on() {
    let _guard = TimeoutGuard::new("pyroscope_cursor", SECS(150));
    let mut receiver = Receiver::start();
    let config = with_export(demo_config(1), &receiver.url()).set("watchdog", "warmup", "1h");
    let sandbox = Sandbox::new();
    let mut setup = start_in(sandbox, &config);
    let first = setup.dump(0);
    receiver.wait_for(1, SECS(30));
    poll_until(SECS(30), "the cursor past the first profile", || {
        cursor(&setup) == stored_seq(&setup, first)
    });
    // Down mid-backlog: two more wait on disk when the agent stops.
    receiver.down();
    let backlog: Vec<u64> = (0..2).map(|_| setup.dump(0)).collect();
    setup.agent.signal(Signal::SIGTERM);
    assert!(
        setup.agent.wait_exit(SECS(30)).is_some(),
        "the agent stopped"
    );

    // Same state directory: only the backlog is sent, after what was sent before.
    let Setup { sandbox, .. } = setup;
    receiver.up();
    let setup = start_in(sandbox, &config);
    receiver.wait_for(3, SECS(60));
    poll_until(SECS(30), "the cursor past the backlog", || {
        cursor(&setup) == stored_seq(&setup, backlog[1])
    });
    let arrived = receiver.received();
    assert_eq!(arrived.len(), 3, "the first profile was not sent again");
    assert!(arrived.iter().all(|r| r.label("trigger") == "manual"));

    // Export off: a new profile stays unsent; back on: it goes.
    let off = config.clone().set("export.pyroscope", "url", "");
    setup.reload(&off.to_string());
    setup.agent.logs.wait_for(SECS(30), "export off", |r| {
        r["msg"] == "Profiles are not pushed to Pyroscope (export.pyroscope.url is empty)."
    });
    let waiting = setup.dump(0);
    let unsent = setup
        .profiles()
        .into_iter()
        .find(|p| p["id"] == waiting)
        .expect("stored");
    assert!(unsent["export"].is_null(), "{unsent}");
    assert_eq!(receiver.received().len(), 3);
    setup.reload(&setup.text);
    let arrived = receiver.wait_for(4, SECS(60));
    assert_eq!(arrived.len(), 4);
    poll_until(
        SECS(30),
        "the profile taken while off is marked sent",
        || {
            setup
                .profiles()
                .iter()
                .any(|p| p["id"] == waiting && p["export"]["outcome"] == "sent")
        },
    );
}
