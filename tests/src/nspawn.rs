//! A real systemd for the package tier (`tests/package.rs`): a minimal Debian 12 root,
//! debootstrapped once into a cache outside the repository (`/var/cache/heapwarden-test`,
//! or `$HEAPWARDEN_TEST_ROOT_CACHE`), booted with `systemd-nspawn -b` under a tmpfs
//! overlay so it is never written, and commands run inside through `nsenter`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::{Proc, try_poll};

/// Bump when the root's package set or setup changes: a new name is a fresh root.
pub const ROOT_VERSION: &str = "bookworm-root-v1";
const ROOT_PACKAGES: &str = "systemd,systemd-sysv,dbus,curl,procps,ca-certificates";

pub fn cache_dir() -> PathBuf {
    std::env::var_os("HEAPWARDEN_TEST_ROOT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/heapwarden-test"))
}

/// Why this machine cannot boot the container, if it cannot.
pub fn cannot_boot() -> Option<String> {
    if nix::unistd::geteuid().as_raw() != 0 {
        return Some("not root: systemd-nspawn and debootstrap need root".into());
    }
    for tool in ["systemd-nspawn", "nsenter", "debootstrap"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (scripts/test installs it)"
            ));
        }
    }
    None
}

pub fn run(mut cmd: Command, what: &str) -> Output {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The cached root: debootstrapped on the first run (a few minutes), reused afterwards.
/// A lock file keeps two runs from building it at once.
pub fn cached_root() -> (PathBuf, bool) {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).expect("cache dir");
    let lock = std::fs::File::create(dir.join(".lock")).expect("lock file");
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the root cache");
    let root = dir.join(ROOT_VERSION);
    if root.join(".heapwarden-root-complete").exists() {
        return (root, true);
    }
    let tmp = dir.join(format!("{ROOT_VERSION}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    let mirror = std::env::var("HEAPWARDEN_TEST_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    eprintln!(
        "package tier: building the Debian 12 root in {} (once)",
        root.display()
    );
    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .args([
            "--variant=minbase",
            &format!("--include={ROOT_PACKAGES}"),
            "bookworm",
        ])
        .arg(&tmp)
        .arg(mirror);
    run(debootstrap, "debootstrap");
    // Timers that would reach for the network or the disk in the middle of a test.
    let mut mask = Command::new("systemctl");
    mask.arg(format!("--root={}", tmp.display())).args([
        "mask",
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
    ]);
    let _ = mask.output();
    std::fs::write(tmp.join(".heapwarden-root-complete"), ROOT_VERSION).expect("marker");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&tmp, &root).expect("move the root into place");
    (root, false)
}

/// The root booted under a throw-away overlay; commands run inside through nsenter.
pub struct Container {
    nspawn: Proc,
    init: i32,
}

impl Container {
    pub fn boot(root: &Path, binds: &[(&Path, &str)]) -> Container {
        let mut cmd = Command::new("systemd-nspawn");
        cmd.env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .args([
                "-q",
                "-b",
                "--register=no",
                "--keep-unit",
                "--private-network",
                // The cached root stays read-only below a tmpfs overlay: no copy to make
                // (a copy took ~25 s here) and nothing to clean up after a crash.
                "--volatile=overlay",
                "-D",
            ])
            .arg(root);
        for (host, guest) in binds {
            cmd.arg(format!("--bind-ro={}:{guest}", host.display()));
        }
        let nspawn = Proc::spawn(cmd);
        let parent = nspawn.pid();
        let init = try_poll(Duration::from_secs(30), || child_of(parent))
            .unwrap_or_else(|| panic!("systemd-nspawn started no init:\n{}", nspawn.logs.raw()));
        let container = Container { nspawn, init };
        // "offline" until systemd listens on its private socket; then --wait waits for
        // the boot to finish.
        let mut last = String::new();
        let booted = try_poll(Duration::from_secs(60), || {
            let state = container.sh("systemctl is-system-running --wait");
            last = String::from_utf8_lossy(&state.stdout).trim().to_string();
            (last == "running" || last == "degraded").then_some(())
        });
        assert!(
            booted.is_some(),
            "the container did not boot: {last}\n{}",
            container.nspawn.logs.raw()
        );
        container
    }

    /// `sh -c script` inside the container (all its namespaces), bounded by 150 s.
    pub fn sh(&self, script: &str) -> Output {
        Command::new("timeout")
            .args(["150", "nsenter", "-t", &self.init.to_string(), "-a", "--"])
            .args(["/bin/sh", "-c", &format!("cd /root && {script}")])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("run nsenter")
    }

    /// [`Container::sh`], which must succeed; its stdout. A failure shows the journal.
    pub fn ok(&self, script: &str) -> String {
        let output = self.sh(script);
        if !output.status.success() {
            self.fail(&format!(
                "`{script}` failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Polls `script` until it succeeds.
    pub fn wait(&self, timeout: Duration, what: &str, script: &str) -> String {
        match try_poll(timeout, || {
            let output = self.sh(script);
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
        }) {
            Some(out) => out,
            None => self.fail(&format!("timed out after {timeout:?} waiting for {what}")),
        }
    }

    pub fn fail(&self, message: &str) -> ! {
        let journal = self.sh("journalctl --no-pager -n 60 -o short-monotonic -u 'heapwarden*'");
        panic!(
            "{message}\n--- journal ---\n{}",
            String::from_utf8_lossy(&journal.stdout)
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Killing the container's init ends its PID namespace; nspawn then exits, and
        // the overlay's tmpfs goes with its mount namespace.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.init),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.nspawn.wait_exit(Duration::from_secs(20));
    }
}

/// The container's init: the child of nspawn that has become systemd (nspawn forks
/// helpers of its own name first).
fn child_of(parent: i32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (comm, rest) = stat.rsplit_once(')')?;
        let ppid: i32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent && comm.ends_with("(systemd")).then_some(pid)
    })
}
