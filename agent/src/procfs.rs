//! The agent's one reader of `/proc`, under a root given as a parameter (tests use a fake
//! tree in a temp dir): a process's `stat` — parent, group, state, start time, CPU ticks
//! and resident pages, everything the sampler and the supervisor need, in ONE read into
//! a buffer the caller reuses — its `smaps_rollup`, its children, its environment, the
//! pid list, and the one parser of a `maps` line (a process's own, or a heap dump's copy).
//! The bottom of the agent: it uses nothing of it.
//!
//! Why by hand, and why this way: `std::fs::read_to_string` costs an `openat`, a `statx`
//! (for a size hint procfs cannot give), two `read`s and a `close`; `stat` and `statm`
//! were both read per process per round. Here a process costs `openat`, one `read` (a
//! procfs `stat` is generated whole on the first read, so a short read is the end) and
//! `close`, and RSS comes from `stat`'s own field instead of a second file. The `procfs`
//! crate was measured against these readers before it was dropped (same cost per read:
//! the syscalls dominate, parsing is 0.05–0.4 µs).
//!
//! A file read every round is kept open instead ([`KeptFile`], [`StatFile`]): procfs and
//! kernfs generate a file afresh on a read from offset 0, so a round costs one `pread`
//! per file where it cost `openat`, `read` and `close`. So are a process's threads'
//! `children` files ([`ChildLists`]): a walk of a 5-thread process cost ~60 µs in opens.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::unistd::{SysconfVar, sysconf};

/// Why a process figure could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process exited (or never existed) between listing and reading.
    #[error("process {pid} is gone")]
    Gone { pid: u32 },
    #[error("could not read {path}")]
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

/// The `stat` fields the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    pub pid: u32,
    /// `R`, `S`, `Z`, …
    pub state: char,
    pub ppid: u32,
    pub pgid: u32,
    /// Clock ticks after boot: with the pid, identifies a process for the boot's lifetime.
    pub start_ticks: u64,
    /// utime + stime.
    pub own_ticks: u64,
    /// cutime + cstime: children this process reaped. Summed with `own_ticks` over a
    /// live tree, every reaped descendant is counted exactly once.
    pub reaped_ticks: u64,
    /// Resident pages (the same count as `statm`'s second field).
    pub rss_pages: u64,
}

impl Stat {
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

    pub fn pages_to_bytes(&self, pages: u64) -> u64 {
        pages.saturating_mul(self.page_size)
    }

    /// `ROOT/PID/FILE`.
    pub fn pid_path(&self, pid: u32, file: &str) -> PathBuf {
        let mut path = self.root.join(pid.to_string());
        path.push(file);
        path
    }

    /// One process's `stat`, read into `buf` (cleared first; reuse it across calls).
    pub fn stat(&self, pid: u32, buf: &mut Vec<u8>) -> Result<Stat, ProcError> {
        let path = self.pid_path(pid, "stat");
        read_pid_file(&path, pid, buf)?;
        parse_stat(pid, buf).ok_or(ProcError::Parse {
            path,
            what: "stat fields",
        })
    }

    /// Opens `pid`'s `stat` to be read every round ([`ProcFs::read_stat_file`]).
    pub fn open_stat(&self, pid: u32) -> Result<StatFile, ProcError> {
        let path = self.pid_path(pid, "stat");
        match KeptFile::open(&path) {
            Ok(file) => Ok(StatFile { pid, file }),
            Err(e) => Err(pid_error(&path, pid, e)),
        }
    }

    /// One `pread` of a kept-open `stat` into `buf`. A process that was reaped since the
    /// open is `Gone` (its descriptor held the process, not its number, so a reused pid
    /// is never read in its place).
    pub fn read_stat_file(&self, stat: &StatFile, buf: &mut Vec<u8>) -> Result<Stat, ProcError> {
        let pid = stat.pid;
        match stat.file.read(buf) {
            // procfs never gives an empty `stat`; the fake trees of the tests empty it for
            // a process that exited, as procfs answers ESRCH.
            Ok(()) if buf.is_empty() => Err(ProcError::Gone { pid }),
            Ok(()) => parse_stat(pid, buf).ok_or_else(|| ProcError::Parse {
                path: self.pid_path(pid, "stat"),
                what: "stat fields",
            }),
            Err(e) => Err(pid_error(&self.pid_path(pid, "stat"), pid, e)),
        }
    }

