//! Machine-wide figures (`/proc/meminfo`, `/proc/loadavg`) and the agent's own cgroup v2
//! memory accounting, each under roots given as parameters. Absent files are `None`, not
//! errors: a cgroup v1 host or a kernel without PSI is a normal place to run.
//!
//! The sampler reads these files every round through one [`HostFiles`], which keeps each
//! open ([`KeptFile`]: a round costs one `pread` per file instead of `openat`, `read` and
//! `close`) and does not look for an absent one again; the one-off readers
//! ([`read_meminfo`], …) are the same code on a fresh `HostFiles`.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::procfs::{KeptFile, parse_kib};

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("could not read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not parse {path}: {what}")]
    Parse { path: PathBuf, what: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemMemory {
    pub total: u64,
    pub available: u64,
}

impl SystemMemory {
    pub fn used(&self) -> u64 {
        self.total.saturating_sub(self.available)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

/// The agent's cgroup v2 memory figures; each `None` where the file is absent.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CgroupMemory {
    pub current: Option<u64>,
    /// `None` for "max" (no limit) as well as for an absent file.
    pub max: Option<u64>,
    /// PSI "some" averages, percent.
    pub pressure_avg10: Option<f64>,
    pub pressure_avg60: Option<f64>,
}

/// One file of [`HostFiles`]: opened on its first read and kept open.
#[derive(Debug)]
struct HostFile {
    path: PathBuf,
    state: FileState,
}

#[derive(Debug)]
enum FileState {
    Unopened,
    Open(KeptFile),
    /// It did not exist: not looked for again (a cgroup controller enabled later is seen
    /// by the next agent).
    Absent,
}

impl HostFile {
    fn new(path: PathBuf) -> Self {
        HostFile {
            path,
            state: FileState::Unopened,
        }
    }

    /// The file's text now, in `buf`; `None` when it does not exist. A failed open is
    /// tried again on the next read.
    fn read<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<Option<&'b str>, SystemError> {
        if let FileState::Unopened = self.state {
            self.state = match KeptFile::open(&self.path) {
                Ok(file) => FileState::Open(file),
                Err(e) if e.kind() == ErrorKind::NotFound => FileState::Absent,
                Err(source) => return Err(self.io_error(source)),
            };
        }
        let FileState::Open(file) = &self.state else {
            return Ok(None);
        };
        file.read(buf).map_err(|e| self.io_error(e))?;
        std::str::from_utf8(buf)
            .map(Some)
            .map_err(|_| SystemError::Parse {
                path: self.path.clone(),
                what: "UTF-8 text",
            })
    }

    /// The text of a file that must exist.
    fn read_required<'b>(&mut self, buf: &'b mut Vec<u8>) -> Result<&'b str, SystemError> {
        let text = self.read(buf)?;
        text.ok_or_else(|| self.io_error(ErrorKind::NotFound.into()))
    }

    fn io_error(&self, source: std::io::Error) -> SystemError {
        SystemError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn parse_error(&self, what: &'static str) -> SystemError {
        SystemError::Parse {
            path: self.path.clone(),
            what,
        }
    }
}

/// The machine's and the agent's cgroup's files, kept open between sampling rounds.
#[derive(Debug)]
pub struct HostFiles {
    meminfo: HostFile,
    loadavg: HostFile,
    /// `memory.current`, `memory.max`, `memory.pressure` of the agent's cgroup v2.
    cgroup: Option<[HostFile; 3]>,
    buf: Vec<u8>,
}

impl HostFiles {
    pub fn new(proc_root: &Path, cgroup_dir: Option<&Path>) -> Self {
        HostFiles {
            meminfo: HostFile::new(proc_root.join("meminfo")),
            loadavg: HostFile::new(proc_root.join("loadavg")),
            cgroup: cgroup_dir.map(|dir| {
                ["memory.current", "memory.max", "memory.pressure"]
                    .map(|file| HostFile::new(dir.join(file)))
            }),
            buf: Vec::new(),
        }
    }

