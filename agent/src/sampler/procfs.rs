//! Readers for one process's figures under a `/proc` root given as a parameter (tests
//! use a fake tree in a temp dir): resident pages from `statm` and CPU ticks from `stat`
//! on the fast path, PSS/USS/swap from `smaps_rollup` on the slow one.
//!
//! Parsed by hand: `statm` is seven integers and `stat` a fixed field list, so a parse is
//! a split, and the readers take their root as a parameter. The `procfs` crate was
//! measured against them (`examples/bench_sampler.rs`, before it was dropped): the same
//! cost per read (statm 10.4 vs 10.2 µs, stat 17.3 vs 17.0 µs, p50 9.6/15.7 vs
//! 9.7/16.1 µs) — the read syscalls dominate, parsing is 0.05–0.4 µs — while the agent
//! used it only for the page size and clock-tick rate, which `sysconf` gives.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use nix::unistd::{SysconfVar, sysconf};

/// Why a process figure could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process exited (or never existed) between listing and reading.
    #[error("process {pid} is gone")]
    Gone { pid: u32 },
    #[error("could not read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not parse {path}: {what}")]
    Parse { path: PathBuf, what: &'static str },
}

impl ProcError {
    pub fn is_gone(&self) -> bool {
        matches!(self, ProcError::Gone { .. })
    }
}

/// The fast-path figures of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatFigures {
    pub ppid: u32,
    /// utime + stime.
    pub own_ticks: u64,
    /// cutime + cstime: children this process reaped. Summed with `own_ticks` over a
    /// live tree, every reaped descendant is counted exactly once.
    pub reaped_ticks: u64,
}

impl StatFigures {
    pub fn tree_ticks(&self) -> u64 {
        self.own_ticks.saturating_add(self.reaped_ticks)
    }
}

/// What `smaps_rollup` says about one process, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SmapsRollup {
    pub rss: u64,
    pub pss: u64,
    /// Private_Clean + Private_Dirty: what would be freed if the process exited.
    pub uss: u64,
    pub swap: u64,
}

/// A `/proc` root plus the two system constants its figures are scaled by.
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
    page_size: u64,
    clock_ticks: u64,
}

impl ProcFs {
    /// The real `/proc` with this machine's page size and clock-tick rate (`sysconf`;
    /// Linux's usual 4096 and 100 if it cannot say).
    pub fn system() -> Self {
        let constant = |var, usual| {
            sysconf(var)
                .ok()
                .flatten()
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(usual)
        };
        let page_size = constant(SysconfVar::PAGE_SIZE, 4096);
        ProcFs::new("/proc", page_size, constant(SysconfVar::CLK_TCK, 100))
    }

    pub fn new(root: impl Into<PathBuf>, page_size: u64, clock_ticks: u64) -> Self {
        ProcFs {
            root: root.into(),
            page_size: page_size.max(1),
            clock_ticks: clock_ticks.max(1),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn ticks_to_seconds(&self, ticks: u64) -> f64 {
        ticks as f64 / self.clock_ticks as f64
    }

    /// Resident set size in bytes (`statm` field 2 × page size).
    pub fn rss_bytes(&self, pid: u32) -> Result<u64, ProcError> {
        let path = self.pid_path(pid, "statm");
        let text = read_pid_file(&path, pid)?;
        parse_statm_resident(&text)
            .map(|pages| pages.saturating_mul(self.page_size))
            .ok_or(ProcError::Parse {
                path,
                what: "resident pages",
            })
    }

    pub fn stat(&self, pid: u32) -> Result<StatFigures, ProcError> {
        let path = self.pid_path(pid, "stat");
        let text = read_pid_file(&path, pid)?;
        parse_stat(&text).ok_or(ProcError::Parse {
            path,
            what: "ppid and cpu times",
        })
    }

    pub fn smaps_rollup(&self, pid: u32) -> Result<SmapsRollup, ProcError> {
        let path = self.pid_path(pid, "smaps_rollup");
        let text = read_pid_file(&path, pid)?;
        parse_smaps_rollup(&text).ok_or(ProcError::Parse {
            path,
            what: "Pss line",
        })
    }

    pub(super) fn pid_path(&self, pid: u32, file: &str) -> PathBuf {
        let mut path = self.root.join(pid.to_string());
        path.push(file);
        path
    }
}

/// Reads a per-process file; a missing file or ESRCH means the process went away.
pub(super) fn read_pid_file(path: &Path, pid: u32) -> Result<String, ProcError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            Err(ProcError::Gone { pid })
        }
        Err(source) => Err(ProcError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Second field of `statm`: resident pages.
pub fn parse_statm_resident(text: &str) -> Option<u64> {
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// `pid (comm) state ppid … utime stime cutime cstime …`. `comm` may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<StatFigures> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let mut fields = after_comm.split_ascii_whitespace();
    // Fields after comm, 0-based: 0 state, 1 ppid, … 11 utime, 12 stime, 13 cutime, 14 cstime.
    let ppid = fields.nth(1)?.parse().ok()?;
    // cutime/cstime are signed in the kernel's format; clamping keeps a corrupt value
    // from wrapping the sum.
    let mut ticks = fields
        .skip(9)
        .map(|f| f.parse::<i64>().ok().map(|t| t.max(0) as u64));
    let (utime, stime) = (ticks.next()??, ticks.next()??);
    let (cutime, cstime) = (ticks.next()??, ticks.next()??);
    Some(StatFigures {
        ppid,
        own_ticks: utime.saturating_add(stime),
        reaped_ticks: cutime.saturating_add(cstime),
    })
}

/// Sums the `kB` lines of `smaps_rollup` we need; `None` when there is no `Pss:` line
/// (an unreadable or kernel-thread rollup).
pub fn parse_smaps_rollup(text: &str) -> Option<SmapsRollup> {
    let mut rollup = SmapsRollup::default();
    let mut saw_pss = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "Rss" => &mut rollup.rss,
            "Pss" => {
                saw_pss = true;
                &mut rollup.pss
            }
            "Private_Clean" | "Private_Dirty" => &mut rollup.uss,
            "Swap" => &mut rollup.swap,
            _ => continue,
        };
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        *slot = slot.saturating_add(kib.saturating_mul(1024));
    }
    saw_pss.then_some(rollup)
}
