//! Every command of the on-call guide (`docs/src/oncall/cli-as-written.md`), read from
//! the page and run as written against a real agent started the way the systemd unit
//! starts it (`heapwarden run -c FILE`): no `-c` on the verbs, the agent is found from its
//! own process. The story names each command by its text on the page; a command the page
//! does not have fails the test, and so does one of the page's that the story never ran.
//! What differs from the page: the placeholders become the real ids, `sudo` is dropped,
//! the config path is the sandbox's, and `HEAPWARDEN_ADMIN_LISTEN` is in the verbs'
//! environment because other agents (other tests) run on this machine at the same time.
//!
//! The story: a Node worker leaks; the first trip replaces it, the second finds the
//! leak-restart budget spent (`ps` shows `ready!`, `/readyz` says so, the state metric is
//! `budget_exhausted`); then profiles, diff (both syntaxes), pull + `go tool pprof`, dump,
//! a snapshot pulled for DevTools, a manual restart (logged as a drain, never as "killed
//! by a signal"), and a reload to `action = "profile-only"` that replaces no worker.

mod node_support;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::process::Command;

use heapwarden_tests::tools::repo_root;
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

const PAGE: &str = "docs/src/oncall/cli-as-written.md";
/// Where the page's commands keep the agent's config.
const PAGE_CONFIG: &str = "/etc/heapwarden/heapwarden.toml";

struct Guide<'a> {
    setup: &'a NodeSetup,
    /// The page's commands, each with whether the story has run it.
    commands: RefCell<BTreeMap<String, bool>>,
    /// What each placeholder of the page stands for, learnt as the story goes.
    values: RefCell<Vec<(&'static str, String)>>,
}