    /// Resident set size in bytes, from `stat`.
    pub fn rss_bytes(&self, pid: u32, buf: &mut Vec<u8>) -> Result<u64, ProcError> {
        Ok(self.pages_to_bytes(self.stat(pid, buf)?.rss_pages))
    }

    pub fn smaps_rollup(&self, pid: u32, buf: &mut Vec<u8>) -> Result<SmapsRollup, ProcError> {
        let path = self.pid_path(pid, "smaps_rollup");
        read_pid_file(&path, pid, buf)?;
        let text = std::str::from_utf8(buf).unwrap_or_default();
        parse_smaps_rollup(text).ok_or(ProcError::Parse {
            path,
            what: "Pss line",
        })
    }

    /// Appends the children of `pid` to `out`, from every thread's `task/TID/children`
    /// (the kernel lists a child under the thread that forked it, or that adopted it as a
    /// subreaper). False when the kernel keeps no such lists (`CONFIG_PROC_CHILDREN`) or
    /// the process is gone.
    pub fn children(&self, pid: u32, buf: &mut Vec<u8>, out: &mut Vec<u32>) -> bool {
        let Ok(tasks) = std::fs::read_dir(self.pid_path(pid, "task")) else {
            return false;
        };
        let mut listed = false;
        for task in tasks.flatten() {
            if read_file(&task.path().join("children"), buf).is_ok() {
                listed = true;
                out.extend(words(buf).filter_map(parse_u64).map(|p| p as u32));
            }
        }
        listed
    }

    /// `pid`'s children lists, kept open for walk after walk ([`ChildLists::read`]); the
    /// files are opened by the first read.
    pub fn open_children(&self, pid: u32) -> ChildLists {
        ChildLists {
            task_dir: self.pid_path(pid, "task"),
            threads: Vec::new(),
        }
    }

    /// Whether this kernel exposes `children` files, judged on `pid` (the agent itself).
    pub fn kernel_lists_children(&self, pid: u32) -> bool {
        let Ok(mut tasks) = std::fs::read_dir(self.pid_path(pid, "task")) else {
            return false;
        };
        tasks
            .next()
            .and_then(Result::ok)
            .is_some_and(|t| t.path().join("children").exists())
    }

    /// Every process id under the root.
    pub fn all_pids(&self) -> Vec<u32> {
        all_pids(&self.root)
    }
}

/// A process's `stat` kept open between rounds ([`ProcFs::open_stat`]).
#[derive(Debug)]
pub struct StatFile {
    pid: u32,
    file: KeptFile,
}

impl StatFile {
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

/// Threads of one process whose `children` file stays open in its [`ChildLists`]; the
/// `children` of others are opened on each read, so a process with a large thread pool
/// costs the agent no more than this many descriptors.
pub const KEPT_THREADS: usize = 8;

/// A process's children lists kept open between walks (see [`ProcFs::children`]): the
/// `children` files of its first [`KEPT_THREADS`] threads. Its `task` directory is listed
/// on each read, to follow threads that come and go (a directory kept open would hold
/// the C library's 32 KiB listing buffer per worker).
#[derive(Debug)]
pub struct ChildLists {
    task_dir: PathBuf,
    threads: Vec<(u32, KeptFile)>,
}

impl ChildLists {
    /// Appends the process's children to `out`; false when no thread's list could be read
    /// (the process is gone).
    pub fn read(&mut self, buf: &mut Vec<u8>, out: &mut Vec<u32>) -> bool {
        let Ok(tasks) = std::fs::read_dir(&self.task_dir) else {
            return false;
        };
        let tids: Vec<u32> = tasks
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        self.threads.retain(|(tid, _)| tids.contains(tid));
        let mut listed = false;
        for tid in tids {
            let read = match self.threads.iter().find(|(t, _)| *t == tid) {
                Some((_, file)) => file.read(buf).is_ok(),
                None => {
                    let path = self.task_dir.join(format!("{tid}/children"));
                    let Ok(file) = KeptFile::open(&path) else {
                        continue;
                    };
                    let read = file.read(buf).is_ok();
                    if self.threads.len() < KEPT_THREADS {
                        self.threads.push((tid, file));
                    }
                    read
                }
            };
            if read {
                listed = true;
                out.extend(words(buf).filter_map(parse_u64).map(|p| p as u32));
            }
        }
        listed
    }
}

/// A small procfs, sysfs or cgroup file kept open and read again from its start.
#[derive(Debug)]
pub struct KeptFile {
    file: File,
}

impl KeptFile {
    pub fn open(path: &Path) -> std::io::Result<KeptFile> {
        Ok(KeptFile {
            file: File::open(path)?,
        })
    }

