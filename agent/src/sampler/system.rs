//! Machine-wide figures (`/proc/meminfo`, `/proc/loadavg`) and the agent's own cgroup v2
//! memory accounting, each under roots given as parameters. Absent files are `None`, not
//! errors: a cgroup v1 host or a kernel without PSI is a normal place to run.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

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

/// Read with `procfs::read_file` (no `statx`, one read for these small files).
fn read_text(path: &Path) -> std::io::Result<String> {
    let mut buf = Vec::new();
    crate::procfs::read_file(path, &mut buf)?;
    String::from_utf8(buf).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

fn read(path: &Path) -> Result<String, SystemError> {
    read_text(path).map_err(|source| SystemError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A file that may legitimately be missing.
fn read_optional(path: &Path) -> Result<Option<String>, SystemError> {
    match read_text(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SystemError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub fn read_meminfo(proc_root: &Path) -> Result<SystemMemory, SystemError> {
    let path = proc_root.join("meminfo");
    parse_meminfo(&read(&path)?).ok_or(SystemError::Parse {
        path,
        what: "MemTotal and MemAvailable",
    })
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
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        *target = Some(kib.saturating_mul(1024));
    }
    Some(SystemMemory {
        total: total?,
        available: available?,
    })
}

pub fn read_loadavg(proc_root: &Path) -> Result<LoadAverage, SystemError> {
    let path = proc_root.join("loadavg");
    parse_loadavg(&read(&path)?).ok_or(SystemError::Parse {
        path,
        what: "three load averages",
    })
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
    let Some(text) = read_optional(&proc_root.join("self/cgroup"))? else {
        return Ok(None);
    };
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|rel| cgroup_root.join(rel.trim().trim_start_matches('/'))))
}

pub fn read_cgroup_memory(dir: &Path) -> Result<CgroupMemory, SystemError> {
    let number = |file: &str| -> Result<Option<u64>, SystemError> {
        Ok(read_optional(&dir.join(file))?.and_then(|t| t.trim().parse().ok()))
    };
    let (pressure_avg10, pressure_avg60) = match read_optional(&dir.join("memory.pressure"))? {
        Some(text) => parse_pressure_some(&text),
        None => (None, None),
    };
    Ok(CgroupMemory {
        current: number("memory.current")?,
        // "max" does not parse as a number, which is exactly "no limit".
        max: number("memory.max")?,
        pressure_avg10,
        pressure_avg60,
    })
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