    pub fn meminfo(&mut self) -> Result<SystemMemory, SystemError> {
        let file = &mut self.meminfo;
        let text = file.read_required(&mut self.buf)?;
        parse_meminfo(text).ok_or_else(|| file.parse_error("MemTotal and MemAvailable"))
    }

    pub fn loadavg(&mut self) -> Result<LoadAverage, SystemError> {
        let file = &mut self.loadavg;
        let text = file.read_required(&mut self.buf)?;
        parse_loadavg(text).ok_or_else(|| file.parse_error("three load averages"))
    }

    /// `None` without a cgroup directory.
    pub fn cgroup_memory(&mut self) -> Option<Result<CgroupMemory, SystemError>> {
        let [current, max, pressure] = self.cgroup.as_mut()?;
        Some(read_cgroup_files(current, max, pressure, &mut self.buf))
    }
}

fn read_cgroup_files(
    current: &mut HostFile,
    max: &mut HostFile,
    pressure: &mut HostFile,
    buf: &mut Vec<u8>,
) -> Result<CgroupMemory, SystemError> {
    let mut number = |file: &mut HostFile| -> Result<Option<u64>, SystemError> {
        Ok(file.read(buf)?.and_then(|t| t.trim().parse().ok()))
    };
    let current = number(current)?;
    // "max" does not parse as a number, which is exactly "no limit".
    let max = number(max)?;
    let (pressure_avg10, pressure_avg60) = match pressure.read(buf)? {
        Some(text) => parse_pressure_some(text),
        None => (None, None),
    };
    Ok(CgroupMemory {
        current,
        max,
        pressure_avg10,
        pressure_avg60,
    })
}

/// `/proc/meminfo` once (the sampler keeps a [`HostFiles`]).
pub fn read_meminfo(proc_root: &Path) -> Result<SystemMemory, SystemError> {
    HostFiles::new(proc_root, None).meminfo()
}

pub fn parse_meminfo(text: &str) -> Option<SystemMemory> {
    let (mut total, mut available) = (None, None);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let target = match key {
            "MemTotal" => &mut total,
            "MemAvailable" => &mut available,
            _ => continue,
        };
        let kib = parse_kib(rest)?;
        *target = Some(kib.saturating_mul(1024));
    }
    Some(SystemMemory {
        total: total?,
        available: available?,
    })
}

/// `/proc/loadavg` once.
pub fn read_loadavg(proc_root: &Path) -> Result<LoadAverage, SystemError> {
    HostFiles::new(proc_root, None).loadavg()
}

pub fn parse_loadavg(text: &str) -> Option<LoadAverage> {
    let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<f64>().ok());
    Some(LoadAverage {
        one: fields.next()??,
        five: fields.next()??,
        fifteen: fields.next()??,
    })
}

/// The agent's cgroup v2 directory: the `0::` line of `<proc>/self/cgroup` under
/// `cgroup_root`. `None` on a v1-only host.
pub fn own_cgroup_dir(
    proc_root: &Path,
    cgroup_root: &Path,
) -> Result<Option<PathBuf>, SystemError> {
    let mut buf = Vec::new();
    let Some(text) = HostFile::new(proc_root.join("self/cgroup")).read(&mut buf)? else {
        return Ok(None);
    };
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|rel| cgroup_root.join(rel.trim().trim_start_matches('/'))))
}

/// A cgroup directory's memory figures once.
pub fn read_cgroup_memory(dir: &Path) -> Result<CgroupMemory, SystemError> {
    HostFiles::new(Path::new("/nonexistent"), Some(dir))
        .cgroup_memory()
        .unwrap_or_else(|| Ok(CgroupMemory::default()))
}

/// `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` → (avg10, avg60).
pub fn parse_pressure_some(text: &str) -> (Option<f64>, Option<f64>) {
    let Some(some) = text.lines().find_map(|l| l.strip_prefix("some ")) else {
        return (None, None);
    };
    let field = |name: &str| {
        some.split_ascii_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    (field("avg10"), field("avg60"))
}
