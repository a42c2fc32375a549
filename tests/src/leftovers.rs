//! Which processes a test started, found again after the test is over. Every process the
//! harness spawns gets `HW_TEST_SANDBOX_MARK=<owner>/<n>` in its environment, where
//! `<owner>` names the test process (`<pid>:<start time>`: a pid alone may be reused) and
//! `<n>` counts its spawns (the name is outside `HEAPWARDEN_*`, which probes delete from
//! the environment once they claim their channel); descendants inherit it (an agent passes its environment on to
//! its workers, `npm start` to `node child.js`). A marked process whose owner is gone
//! outlived its test. This works under cargo-nextest, which runs each test in its own
//! process, as under `cargo test`: the check only ever judges processes whose test has
//! finished, so it can run beside tests that are still going.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The environment variable that marks processes started by a test.
pub const MARK_ENV: &str = "HW_TEST_SANDBOX_MARK";

/// A marked process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    pub pid: i32,
    pub mark: String,
    pub cmdline: String,
}

impl Marked {
    /// The `<pid>:<start time>` of the test process that started it.
    pub fn owner(&self) -> &str {
        self.mark.split('/').next().unwrap_or_default()
    }
}

/// `<pid>:<start time>` of this process.
pub fn owner_mark() -> String {
    let pid = std::process::id() as i32;
    format!("{pid}:{}", start_time(pid).unwrap_or_default())
}

/// A fresh mark for one spawned process.
pub fn proc_mark() -> String {
    static SPAWNS: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}/{}",
        owner_mark(),
        SPAWNS.fetch_add(1, Ordering::Relaxed)
    )
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks since boot).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the test process named by an owner mark still runs.
pub fn owner_alive(owner: &str) -> bool {
    let Some((pid, start)) = owner.split_once(':') else {
        return false;
    };
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    start_time(pid).is_some_and(|t| t.to_string() == start) && crate::alive(pid)
}

/// Every live (not zombie) process of this user that carries a mark.
pub fn marked() -> Vec<Marked> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 || !crate::alive(pid) {
            continue;
        }
        // Readable only for our own processes: others' are none of ours.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let prefix = format!("{MARK_ENV}=");
        let mark = environ
            .split(|b| *b == 0)
            .find_map(|var| var.strip_prefix(prefix.as_bytes()))
            .map(|m| String::from_utf8_lossy(m).into_owned());
        if let Some(mark) = mark {
            found.push(Marked {
                pid,
                mark,
                cmdline: cmdline(&entry.path()),
            });
        }
    }
    found
}

fn cmdline(proc_dir: &Path) -> String {
    std::fs::read(proc_dir.join("cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Marked processes whose test is over.
pub fn orphaned() -> Vec<Marked> {
    marked()
        .into_iter()
        .filter(|m| !owner_alive(m.owner()))
        .collect()
}

/// SIGKILLs every process whose mark is `mark` or starts with `mark/` (an owner mark
/// takes everything that test started). Repeats while new ones turn up: a dying parent
/// may have forked a moment before.
pub fn kill_marked(mark: &str) {
    let ours = |m: &Marked| m.mark == mark || m.mark.starts_with(&format!("{mark}/"));
    for _ in 0..10 {
        let victims: Vec<Marked> = marked().into_iter().filter(ours).collect();
        if victims.is_empty() {
            return;
        }
        for v in &victims {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(v.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for v in &victims {
            crate::wait_gone(v.pid, Duration::from_secs(2));
        }
    }
}
