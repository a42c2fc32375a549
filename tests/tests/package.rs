//! The Debian package on a real systemd: a minimal Debian 12 root (debootstrapped once,
//! cached outside the repo), booted with `systemd-nspawn -b` under a tmpfs overlay, the
//! package installed with `apt install ./heapwarden_*.deb`, then checked the way an
//! operator would: unit active and enabled, `STATUS=`, the service and admin ports,
//! `heapwarden ps`, an honest `systemctl reload` (refused file → exit 1 and an error in
//! `journalctl -p err`; good file applied), the watchdog restarting a SIGSTOPped agent,
//! socket activation (first connection served; a bad config stops the socket instead of
//! burning the start limit), a drained stop that leaves the cgroup empty, leak → profile
//! → `heapwarden diff` under the hardened unit with the worker under its own user
//! (`heapwarden-worker`: its uid, its heap sampled, no token or config it can read), two
//! `heapwarden@` instances (one socket-activated, its socket stopped by a bad config like
//! the main one), `apt remove` and `apt purge` (state and both users gone). A second boot
//! runs the manual recipe for other distributions as docs/src/operate/production.md#install
//! shows it.
//!
//! Runs as root with debootstrap, systemd-nspawn and nsenter (scripts/test installs
//! them); anywhere a container cannot boot it says why, loudly, and passes.
#![forbid(unsafe_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use heapwarden_tests::markdown;
use heapwarden_tests::nspawn::{Container, cached_root, cannot_boot, run};
use heapwarden_tests::tools::{build_deb, repo_root};
use heapwarden_tests::{TimeoutGuard, try_poll};

const CONFIG: &str = "/etc/heapwarden/heapwarden.toml";

fn timed<T>(figures: &mut Vec<(String, Duration)>, what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let value = f();
    figures.push((what.to_string(), start.elapsed()));
    value
}

/// The instance configs: their own ports, one worker each. `a` leaks on purpose with
/// rules tight enough to trip within seconds, and runs its worker as the package's
/// `heapwarden-worker` (docs/src/operate/identity.md): the demo then cannot read the
/// config, so its settings come from `[pool.env]`, and its SQLite lives in a directory
/// of that user's that a drop-in makes writable (`ReadWritePaths=`).
fn instance_config(name: &str, service_port: u16, admin_port: u16, leak: bool) -> String {
    let mut config = format!(
        "state-dir = \"/var/lib/heapwarden-{name}\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
         [pool]\nworkers = 1\nlisten = \"127.0.0.1:{service_port}\"\n"
    );
    if leak {
        config.push_str(&format!(
            "user = \"heapwarden-worker\"\n\
             [pool.env]\nHEAPWARDEN_STATE_DIR = \"{WORKER_DATA}\"\nHEAPWARDEN_DEMO_LEAK_RATE = \"8MiB\"\n\
             [sampling]\ninterval = \"500ms\"\npss-every = 2\n\
             [watchdog]\nwarmup = \"2s\"\ngrowth = \"16MiB\"\nstrikes = 2\nmax-memory = \"off\"\n"
        ));
    }
    config
}

/// The demo's own state directory under `pool.user` in heapwarden@a: the worker's user
/// owns it, a drop-in makes it writable under `ProtectSystem=strict`.
const WORKER_DATA: &str = "/srv/demo-a";