    /// The whole file as it is now, into `buf` (cleared first): `pread`s from offset 0
    /// until a short one.
    pub fn read(&self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        fill(buf, |chunk, offset| self.file.read_at(chunk, offset))
    }
}

/// Reads a small file into `buf` without `read_to_string`'s `statx`: `openat`, `read`s
/// until a short one (procfs generates these files whole on the first read) or the end,
/// `close`.
pub fn read_file(path: &Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut file = File::open(path)?;
    fill(buf, |chunk, _| file.read(chunk))
}

/// Fills `buf` (cleared first) by `read_at(chunk, offset)` calls until a short read (procfs
/// generates these files whole on the first read) or the end.
fn fill(
    buf: &mut Vec<u8>,
    mut read_at: impl FnMut(&mut [u8], u64) -> std::io::Result<usize>,
) -> std::io::Result<()> {
    buf.clear();
    // Enough for `stat` (~300 bytes) and `meminfo` (~1.5 KiB) in one read.
    if buf.capacity() < 4096 {
        buf.reserve(4096);
    }
    loop {
        let len = buf.len();
        buf.resize(buf.capacity(), 0);
        let n = match read_at(&mut buf[len..], len as u64) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {
                buf.truncate(len);
                continue;
            }
            Err(e) => {
                buf.truncate(len);
                return Err(e);
            }
        };
        let offered = buf.len() - len;
        buf.truncate(len + n);
        if n == 0 || n < offered {
            return Ok(());
        }
        buf.reserve(buf.len());
    }
}

/// Reads a per-process file; a missing file or ESRCH means the process went away.
fn read_pid_file(path: &Path, pid: u32, buf: &mut Vec<u8>) -> Result<(), ProcError> {
    read_file(path, buf).map_err(|e| pid_error(path, pid, e))
}

fn pid_error(path: &Path, pid: u32, e: std::io::Error) -> ProcError {
    if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) {
        ProcError::Gone { pid }
    } else {
        ProcError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

fn words(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
}

fn parse_u64(word: &[u8]) -> Option<u64> {
    std::str::from_utf8(word).ok()?.parse().ok()
}

/// A signed kernel counter, clamped at 0 so a corrupt value cannot wrap a sum.
fn parse_ticks(word: &[u8]) -> Option<u64> {
    let v: i64 = std::str::from_utf8(word).ok()?.parse().ok()?;
    Some(v.max(0) as u64)
}

/// One line of `/proc/PID/maps` (or of a dump's copy of it):
/// `start-end perms offset major:minor inode path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine<'a> {
    pub start: u64,
    pub end: u64,
    pub writable: bool,
    /// Offset into the file of `start`.
    pub offset: u64,
    /// `makedev(major, minor)`, comparable with `st_dev`.
    pub device: u64,
    /// 0 for an anonymous mapping.
    pub inode: u64,
    /// Empty for an anonymous mapping; `[heap]`, `[stack]`… for the kernel's; a file's
    /// path may end in " (deleted)".
    pub path: &'a str,
}

pub fn parse_maps_line(line: &str) -> Option<MapsLine<'_>> {
    // The first five fields are separated by one space; the path (which may itself
    // contain spaces) follows padding.
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim();
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    let (start, end) = (hex(start)?, hex(end)?);
    let device = libc::makedev(
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
    (end > start).then_some(MapsLine {
        start,
        end,
        writable: perms.as_bytes().get(1) == Some(&b'w'),
        offset: hex(offset)?,
        device,
        inode,
        path,
    })
}