impl<'a> Guide<'a> {
    fn new(setup: &'a NodeSetup) -> Guide<'a> {
        let page = std::fs::read_to_string(repo_root().join(PAGE)).expect("the on-call page");
        let commands = heapwarden_tests::markdown::commands(&page)
            .into_iter()
            .map(|c| (c, false))
            .collect();
        Guide {
            setup,
            commands: RefCell::new(commands),
            values: RefCell::new(Vec::new()),
        }
    }

    /// From now on `placeholder` (`<leak-id>`) in the page's commands stands for `value`.
    fn learn(&self, placeholder: &'static str, value: impl ToString) {
        self.values
            .borrow_mut()
            .push((placeholder, value.to_string()));
    }

    /// The page's `command`, placeholders filled, run by `sh` in the sandbox with this
    /// build's `heapwarden` first on `PATH`; (success, stdout, stderr).
    fn run(&self, command: &str) -> (bool, String, String) {
        match self.commands.borrow_mut().get_mut(command) {
            Some(ran) => *ran = true,
            None => panic!("`{command}` is not a command of {PAGE}"),
        }
        let mut line = command.strip_prefix("sudo ").unwrap_or(command).to_string();
        for (placeholder, value) in self.values.borrow().iter() {
            line = line.replace(placeholder, value);
        }
        line = line.replace(PAGE_CONFIG, &self.setup.config.display().to_string());
        assert!(
            !line.contains('<'),
            "`{command}`: a placeholder is not known yet"
        );
        let bin_dir = heapwarden().parent().unwrap().to_path_buf();
        let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .unwrap();
        let out = Command::new("sh")
            .args(["-c", &line])
            .env("PATH", path)
            .env_remove("HEAPWARDEN_CONFIG")
            .env_remove("HEAPWARDEN_ADMIN_TOKEN_FILE")
            .env("HEAPWARDEN_ADMIN_LISTEN", self.setup.admin.to_string())
            .current_dir(self.setup.sandbox.path())
            .output()
            .expect("run sh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, command: &str) -> String {
        let (ok, stdout, stderr) = self.run(command);
        assert!(ok, "`{command}` failed: {stderr}{stdout}");
        stdout
    }

    /// Every command of the page was run: a command added to the page joins the story.
    fn assert_every_command_ran(&self) {
        let missed: Vec<String> = (self.commands.borrow().iter())
            .filter(|(_, ran)| !**ran)
            .map(|(c, _)| c.clone())
            .collect();
        assert!(
            missed.is_empty(),
            "{PAGE} has commands the test never ran: {missed:#?}"
        );
    }
}

/// The first row of `go tool pprof -top`'s table, under its `flat` header.
fn pprof_top(text: &str) -> &str {
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .nth(1)
        .unwrap_or_default()
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
    let guide = Guide::new(&setup);
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
        let ps = guide.ok("heapwarden ps");
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
    let table = guide.ok("heapwarden profiles");
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
    guide.learn("<leak-id>", leak);
    guide.learn("<baseline-id>", base);
    let diff = guide.ok("heapwarden diff <leak-id>");
    let top = diff.lines().nth(2).unwrap_or_default();
    assert!(top.contains("leakInNamedFunction  app.js:"), "{diff}");
    // The runbook's `heapwarden diff <baseline> <leak>`.
    let both = guide.ok("heapwarden diff <baseline-id> <leak-id>");
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
    let sites = guide.ok("heapwarden diff <leak-id> --sites");
    assert!(sites.contains("ALLOCATION SITE"), "{sites}");

    // 3. Read it in pprof: pull both, then `go tool pprof -top -base`.
    let pulled = guide.ok("heapwarden pull <leak-id> -o leak.pb.gz");
    assert!(
        pulled.contains("go tool pprof") && pulled.contains("graphviz"),
        "{pulled}"
    );
    guide.ok("heapwarden pull <baseline-id> -o base.pb.gz");
    let text = guide.ok("go tool pprof -top -base base.pb.gz leak.pb.gz");
    assert!(pprof_top(&text).ends_with("leakInNamedFunction"), "{text}");

    // No trip yet? `heapwarden dump <slot>`; a snapshot for DevTools.
    guide.learn("<slot>", 0);
    let dumped = guide.ok("heapwarden dump <slot>");
    assert!(
        dumped.contains("of worker 0 (pid ") && dumped.contains(") written"),
        "{dumped}"
    );
    let snap = guide.ok("heapwarden dump <slot> --snapshot");
    guide.learn(
        "<snapshot-id>",
        snap.split_whitespace().last().unwrap_or_default(),
    );
    let pulled = guide.ok("heapwarden pull <snapshot-id>");
    assert!(pulled.contains("Chrome DevTools"), "{pulled}");
    assert!(!pulled.contains("go tool pprof"), "{pulled}");
    let holders = guide.ok("heapwarden retainers heapwarden-<snapshot-id>.heapsnapshot");
    assert!(
        holders.contains(".heapsnapshot: ") && holders.contains("HELD_MiB"),
        "{holders}"
    );

    // 4. Buy time: `heapwarden restart <slot>`, a planned drain.
    let started = logs.matching(msg("A worker started.")).len();
    let restarted = guide.ok("heapwarden restart <slot>");
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
    guide.ok(r#"sed -i 's/^action = "restart"/action = "profile-only"/' /etc/heapwarden/heapwarden.toml"#);
    let config = std::fs::read_to_string(&setup.config).unwrap();
    assert!(config.contains("\naction = \"profile-only\"\n"), "{config}");
    let reloaded = guide.ok("heapwarden reload");
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
            .ok("heapwarden ps")
            .lines()
            .nth(1)
            .is_some_and(|r| r.contains("ready")),
        "the worker still serves"
    );

    // The WorkerLeaking runbook's commands, as corrected on the page.
    guide.ok("sudo heapwarden profiles");
    guide.ok("sudo heapwarden pull <baseline-id> -o baseline.pb.gz");
    guide.ok("sudo heapwarden pull <leak-id> -o leak.pb.gz");
    let both = guide.ok("sudo heapwarden diff <baseline-id> <leak-id>");
    assert!(both.contains("leakInNamedFunction"), "{both}");
    let text = guide.ok("go tool pprof -top -base baseline.pb.gz leak.pb.gz");
    assert!(pprof_top(&text).ends_with("leakInNamedFunction"), "{text}");

    guide.assert_every_command_ran();
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
