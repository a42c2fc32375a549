//! Production artefacts stay deployable: the systemd units pass `systemd-analyze verify`
//! and a hardening score, the sysusers/tmpfiles snippets apply, the Prometheus alert
//! rules pass `promtool check` and their own unit tests and use only contract metrics
//! (the dashboard has its own file, `dashboard.rs`).
//!
//! The external tools are required, not optional: a missing tool fails the test with the
//! Debian package that provides it (CI installs them).
#![forbid(unsafe_code)]

use std::process::Command;

use heapwarden_tests::heapwarden;
use heapwarden_tests::promql::{ALERT_ONLY_METRICS, CONTRACT_METRICS, promql_series_names};
use heapwarden_tests::tools::{assert_success, repo_root, run_tool, text};

#[test]
fn systemd_units_verify() {
    let systemd = repo_root().join("systemd");
    let dir = tempfile::tempdir().expect("temp dir");
    let service = std::fs::read_to_string(systemd.join("heapwarden.service")).expect("read unit");
    assert!(
        service.contains("ExecStart=/usr/local/bin/heapwarden run "),
        "ExecStart moved"
    );
    // verify insists that ExecStart= is executable: point it at the binary just built.
    let binary = heapwarden();
    let service = service.replace("/usr/local/bin/heapwarden", &binary.to_string_lossy());
    std::fs::write(dir.path().join("heapwarden.service"), service).expect("write unit");
    std::fs::copy(
        systemd.join("heapwarden.socket"),
        dir.path().join("heapwarden.socket"),
    )
    .expect("copy socket unit");

    let mut verify = Command::new("systemd-analyze");
    verify
        .arg("verify")
        .arg("heapwarden.service")
        .arg("heapwarden.socket")
        .current_dir(dir.path());
    let output = run_tool(verify, "systemd");
    let report = text(&output);
    // Units shipped by the host can draw warnings of their own; ours must draw none.
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        eprintln!("systemd-analyze verify: {line}");
        assert!(
            !line.contains("heapwarden"),
            "warning about our units: {line}"
        );
    }
    assert_success("systemd-analyze verify", &output);

    // Hardening regression guard: exposure is 1.4 ("OK") with systemd 252; fail above 3.0.
    let mut security = Command::new("systemd-analyze");
    security
        .args(["security", "--offline=yes", "--threshold=30", "--no-pager"])
        .arg(dir.path().join("heapwarden.service"));
    let output = run_tool(security, "systemd");
    let summary = text(&output);
    let overall = summary
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("");
    eprintln!("systemd-analyze security: {overall}");
    assert_success("systemd-analyze security --threshold=30", &output);
}

#[test]
fn sysusers_and_tmpfiles_apply() {
    let systemd = repo_root().join("systemd");
    let root = tempfile::tempdir().expect("temp dir");
    for (src, dest) in [
        ("heapwarden.sysusers", "usr/lib/sysusers.d/heapwarden.conf"),
        ("heapwarden.tmpfiles", "usr/lib/tmpfiles.d/heapwarden.conf"),
    ] {
        let dest = root.path().join(dest);
        std::fs::create_dir_all(dest.parent().expect("has a parent")).expect("mkdir");
        std::fs::copy(systemd.join(src), dest).expect("install snippet");
    }
    // Installed under /usr/lib like the package does (Debian 12 has no /etc/sysusers.d);
    // sysusers still writes /etc/passwd.
    std::fs::create_dir_all(root.path().join("etc")).expect("mkdir etc");
    let mut sysusers = Command::new("systemd-sysusers");
    sysusers.arg(format!("--root={}", root.path().display()));
    let output = run_tool(sysusers, "systemd");
    assert_success("systemd-sysusers", &output);
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).expect("passwd written");
    let user = passwd
        .lines()
        .find(|l| l.starts_with("heapwarden:"))
        .expect("user created");
    assert!(
        user.ends_with(":/var/lib/heapwarden:/usr/sbin/nologin"),
        "user entry: {user}"
    );

    // Creating the directories chowns them to heapwarden, which needs root. /proc/self
    // belongs to our effective uid (no nix "user" feature needed for that).
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        eprintln!("note: not root, systemd-tmpfiles --create not exercised");
        return;
    }
    let mut tmpfiles = Command::new("systemd-tmpfiles");
    tmpfiles
        .arg(format!("--root={}", root.path().display()))
        .arg("--create");
    let output = run_tool(tmpfiles, "systemd");
    assert_success("systemd-tmpfiles --create", &output);
    let state = std::fs::metadata(root.path().join("var/lib/heapwarden")).expect("state dir");
    assert_eq!(state.mode() & 0o7777, 0o700, "state dir mode");
    assert_ne!(state.uid(), 0, "state dir belongs to the heapwarden user");
}

#[test]
fn alert_rules_check_and_test() {
    let dashboards = repo_root().join("dashboards");
    let mut check = Command::new("promtool");
    check
        .args(["check", "rules"])
        .arg(dashboards.join("alerts.yml"));
    assert_success("promtool check rules", &run_tool(check, "prometheus"));

    let mut unit = Command::new("promtool");
    unit.args(["test", "rules"])
        .arg(dashboards.join("alerts.test.yml"));
    let output = run_tool(unit, "prometheus");
    assert_success("promtool test rules", &output);
    assert!(text(&output).contains("SUCCESS"), "{}", text(&output));

    let mut config = Command::new("promtool");
    config
        .args(["check", "config", "--syntax-only"])
        .arg(dashboards.join("prometheus.example.yml"));
    assert_success("promtool check config", &run_tool(config, "prometheus"));
}

#[test]
fn alert_rules_use_known_metrics_and_runbooks() {
    let rules = std::fs::read_to_string(repo_root().join("dashboards/alerts.yml")).expect("alerts");
    let mut alerts = Vec::new();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert: ") {
            alerts.push(name.to_owned());
        } else if let Some(expr) = line.strip_prefix("expr: ") {
            for name in promql_series_names(expr) {
                let known = CONTRACT_METRICS.contains(&name.as_str())
                    || ALERT_ONLY_METRICS.contains(&name.as_str());
                assert!(known, "alert expression uses unknown metric {name}: {expr}");
            }
        } else if let Some(url) = line.strip_prefix("runbook_url: ") {
            let alert = alerts.last().expect("runbook_url follows its alert");
            let page = format!("docs/src/oncall/runbooks/{}.md\"", alert.to_lowercase());
            assert!(
                url.ends_with(&page),
                "{alert}: runbook_url {url} must end in {page}"
            );
        }
    }
    for required in [
        "WorkerLeaking",
        "CrashLooping",
        "SlotFailed",
        "ProfileDiskFull",
        "AgentDown",
    ] {
        assert!(
            alerts.iter().any(|a| a == required),
            "alert {required} missing"
        );
    }
    // Each runbook link lands on a page of the book whose title is "Alert: <Name>".
    let missing: Vec<_> = alerts
        .iter()
        .filter(|a| {
            let page =
                repo_root().join(format!("docs/src/oncall/runbooks/{}.md", a.to_lowercase()));
            let text = std::fs::read_to_string(page).unwrap_or_default();
            !text.starts_with(&format!("# Alert: {a}\n"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/src/oncall/runbooks lacks a page titled \"# Alert: <Name>\" for {missing:?}"
    );
}