#[test]
fn the_debian_package_on_a_real_systemd() {
    if let Some(why) = cannot_boot() {
        eprintln!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             SKIPPED: the Debian package tier cannot boot a container here: {why}\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        );
        return;
    }
    let started = Instant::now();
    let mut figures: Vec<(String, Duration)> = Vec::new();
    let (root, cached) = timed(
        &mut figures,
        "cached root (debootstrap if missing)",
        cached_root,
    );
    // With the root cached the tier stays under 4 minutes; the first build may be slow.
    let _guard = TimeoutGuard::new(
        "the_debian_package_on_a_real_systemd",
        Duration::from_secs(if cached { 240 } else { 540 }),
    );
    let pkg_dir = tempfile::tempdir().expect("package dir");
    let deb = timed(&mut figures, "cargo deb (debug binaries)", || {
        build_deb(pkg_dir.path())
    });
    let deb_name = deb
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();
    let deb_size = std::fs::metadata(&deb).expect("deb").len();

    let c = timed(&mut figures, "boot the container", || {
        Container::boot(&root, &[(pkg_dir.path(), "/pkg")])
    });

    // Install: the postinst creates the user and directories, enables and starts the
    // service; `systemctl start` (Type=notify) returns once every worker is ready.
    timed(&mut figures, "apt install -> service ready", || {
        c.ok(&format!("apt-get install -y /pkg/{deb_name}"));
        c.ok("systemctl is-active heapwarden");
    });
    assert_eq!(c.ok("systemctl is-enabled heapwarden").trim(), "enabled");
    assert_eq!(
        c.ok("systemctl is-enabled heapwarden.socket || true")
            .trim(),
        "disabled"
    );
    c.ok("getent passwd heapwarden | grep -q ':/var/lib/heapwarden:/usr/sbin/nologin$'");
    c.ok("test \"$(stat -c '%U %a' /var/lib/heapwarden)\" = 'heapwarden 700'");
    // The workers' user exists, and the conffile is readable by the agent's group
    // (the agent, and `heapwarden reload` run by ExecReload=) but not by the workers.
    c.ok("getent passwd heapwarden-worker | grep -q ':/usr/sbin/nologin$'");
    let conffile_owner = format!("test \"$(stat -c '%U:%G %a' {CONFIG})\" = 'root:heapwarden 640'");
    c.ok(&conffile_owner);
    c.ok("test -f /usr/lib/heapwarden/libheapwarden_preload.so && test -f /usr/share/man/man1/heapwarden-reload.1.gz");
    // The exposure score docs/src/operate/production.md quotes.
    let security = c.ok("systemd-analyze security --no-pager heapwarden | tail -n1");
    let status = c.ok("systemctl show -p StatusText --value heapwarden");
    assert!(status.contains("workers ready"), "STATUS= line: {status}");
    c.ok("curl -sf -o /dev/null 127.0.0.1:8080/items/1");
    c.ok("curl -sf -o /dev/null 127.0.0.1:9464/readyz");
    let ps = c.ok(&format!("heapwarden ps -c {CONFIG}"));
    assert!(
        ps.contains("SLOT") && ps.contains("ready"),
        "heapwarden ps:\n{ps}"
    );
    // As `heapwarden` the agent may not page out root's binary (the kernel allows
    // MADV_PAGEOUT only on files one owns or may write); it drops its start-up pages
    // from its own page tables, which needs no privilege.
    let record = c.wait(
        Duration::from_secs(30),
        "the start-up hand-back in the journal",
        "journalctl -u heapwarden -o cat | grep -m1 'start-up pages were handed back'",
    );
    let record: serde_json::Value = serde_json::from_str(record.trim()).expect("a JSON record");
    let kib = |key: &str| {
        record[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: {record}"))
    };
    assert!(
        kib("rss_after_kib") + 1024 < kib("rss_before_kib"),
        "the hand-back freed under a MiB of the agent's RSS: {record}"
    );
    // The CrashLooping runbook's grep finds a worker's records (`worker` is a number).
    c.ok("journalctl -u heapwarden -o cat | grep -qE '\"worker\":[0-9]+[,}]'");
    // Longer /compute requests for the drain check below (applied by the next reload).
    c.ok(&format!(
        "sed -i 's/^compute-max-rounds = .*/compute-max-rounds = 100000000000/' {CONFIG}"
    ));

    // Reload, refused: exit non-zero, the error in `journalctl -p err`, still serving.
    c.ok(&format!(
        "cp {CONFIG} /root/good.toml && sed -i 's/^workers = 0$/workers = \"many\"/' {CONFIG}"
    ));
    let refused = c.sh("systemctl reload heapwarden");
    assert!(
        !refused.status.success(),
        "a refused reload must fail systemctl reload"
    );
    c.wait(
        Duration::from_secs(10),
        "the refusal in journalctl -p err",
        "journalctl -u heapwarden -p err -o cat | grep -q 'The reloaded config was refused'",
    );
    c.ok("systemctl is-active heapwarden && curl -sf -o /dev/null 127.0.0.1:8080/items/1");
    // Reload, good: applied (one worker more), and timed as an operator sees it.
    c.ok(&format!(
        "sed 's/^workers = 0$/workers = 3/' /root/good.toml > {CONFIG}"
    ));
    timed(&mut figures, "systemctl reload (good file)", || {
        c.ok("systemctl reload heapwarden")
    });
    c.wait(
        Duration::from_secs(90),
        "three workers after the reload",
        &format!("heapwarden ps --json -c {CONFIG} | tr -d ' \\n' | grep -o '\"ready\":true' | wc -l | grep -qx 3"),
    );
    c.ok(&format!("cp /root/good.toml {CONFIG}"));
    // An upgrade (here: the same version again) restarts the running agent.
    let before = c.ok("systemctl show -p MainPID --value heapwarden");
    c.ok(&format!("apt-get install -y --reinstall /pkg/{deb_name}"));
    let after = c.ok(
        "systemctl is-active heapwarden >/dev/null && systemctl show -p MainPID --value heapwarden",
    );
    assert_ne!(
        before.trim(),
        after.trim(),
        "the agent was not restarted by the upgrade"
    );
    assert_eq!(
        c.ok(&format!("cat {CONFIG}")),
        c.ok("cat /root/good.toml"),
        "the conffile was replaced"
    );
    c.ok(&conffile_owner);

    // Two more agents side by side: heapwarden@a (leaking on purpose, its worker under
    // its own user) and heapwarden@b.
    c.ok(&format!(
        "printf '%s' '{}' > /etc/heapwarden/a.toml && printf '%s' '{}' > /etc/heapwarden/b.toml",
        instance_config("a", 8081, 9465, true),
        instance_config("b", 8082, 9466, false)
    ));
    c.ok("chgrp heapwarden /etc/heapwarden/a.toml /etc/heapwarden/b.toml && chmod 0640 /etc/heapwarden/a.toml /etc/heapwarden/b.toml");
    c.ok(&format!(
        "install -d -m 0700 -o heapwarden-worker -g heapwarden-worker {WORKER_DATA} && \
         mkdir -p /etc/systemd/system/heapwarden@a.service.d && \
         printf '[Service]\\nReadWritePaths={WORKER_DATA}\\n' > /etc/systemd/system/heapwarden@a.service.d/worker-data.conf && \
         systemctl daemon-reload"
    ));
    c.ok("systemctl start heapwarden@a heapwarden@b");
    c.ok("curl -sf -o /dev/null 127.0.0.1:8082/items/1 && curl -sf -o /dev/null 127.0.0.1:9466/readyz");
    for name in ["a", "b"] {
        let ps = c.ok(&format!("heapwarden ps -c /etc/heapwarden/{name}.toml"));
        assert!(ps.contains("ready"), "heapwarden@{name} ps:\n{ps}");
    }
    c.ok("test -d /var/lib/heapwarden-a && test -d /var/lib/heapwarden-b && test -d /run/heapwarden-a");
    // heapwarden@a's worker runs as heapwarden-worker under the real unit (the agent's
    // capabilities, NoNewPrivileges, SystemCallFilter=@setuid), and is still sampled.
    // It leaks, so it is replaced every few seconds: each check reads the agent's
    // children afresh and is retried.
    let agent_a = c.ok("systemctl show -p MainPID --value heapwarden@a");
    let agent_a = agent_a.trim();
    let children = format!("ps -o pid= --ppid {agent_a}");
    c.wait(
        Duration::from_secs(30),
        "heapwarden@a's workers under heapwarden-worker",
        &format!(
            "u=$(ps -o uid= --ppid {agent_a} | tr -d ' ' | sort -u) && test -n \"$u\" && test \"$u\" = \"$(id -u heapwarden-worker)\""
        ),
    );
    let figure = |field: &str| {
        let out = c.sh("heapwarden ps --json -c /etc/heapwarden/a.toml");
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        rows.get(0)?.get(field)?.as_u64().filter(|v| *v > 0)
    };
    for field in ["heap_allocated_bytes", "pss_bytes"] {
        try_poll(Duration::from_secs(30), || figure(field))
            .unwrap_or_else(|| c.fail(&format!("no {field} for the worker of heapwarden@a")));
    }
    // As the worker's user in the service's mount namespace: no token, no config, and
    // no config path in a worker's environment.
    let as_worker = |cmd: &str| {
        c.sh(&format!(
            "nsenter -t {agent_a} -m -- setpriv --reuid=heapwarden-worker --regid=heapwarden-worker --clear-groups {cmd}"
        ))
        .status
        .success()
    };
    assert!(as_worker("true"), "setpriv into the service's namespace");
    assert!(
        !as_worker("cat /var/lib/heapwarden-a/admin-token"),
        "the workers' user read the token"
    );
    for config in [CONFIG, "/etc/heapwarden/a.toml"] {
        assert!(
            !as_worker(&format!("cat {config}")),
            "the workers' user read {config}"
        );
    }
    c.wait(
        Duration::from_secs(30),
        "a worker environment without the config path",
        &format!(
            "e=$(tr '\\0' '\\n' < /proc/$({children} | head -n1 | tr -d ' ')/environ) && \
             printf '%s' \"$e\" | grep -q '^HEAPWARDEN_WORKER_SLOT=' && ! printf '%s' \"$e\" | grep -q '^HEAPWARDEN_CONFIG='"
        ),
    );
    // Leak -> profile -> diff under the hardened unit, the profile through the drop box.
    let leak_id = try_poll(Duration::from_secs(90), || {
        let out = c.sh("heapwarden profiles --json -c /etc/heapwarden/a.toml");
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        rows.as_array()?
            .iter()
            .find(|p| p["trigger"] == "leak")
            .map(|p| p["id"].to_string())
    })
    .unwrap_or_else(|| c.fail("no leak profile of heapwarden@a"));
    let diff = c.ok(&format!(
        "heapwarden diff -c /etc/heapwarden/a.toml {leak_id}"
    ));
    assert!(!diff.trim().is_empty(), "heapwarden diff printed nothing");
    c.ok("test -z \"$(ls -A /var/lib/heapwarden-a/dumps)\"");
    // The detection is an error in the journal (issue 20: `-p err` finds it).
    c.ok("journalctl -u heapwarden@a -p err -o cat | grep -q 'A memory leak was detected'");
    c.ok("systemctl stop heapwarden@a heapwarden@b");
    // An instance socket-activated: heapwarden@b.socket, its address from a drop-in.
    c.ok("mkdir -p /etc/systemd/system/heapwarden@b.socket.d && \
          printf '[Socket]\\nListenStream=127.0.0.1:8082\\n' > /etc/systemd/system/heapwarden@b.socket.d/listen.conf && \
          systemctl daemon-reload && systemctl start heapwarden@b.socket");
    c.ok("curl -sf --max-time 120 -o /dev/null 127.0.0.1:8082/items/1");
    c.wait(
        Duration::from_secs(60),
        "heapwarden@b started by its socket",
        "systemctl is-active heapwarden@b && journalctl -u heapwarden@b -o cat | grep -q '\"socket_activated\":true'",
    );
    // A bad config behind the instance's socket: the template's ExecStopPost stops
    // heapwarden@b.socket on exit 64 as the service's stops heapwarden.socket: one
    // failed start, the socket inactive (not failed by the start limit) and refusing,
    // and starting both recovers once the config is fixed.
    c.ok("systemctl stop heapwarden@b && sed -i 's/^workers = 1$/workers = \"many\"/' /etc/heapwarden/b.toml");
    assert_exit_64_stops_the_socket(&c, "heapwarden@b", 8082, 1);
    c.ok("sed -i 's/^workers = \"many\"$/workers = 1/' /etc/heapwarden/b.toml");
    c.ok("systemctl start heapwarden@b.socket heapwarden@b && curl -sf -o /dev/null 127.0.0.1:8082/items/1");
    c.ok("systemctl stop heapwarden@b.socket heapwarden@b");

    // The watchdog: a stopped agent misses its WATCHDOG=1 and is killed and restarted
    // (a drop-in shortens WatchdogSec=30s to keep the tier short; same mechanism).
    c.ok("mkdir -p /run/systemd/system/heapwarden.service.d && printf '[Service]\\nWatchdogSec=8s\\n' > /run/systemd/system/heapwarden.service.d/watchdog.conf && systemctl daemon-reload && systemctl restart heapwarden");
    let before = c.ok("systemctl show -p MainPID --value heapwarden");
    c.ok(&format!("kill -STOP {}", before.trim()));
    c.wait(
        Duration::from_secs(60),
        "the watchdog restart",
        &format!(
            "test \"$(systemctl show -p NRestarts --value heapwarden)\" -ge 1 && systemctl is-active heapwarden && test \"$(systemctl show -p MainPID --value heapwarden)\" != {}",
            before.trim()
        ),
    );
    c.ok("journalctl -u heapwarden -o cat | grep -qi 'watchdog timeout'");
    c.ok("rm -r /run/systemd/system/heapwarden.service.d && systemctl daemon-reload");

    // Stop drains: an in-flight request finishes, then nothing is left in the cgroup.
    // Sized to take about 3 s on this machine (well inside drain-timeout = 30s).
    let compute = |rounds: u64| {
        format!(
            "curl -sf -o /root/compute.out -w '%{{time_total}}' -X POST -H 'content-type: application/json' \
             -d '{{\"password\":\"p\",\"rounds\":{rounds}}}' 127.0.0.1:8080/compute"
        )
    };
    let probe_rounds = 20_000_000u64;
    let took: f64 = c
        .ok(&compute(probe_rounds))
        .trim()
        .parse()
        .expect("curl time");
    let rounds = ((probe_rounds as f64) * 3.0 / took.max(0.001)) as u64;
    c.ok(&format!(
        "{} > /dev/null 2>&1 & echo $! > /root/curl.pid",
        compute(rounds)
    ));
    // In flight: the connection is established (port 8080 = 1F90, state 01).
    c.wait(
        Duration::from_secs(10),
        "the request in flight",
        "grep -q ':1F90 [0-9A-F:]* 01 ' /proc/net/tcp",
    );
    c.ok("systemctl stop heapwarden");
    c.ok("while kill -0 $(cat /root/curl.pid) 2>/dev/null; do sleep 0.1; done; grep -q digest /root/compute.out");
    let procs = c.sh("cat /sys/fs/cgroup/system.slice/heapwarden.service/cgroup.procs 2>/dev/null");
    assert!(
        String::from_utf8_lossy(&procs.stdout).trim().is_empty(),
        "processes left in the cgroup after stop: {}",
        String::from_utf8_lossy(&procs.stdout)
    );

    // Socket activation: the first connection starts the agent and is served.
    c.ok("systemctl start heapwarden.socket");
    c.ok("curl -sf --max-time 120 -o /dev/null 127.0.0.1:8080/items/1");
    // The first worker serves before the whole pool is ready (READY=1).
    c.wait(
        Duration::from_secs(60),
        "the socket-activated agent ready",
        "systemctl is-active heapwarden",
    );
    // A bad config with the socket: exit 64 stops the socket (refused, not queued), one
    // start only, and `systemctl start heapwarden.socket heapwarden` recovers.
    c.ok("systemctl stop heapwarden");
    c.ok(&format!(
        "sed -i 's/^workers = 0$/workers = \"many\"/' {CONFIG}"
    ));
    c.ok("systemctl reset-failed heapwarden heapwarden.socket 2>/dev/null; systemctl start heapwarden.socket");
    assert_exit_64_stops_the_socket(&c, "heapwarden", 8080, 6);
    c.ok(&format!("cp /root/good.toml {CONFIG}"));
    c.ok("systemctl start heapwarden.socket heapwarden && curl -sf -o /dev/null 127.0.0.1:8080/items/1");

    // Remove stops everything and keeps state and user; purge removes both.
    c.ok("apt-get remove -y heapwarden");
    let active = c.sh("systemctl is-active heapwarden heapwarden.socket");
    let states = String::from_utf8_lossy(&active.stdout).into_owned();
    assert!(
        states.lines().all(|l| l != "active"),
        "still active after apt remove: {states}"
    );
    c.ok("! pgrep -u heapwarden >/dev/null");
    c.ok("test -d /var/lib/heapwarden && getent passwd heapwarden >/dev/null");
    c.ok("apt-get purge -y heapwarden");
    // Purge removes the instances' state too, and both users the package created and
    // their groups.
    c.ok("test ! -e /var/lib/heapwarden && test ! -e /var/lib/heapwarden-a && ! getent passwd heapwarden >/dev/null && ! getent passwd heapwarden-worker >/dev/null && ! getent group heapwarden >/dev/null && ! getent group heapwarden-worker >/dev/null");
    // A policy-rc.d that forbids starting services (image builds) is honoured: the
    // unit is enabled, not started. This install also runs without systemd-sysusers
    // (moved away): postinst's useradd fallback creates the same two users.
    c.ok("printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d");
    c.ok("mv \"$(command -v systemd-sysusers)\" /root/systemd-sysusers && ! command -v systemd-sysusers");
    c.ok(&format!("apt-get install -y /pkg/{deb_name}"));
    c.ok("getent passwd heapwarden | grep -q ':/var/lib/heapwarden:/usr/sbin/nologin$' && getent passwd heapwarden-worker | grep -q ':/usr/sbin/nologin$'");
    c.ok(&conffile_owner);
    assert_eq!(c.ok("systemctl is-enabled heapwarden").trim(), "enabled");
    let state = c.sh("systemctl is-active heapwarden");
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "inactive");
    drop(c);

    // The manual recipe (other distributions), in a fresh boot of the root.
    let systemd_dir = repo_root().join("systemd");
    let unpacked = tempfile::tempdir().expect("unpacked");
    run(
        {
            let mut x = Command::new("dpkg-deb");
            x.arg("-x").arg(&deb).arg(unpacked.path());
            x
        },
        "dpkg-deb -x",
    );
    // The page's `target/release/`: the package's binaries, linked from the unpacked tree.
    let release = tempfile::tempdir_in(unpacked.path()).expect("release dir");
    for file in [
        "usr/bin/heapwarden",
        "usr/bin/heapwarden-demo",
        "usr/lib/heapwarden/libheapwarden_preload.so",
    ] {
        let from = unpacked.path().join(file);
        let name = from.file_name().expect("file name");
        std::fs::hard_link(&from, release.path().join(name))
            .unwrap_or_else(|e| panic!("link {}: {e}", from.display()));
    }
    let recipe = manual_recipe();
    let m = timed(
        &mut figures,
        "manual recipe (boot + install + ready)",
        || {
            let m = Container::boot(
                &root,
                &[
                    (systemd_dir.as_path(), "/src/systemd"),
                    (release.path(), "/src/target/release"),
                ],
            );
            m.ok(&recipe);
            m
        },
    );
    m.ok("systemctl is-active heapwarden && systemctl is-enabled heapwarden");
    m.ok("curl -sf -o /dev/null 127.0.0.1:8080/items/1");
    m.ok(&format!("heapwarden ps -c {CONFIG} | grep -q ready"));
    m.ok(&format!(
        "sed -i 's/^workers = 0$/workers = \"many\"/' {CONFIG}"
    ));
    assert!(!m.sh("systemctl reload heapwarden").status.success());
    drop(m);

    figures.push(("whole tier".into(), started.elapsed()));
    eprintln!(
        "package tier figures (root {}):",
        if cached { "cached" } else { "built" }
    );
    eprintln!("  package size: {deb_size} bytes ({deb_name}, debug binaries, gzip)");
    eprintln!("  systemd-analyze security: {}", security.trim());
    for (what, took) in &figures {
        eprintln!("  {what}: {:.1} s", took.as_secs_f64());
    }
}

