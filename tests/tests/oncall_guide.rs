//! Every command of the on-call guide (`docs/src/oncall/cli-as-written.md`), run as
//! written against a real agent started the way the systemd unit starts it
//! (`heapwarden run -c FILE`): no `-c` on the verbs, the agent is found from its own
//! process. The one addition is `HEAPWARDEN_ADMIN_LISTEN` in the verbs' environment,
//! because other agents (other tests) run on this machine at the same time.
//!
//! The story: a Node worker leaks; the first trip replaces it, the second finds the
//! leak-restart budget spent (`ps` shows `ready!`, `/readyz` says so, the state metric is
//! `budget_exhausted`); then profiles, diff (both syntaxes), pull + `go tool pprof`, dump,
//! a snapshot pulled for DevTools, a manual restart (logged as a drain, never as "killed
//! by a signal"), and a reload to `action = "profile-only"` that replaces no worker.

mod node_support;

use std::process::Command;

use heapwarden_tests::*;
use node_support::*;

const RULES: &str = r#"
[pool.env]
LEAK = "named"
LEAK_BYTES = "200000"
[sampling]
interval = "250ms"
[watchdog]
warmup = "3s"
max-memory = "2GiB"
growth = "off"
trend-window = "6s"
trend-min-rate = "512KiB/s"
action = "restart"
max-leak-restarts-per-hour = 1
[log]
level = "info"
"#;

struct Guide<'a> {
    setup: &'a NodeSetup,
}

impl Guide<'_> {
    /// `heapwarden ARGS` as the guide writes it; (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(heapwarden())
            .args(args)
            .env_remove("HEAPWARDEN_CONFIG")
            .env_remove("HEAPWARDEN_ADMIN_TOKEN_FILE")
            .env("HEAPWARDEN_ADMIN_LISTEN", self.setup.admin.to_string())
            .current_dir(self.setup.sandbox.path())
            .output()
            .expect("run the CLI");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args);
        assert!(ok, "heapwarden {args:?} failed: {stderr}{stdout}");
        stdout
    }
}

/// Ids from `heapwarden profiles`' table: (id, trigger) per row.
fn profile_rows(table: &str) -> Vec<(u64, String)> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            Some((cells.first()?.parse().ok()?, cells.get(3)?.to_string()))
        })
        .collect()
}