/// `pid (comm) state ppid pgrp … utime stime cutime cstime … starttime vsize rss …`.
/// `comm` may hold spaces, parentheses and any byte, so fields are counted from the last
/// `)`.
pub fn parse_stat(pid: u32, text: &[u8]) -> Option<Stat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let mut fields = words(&text[close + 1..]);
    // 0-based after comm: 0 state, 1 ppid, 2 pgrp, 11 utime, 12 stime, 13 cutime,
    // 14 cstime, 19 starttime, 21 rss.
    let state = *fields.next()?.first()? as char;
    let ppid = parse_u64(fields.next()?)? as u32;
    let pgid = parse_u64(fields.next()?)? as u32;
    let mut fields = fields.skip(8);
    let utime = parse_ticks(fields.next()?)?;
    let stime = parse_ticks(fields.next()?)?;
    let cutime = parse_ticks(fields.next()?)?;
    let cstime = parse_ticks(fields.next()?)?;
    let mut fields = fields.skip(4);
    let start_ticks = parse_u64(fields.next()?)?;
    let rss_pages = parse_ticks(fields.nth(1)?)?;
    Some(Stat {
        pid,
        state,
        ppid,
        pgid,
        start_ticks,
        own_ticks: utime.saturating_add(stime),
        reaped_ticks: cutime.saturating_add(cstime),
        rss_pages,
    })
}

/// The value of a `Key:   123 kB` line of `meminfo`, `status`, `smaps` (what follows the
/// colon), in KiB.
pub fn parse_kib(rest: &str) -> Option<u64> {
    rest.trim().trim_end_matches("kB").trim().parse().ok()
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
        let kib = parse_kib(rest)?;
        *slot = slot.saturating_add(kib.saturating_mul(1024));
    }
    saw_pss.then_some(rollup)
}

// The supervisor's readers: one-off questions about a pid, `None` when it is gone.

/// A process's `stat`, `None` when it is gone or unreadable.
pub fn stat(proc_root: &Path, pid: u32) -> Option<Stat> {
    let mut buf = Vec::new();
    read_file(&proc_root.join(pid.to_string()).join("stat"), &mut buf).ok()?;
    parse_stat(pid, &buf)
}

/// True when `/proc/PID/environ` holds exactly `entry` (`KEY=value`); false when it does
/// not or cannot be read (another user's process, or gone).
pub fn environ_has(proc_root: &Path, pid: u32, entry: &[u8]) -> bool {
    let mut env = Vec::new();
    read_file(&proc_root.join(pid.to_string()).join("environ"), &mut env).is_ok()
        && env.split(|&b| b == 0).any(|e| e == entry)
}

