//! The Debian package's own checks, no container needed: `lintian` finds nothing to
//! fix, and `heapwarden@.service` stays `heapwarden.service` per instance. The package
//! on a real systemd is `package.rs`.
#![forbid(unsafe_code)]

use std::process::Command;
use std::time::Duration;

use heapwarden_tests::TimeoutGuard;
use heapwarden_tests::tools::{assert_success, build_deb, repo_root};

/// `lintian` on the package: no errors and no warnings beyond the overrides the package
/// ships (packaging/lintian-overrides says why each one is there).
#[test]
fn lintian_finds_nothing_to_fix() {
    let has_lintian = Command::new("sh")
        .args(["-c", "command -v lintian && command -v cargo-deb"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_lintian {
        eprintln!(
            "\n!!!! SKIPPED: lintian or cargo-deb is not installed (scripts/test installs both) !!!!\n"
        );
        return;
    }
    let _guard = TimeoutGuard::new("lintian_finds_nothing_to_fix", Duration::from_secs(280));
    let pkg_dir = tempfile::tempdir().expect("package dir");
    let deb = build_deb(pkg_dir.path());
    let mut lintian = Command::new("lintian");
    lintian.args(["--fail-on", "error,warning"]).arg(&deb);
    let output = lintian.output().expect("run lintian");
    assert_success("lintian", &output);
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        !report
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "lintian:\n{report}"
    );
}

/// heapwarden@.service is heapwarden.service with per-instance names, and nothing
/// else: a change to one that the other lacks fails here. `HEAPWARDEN_BLESS=1`
/// rewrites the template from the service.
#[test]
fn the_template_unit_is_the_service_per_instance() {
    let dir = repo_root().join("systemd");
    let service = std::fs::read_to_string(dir.join("heapwarden.service")).expect("service");
    let template = std::fs::read_to_string(dir.join("heapwarden@.service")).expect("template");
    let marker = "# ---- heapwarden.service, per instance ----\n";
    let (header, body) = template
        .split_once(marker)
        .expect("the template's marker line");
    let mut expected = service.clone();
    for (from, to) in [
        (
            "Description=heapwarden memory-leak watchdog and worker supervisor",
            "Description=heapwarden memory-leak watchdog and worker supervisor (%i)",
        ),
        ("/etc/heapwarden/heapwarden.toml", "/etc/heapwarden/%i.toml"),
        (
            "\nStateDirectory=heapwarden\n",
            "\nStateDirectory=heapwarden-%i\n",
        ),
        (
            "\nRuntimeDirectory=heapwarden\n",
            "\nRuntimeDirectory=heapwarden-%i\n",
        ),
        (
            "\nSyslogIdentifier=heapwarden\n",
            "\nSyslogIdentifier=heapwarden@%i\n",
        ),
        ("stop heapwarden.socket", "stop heapwarden@%i.socket"),
    ] {
        assert!(expected.contains(from), "heapwarden.service lost {from:?}");
        expected = expected.replace(from, to);
    }
    if std::env::var_os("HEAPWARDEN_BLESS").is_some() {
        std::fs::write(
            dir.join("heapwarden@.service"),
            format!("{header}{marker}{expected}"),
        )
        .expect("rewrite the template");
        return;
    }
    assert!(
        body == expected,
        "systemd/heapwarden@.service is out of step with heapwarden.service; \
         rewrite it with HEAPWARDEN_BLESS=1 cargo test -p heapwarden-tests --test package_lint \
         the_template_unit"
    );
}