#[test]
fn every_command_of_the_on_call_guide_works_as_written() {
    let _guard = TimeoutGuard::new("on-call guide", SECS(300));
    let setup = start(r#"["node", "app.js"]"#, 1, RULES);
    let guide = Guide { setup: &setup };
    let logs = &setup.agent.logs;

    // A first trip replaces the worker; the second finds the budget spent.
    logs.wait_for(
        SECS(120),
        "the budget spent",
        msg("The leak-restart budget of a slot is spent; it keeps running and alerting without restarts."),
    );

    // 1. Is it real? `heapwarden ps`: the spent budget is `ready!`, with its legend.
    // (The pool view is published once the supervisor's step that logged it ends.)
    let ps = poll(SECS(10), "ps showing ready!", || {
        let ps = guide.ok(&["ps"]);
        ps.lines().nth(1)?.contains("ready!").then_some(ps)
    });
    assert!(ps.contains("! leak-restart budget spent"), "{ps}");
    // `/readyz` says so in its body (the slot still serves: 200).
    let (status, body) = http_get(setup.admin, "/readyz", SECS(10)).unwrap();
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["leak_budget_spent"], serde_json::json!([0]), "{body}");
    assert!(
        ready["reason"].as_str().unwrap().contains("budget spent"),
        "{body}"
    );
    // The state gauges are written by the next sampling round.
    poll(SECS(10), "the budget_exhausted state series", || {
        let (_, metrics) = http_get(setup.admin, "/metrics", SECS(10)).ok()?;
        [
            "heapwarden_worker_state{worker=\"0\",state=\"budget_exhausted\"} 1",
            "heapwarden_worker_state{worker=\"0\",state=\"ready\"} 0",
        ]
        .iter()
        .all(|series| metrics.contains(series))
        .then_some(())
    });

    // 2. What is leaking? `heapwarden profiles`, `heapwarden diff <leak-id>`.
    let table = guide.ok(&["profiles"]);
    let rows = profile_rows(&table);
    let leak = rows
        .iter()
        .rev()
        .find(|(_, t)| t == "leak")
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("no leak profile in:\n{table}"));
    let base = rows
        .iter()
        .rev()
        .find(|(id, t)| t == "baseline" && *id < leak)
        .map(|(id, _)| *id)
        .unwrap_or_else(|| panic!("no baseline before {leak} in:\n{table}"));
    let (leak_id, base_id) = (leak.to_string(), base.to_string());
    let diff = guide.ok(&["diff", &leak_id]);
    let top = diff.lines().nth(2).unwrap_or_default();
    assert!(top.contains("leakInNamedFunction  app.js:"), "{diff}");
    // The runbook's `heapwarden diff <baseline> <leak>`.
    let both = guide.ok(&["diff", &base_id, &leak_id]);
    assert!(
        both.starts_with(&format!("profile {leak} minus base {base}:")),
        "{both}"
    );
    assert!(
        both.lines()
            .nth(2)
            .unwrap_or_default()
            .contains("leakInNamedFunction")
    );
    let sites = guide.ok(&["diff", &leak_id, "--sites"]);
    assert!(sites.contains("ALLOCATION SITE"), "{sites}");

    // 3. Read it in pprof: pull both, then `go tool pprof -top -base`.
    let pulled = guide.ok(&["pull", &leak_id, "-o", "leak.pb.gz"]);
    assert!(
        pulled.contains("go tool pprof") && pulled.contains("graphviz"),
        "{pulled}"
    );
    guide.ok(&["pull", &base_id, "-o", "base.pb.gz"]);
    let pprof = Command::new("go")
        .args(["tool", "pprof", "-top", "-base", "base.pb.gz", "leak.pb.gz"])
        .current_dir(setup.sandbox.path())
        .output()
        .expect("go tool pprof (scripts/test installs golang-go)");
    let text = String::from_utf8_lossy(&pprof.stdout);
    let first = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or_default();
    assert!(first.ends_with("leakInNamedFunction"), "{text}");

    // No trip yet? `heapwarden dump <slot>`; a snapshot for DevTools.
    let dumped = guide.ok(&["dump", "0"]);
    assert!(
        dumped.contains("of worker 0 (pid ") && dumped.contains(") written"),
        "{dumped}"
    );
    let snap = guide.ok(&["dump", "0", "--snapshot"]);
    let snap_id = snap
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();
    let pulled = guide.ok(&["pull", &snap_id]);
    assert!(pulled.contains("Chrome DevTools"), "{pulled}");
    assert!(!pulled.contains("go tool pprof"), "{pulled}");

    // 4. Buy time: `heapwarden restart <slot>`, a planned drain.
    let started = logs.matching(msg("A worker started.")).len();
    let restarted = guide.ok(&["restart", "0"]);
    assert!(
        restarted.contains("worker 0 is being replaced"),
        "{restarted}"
    );
    // The first leak's replacement and this one.
    logs.wait_for_n(
        2,
        SECS(60),
        "the drained workers' exits",
        msg("A drained worker has exited."),
    );
    assert!(
        logs.matching(msg("A worker was killed by a signal."))
            .is_empty(),
        "planned drains are not kills: {:?}",
        logs.matching(msg("A worker was killed by a signal."))
    );

    // 5. Tune, don't silence: the dry run by reload replaces no worker.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        text.replace("action = \"restart\"", "action = \"profile-only\""),
    )
    .unwrap();
    let reloaded = guide.ok(&["reload"]);
    assert!(reloaded.contains("the workers keep running"), "{reloaded}");
    logs.wait_for(
        SECS(10),
        "the reload",
        msg("The config was reloaded; only the agent's own settings changed, so the workers keep running."),
    );
    let starts_now = logs.matching(msg("A worker started.")).len();
    assert_eq!(
        starts_now,
        started + 1,
        "only the manual restart started a worker"
    );
    assert!(
        guide
            .ok(&["ps"])
            .lines()
            .nth(1)
            .is_some_and(|r| r.contains("ready")),
        "the worker still serves"
    );
}

#[test]
fn a_401_names_the_token_file_and_the_address_it_used() {
    let _guard = TimeoutGuard::new("on-call 401", SECS(90));
    let setup = start(r#"["node", "app.js"]"#, 1, "");
    let wrong = setup.sandbox.write("wrong-token", "not-the-token\n");
    let out = Command::new(heapwarden())
        .arg("ps")
        .env_remove("HEAPWARDEN_CONFIG")
        .env("HEAPWARDEN_ADMIN_LISTEN", setup.admin.to_string())
        .env("HEAPWARDEN_ADMIN_TOKEN_FILE", &wrong)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("(401)"), "{err}");
    assert!(err.contains(&wrong.display().to_string()), "{err}");
    assert!(err.contains(&setup.admin.to_string()), "{err}");
    assert!(err.contains("the running agent (pid"), "{err}");
}