/// Every process id under `proc_root`.
pub fn all_pids(proc_root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Children of process `pid` (see [`ProcFs::children`]); without the kernel's lists, a
/// scan of every process's parent.
pub fn children(proc_root: &Path, pid: u32) -> Vec<u32> {
    let proc = ProcFs::new(proc_root, 4096, 100);
    let (mut buf, mut found) = (Vec::new(), Vec::new());
    if proc.children(pid, &mut buf, &mut found) {
        return found;
    }
    all_pids(proc_root)
        .into_iter()
        .filter(|&p| stat(proc_root, p).is_some_and(|s| s.ppid == pid))
        .collect()
}

/// Whether `pid` is `root` or descends from it, following parents up to 64 levels.
pub fn descends_from(proc_root: &Path, pid: u32, root: u32) -> bool {
    let mut current = pid;
    for _ in 0..64 {
        if current == root {
            return true;
        }
        match stat(proc_root, current) {
            Some(s) if s.ppid > 1 => current = s.ppid,
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &[u8] = b"42 (a (weird) name) S 7 40 40 0 -1 4194560 100 0 0 0 3 4 5 6 20 0 1 0 987654 1000 381 18446744073709551615";

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let s = parse_stat(42, LINE).expect("parses");
        assert_eq!(
            (s.state, s.ppid, s.pgid, s.start_ticks),
            ('S', 7, 40, 987654)
        );
        assert_eq!((s.own_ticks, s.reaped_ticks, s.rss_pages), (7, 11, 381));
        assert_eq!(parse_stat(1, b"1 (init) S"), None);
        assert_eq!(parse_stat(1, b"no parenthesis"), None);
        // A comm of arbitrary bytes is skipped whole.
        let mut odd = b"9 (\xff\xfe) )".to_vec();
        odd.extend_from_slice(&LINE[19..]);
        assert_eq!(parse_stat(9, &odd).map(|s| s.ppid), Some(7));
    }

    #[test]
    fn negative_children_ticks_clamp_to_zero() {
        let line = b"5 (x) S 1 5 5 0 -1 0 0 0 0 0 10 10 -5 -5 20 0 1 0 100 1000 7";
        let s = parse_stat(5, line).expect("parses");
        assert_eq!((s.own_ticks, s.reaped_ticks), (20, 0));
    }

    #[test]
    fn a_buffer_grows_for_long_files_and_is_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("long");
        let text = "x".repeat(10_000);
        std::fs::write(&path, &text).expect("write");
        let mut buf = Vec::new();
        read_file(&path, &mut buf).expect("read");
        assert_eq!(buf.len(), 10_000);
        std::fs::write(&path, "short").expect("write");
        read_file(&path, &mut buf).expect("read");
        assert_eq!(buf, b"short");
    }

    #[test]
    fn a_kept_file_is_read_whole_from_its_start_each_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("long");
        std::fs::write(&path, "x".repeat(10_000)).expect("write");
        let kept = KeptFile::open(&path).expect("open");
        let mut buf = Vec::new();
        kept.read(&mut buf).expect("read");
        assert_eq!(buf.len(), 10_000);
        kept.read(&mut buf).expect("read");
        assert_eq!(buf.len(), 10_000, "from offset 0 again");
        std::fs::write(&path, "short").expect("write");
        kept.read(&mut buf).expect("read");
        assert_eq!(buf, b"short");
    }

    #[test]
    fn a_kept_stat_reads_its_process_until_it_is_reaped() {
        let proc = ProcFs::system();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let file = proc.open_stat(child.id()).expect("open");
        let mut buf = Vec::new();
        let stat = proc.read_stat_file(&file, &mut buf).expect("read");
        assert_eq!((stat.pid, stat.ppid), (child.id(), std::process::id()));
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert!(matches!(
            proc.read_stat_file(&file, &mut buf),
            Err(ProcError::Gone { .. })
        ));
    }

    #[test]
    fn maps_lines_parse_and_nonsense_is_skipped() {
        let line = "55d0c2a00000-55d0c2e45000 r-xp 00245000 fd:01 1843211    /usr/bin/heap warden (deleted)";
        assert_eq!(
            parse_maps_line(line),
            Some(MapsLine {
                start: 0x55d0_c2a0_0000,
                end: 0x55d0_c2e4_5000,
                writable: false,
                offset: 0x24_5000,
                device: libc::makedev(0xfd, 0x01),
                inode: 1_843_211,
                path: "/usr/bin/heap warden (deleted)",
            })
        );
        let data = "55d0c2e46000-55d0c2e80000 rw-p 00908000 fd:01 1843211 /usr/bin/heapwarden";
        assert!(parse_maps_line(data).expect("rw").writable);
        let anonymous = parse_maps_line("7f00-7f10 rw-p 00000000 00:00 0 ").expect("anon");
        assert_eq!((anonymous.inode, anonymous.path), (0, ""));
        for bad in [
            "",
            "zz-10 r-xp 0 fd:01 1",
            "10-5 r-xp 0 fd:01 1 /x",
            "10-20 r-xp 0 fd 1",
        ] {
            assert_eq!(parse_maps_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn kept_children_lists_follow_children_of_threads_that_come_and_go() {
        let proc = ProcFs::system();
        let me = std::process::id();
        let mut lists = proc.open_children(me);
        let (mut buf, mut found) = (Vec::new(), Vec::new());
        let listed = |lists: &mut ChildLists, buf: &mut Vec<u8>, found: &mut Vec<u32>| {
            found.clear();
            assert!(lists.read(buf, found));
            found.clone()
        };
        // Forked from a thread started after the lists were opened: listed under it.
        let mut child = std::thread::spawn(|| {
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .expect("sleep")
        })
        .join()
        .expect("thread");
        assert!(listed(&mut lists, &mut buf, &mut found).contains(&child.id()));
        assert!(listed(&mut lists, &mut buf, &mut found).contains(&child.id()));
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert!(!listed(&mut lists, &mut buf, &mut found).contains(&child.id()));
    }

    #[test]
    fn this_process_is_read_found_as_a_child_of_its_parent_and_in_its_own_tree() {
        let root = Path::new("/proc");
        let me = std::process::id();
        let proc = ProcFs::system();
        let mut buf = Vec::new();
        let own = proc.stat(me, &mut buf).expect("own stat");
        assert!(own.rss_pages > 0 && own.state != '\0');
        let parent = stat(root, me).expect("own stat").ppid;
        assert_eq!(parent, own.ppid);
        assert!(children(root, parent).contains(&me));
        assert!(descends_from(root, me, parent));
        assert!(descends_from(root, me, me));
        assert!(!descends_from(root, parent, me));
        assert!(matches!(
            proc.stat(u32::MAX - 1, &mut buf),
            Err(ProcError::Gone { .. })
        ));
    }
}