/// The manual install for other distributions, read from production.md#install: its
/// `sh` block that starts with `cargo build --release`, run from `/src`, where the
/// container has the repository's `systemd/` and the package's binaries as
/// `target/release/`. The container's only changes to the page: step 1 (`cargo build
/// --release`) is skipped, since the root has no toolchain and the binaries are the
/// package's, and `sudo ` is dropped, since the script runs as root. Comment lines go.
/// A bad config behind `unit`'s socket on `port` (the socket started, the config already
/// broken): one connection starts the agent, which exits 64, and the unit's
/// `ExecStopPost=` stops the socket — one failed start, the socket inactive (not failed
/// by the start limit) and refusing `refused` connections in a row.
fn assert_exit_64_stops_the_socket(c: &Container, unit: &str, port: u16, refused: usize) {
    let _ = c.sh(&format!(
        "curl -s --max-time 30 -o /dev/null 127.0.0.1:{port}/items/1"
    ));
    c.wait(
        Duration::from_secs(30),
        &format!("{unit}.socket stopped after exit 64"),
        &format!(
            "systemctl is-failed {unit} >/dev/null && test \"$(systemctl is-active {unit}.socket)\" = inactive"
        ),
    );
    for _ in 0..refused {
        let reply = c.sh(&format!(
            "curl -s --max-time 5 -o /dev/null 127.0.0.1:{port}/items/1"
        ));
        assert!(
            !reply.status.success(),
            "{unit}.socket accepted a connection without an agent"
        );
    }
    let socket_result = c.ok(&format!("systemctl show -p Result --value {unit}.socket"));
    assert_ne!(socket_result.trim(), "service-start-limit-hit");
    let status = c.ok(&format!("systemctl show -p ExecMainStatus --value {unit}"));
    assert_eq!(status.trim(), "64");
}

fn manual_recipe() -> String {
    const BUILD: &str = "cargo build --release";
    let page = std::fs::read_to_string(repo_root().join("docs/src/operate/production.md"))
        .expect("docs/src/operate/production.md");
    let mut blocks = markdown::code_blocks(markdown::section(&page, "Install"))
        .into_iter()
        .filter(|block| block.lang == "sh" && block.lines.iter().any(|l| l == BUILD));
    let block = blocks
        .next()
        .unwrap_or_else(|| panic!("production.md#install has no `sh` block with `{BUILD}`"));
    assert!(
        blocks.next().is_none(),
        "production.md#install has two `sh` blocks with `{BUILD}`"
    );
    let mut script = vec!["set -e".to_string(), "cd /src".to_string()];
    for line in block.lines {
        if line.starts_with('#') || line == BUILD {
            continue;
        }
        let command = line
            .strip_prefix("sudo ")
            .unwrap_or_else(|| panic!("a step of production.md#install without `sudo`: {line}"));
        script.push(command.to_string());
    }
    script.join("\n")
}
