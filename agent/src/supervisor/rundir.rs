//! The agent's private run directory and the per-worker directories in it.
//!
//! The run directory is `$RUNTIME_DIRECTORY` when systemd set it, else `<state-dir>/run`;
//! it is 0700 and must be a directory owned by the agent's user (a symlink or another
//! user's directory is refused). It holds `agent.lock` (flocked for the agent's lifetime,
//! naming this incarnation) and one 0700 directory per worker incarnation, `w<id>/`, with
//! what belongs to that worker alone: its sd_notify socket (`notify`) and the record of
//! its process group (`group`), the socket its forked children report on (`probe`), which the next agent reads if this one is SIGKILLed. A
//! `WorkerDir` is created at spawn and removed when dropped, i.e. when its worker is
//! reaped; a new per-worker file is one more method here.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::state::WorkerId;

const LOCK_FILE: &str = "agent.lock";
/// sun_path holds 108 bytes; `w<20 digits>/notify` and the NUL need 29 of them.
const MAX_RUN_DIR_LEN: usize = 108 - 29;

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("cannot prepare the run directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the run directory {path} is not a directory owned by this user (uid {uid})")]
    NotOurs { path: PathBuf, uid: u32 },
    #[error(
        "the run directory {path} is {len} bytes long, too long for the workers' Unix sockets \
         (at most {MAX_RUN_DIR_LEN}): use a shorter state-dir or set RUNTIME_DIRECTORY"
    )]
    TooLong { path: PathBuf, len: usize },
    #[error("another agent (pid {pid}) is running with the run directory {path}")]
    InUse { path: PathBuf, pid: String },
}

/// Who held the run directory: this incarnation, or the one before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub boot_id: String,
    pub pid: u32,
    pub start_ticks: u64,
}

impl AgentRecord {
    /// Unique per agent incarnation across boots; every worker carries it in its
    /// environment (`HEAPWARDEN_AGENT_INSTANCE`).
    pub fn instance(&self) -> String {
        format!("{}:{}:{}", self.boot_id, self.pid, self.start_ticks)
    }

    fn parse(text: &str) -> Option<AgentRecord> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
                .map(str::trim)
        };
        Some(AgentRecord {
            boot_id: field("boot")?.to_string(),
            pid: field("pid")?.parse().ok()?,
            start_ticks: field("start")?.parse().ok()?,
        })
    }

    fn render(&self) -> String {
        format!(
            "boot={}\npid={}\nstart={}\n",
            self.boot_id, self.pid, self.start_ticks
        )
    }
}

/// A worker's process group as recorded at spawn: its leader (the worker) and the
/// leader's start time, so a reused pid is never taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRecord {
    pub pgid: u32,
    pub start_ticks: u64,
}

/// What a previous incarnation left: its record and its workers' groups.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub previous: Option<AgentRecord>,
    pub groups: Vec<GroupRecord>,
}

#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    /// Held until the agent exits; a SIGKILLed agent's lock is released by the kernel.
    _lock: Flock<File>,
}

impl RunDir {
    /// Opens (creating it 0700) and locks the run directory, returning what a previous
    /// agent left in it. `runtime_dir` is `$RUNTIME_DIRECTORY`.
    pub fn open(
        state_dir: &Path,
        runtime_dir: Option<&str>,
    ) -> Result<(RunDir, Leftovers), RunDirError> {
        let path = match runtime_dir.and_then(|d| d.split(':').find(|p| !p.is_empty())) {
            Some(dir) => PathBuf::from(dir),
            None => state_dir.join("run"),
        };
        let io_err = |source| RunDirError::Io {
            path: path.clone(),
            source,
        };
        let len = path.as_os_str().len();
        if len > MAX_RUN_DIR_LEN {
            return Err(RunDirError::TooLong { path, len });
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(io_err)?;
        let meta = fs::symlink_metadata(&path).map_err(io_err)?;
        let uid = nix::unistd::geteuid().as_raw();
        if !meta.is_dir() || meta.uid() != uid {
            return Err(RunDirError::NotOurs { path, uid });
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).map_err(io_err)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path.join(LOCK_FILE))
            .map_err(io_err)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let pid = AgentRecord::parse(&text).map_or("unknown".into(), |r| r.pid.to_string());
                return Err(RunDirError::InUse { path, pid });
            }
        };
        let mut text = String::new();
        lock.read_to_string(&mut text).map_err(io_err)?;
        let leftovers = Leftovers {
            previous: AgentRecord::parse(&text),
            groups: stale_groups(&path),
        };
        Ok((RunDir { path, _lock: lock }, leftovers))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records this incarnation and removes what the previous one left (call after its
    /// leftover processes were dealt with).
    pub fn claim(&mut self, me: &AgentRecord) -> io::Result<()> {
        for entry in fs::read_dir(&self.path)?.flatten() {
            if is_worker_dir(&entry.file_name().to_string_lossy()) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let file: &mut File = &mut self._lock;
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(me.render().as_bytes())
    }

    /// Creates `w<id>/` (0700) for a worker about to start.
    pub fn create_worker(&self, id: WorkerId) -> io::Result<WorkerDir> {
        let path = self.path.join(format!("w{id}"));
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        DirBuilder::new().mode(0o700).create(&path)?;
        Ok(WorkerDir { path })
    }
}

/// One worker incarnation's private directory; removed on drop.
#[derive(Debug)]
pub struct WorkerDir {
    path: PathBuf,
}

impl WorkerDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the worker's `NOTIFY_SOCKET` is bound.
    pub fn notify_socket(&self) -> PathBuf {
        self.path.join("notify")
    }

    /// For a worker under its own user (`pool.user`): the run directory and this one
    /// become traversable (0711, still not listable) and the notify socket writable by
    /// it (0666: connecting needs write permission). Nothing else in them is readable.
    pub fn open_to_worker_user(&self) -> io::Result<()> {
        if let Some(run_dir) = self.path.parent() {
            fs::set_permissions(run_dir, fs::Permissions::from_mode(0o711))?;
        }
        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o711))?;
        fs::set_permissions(self.notify_socket(), fs::Permissions::from_mode(0o666))?;
        // The socket for its forked children, when one was bound (connecting needs write).
        match fs::set_permissions(self.child_socket(), fs::Permissions::from_mode(0o666)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Where the worker's forked children connect (`HEAPWARDEN_CHILD_SOCKET`).
    pub fn child_socket(&self) -> PathBuf {
        self.path.join("probe")
    }

    /// Records the worker's process group for the next agent, should this one be
    /// SIGKILLed.
    pub fn record_group(&self, group: GroupRecord) -> io::Result<()> {
        let text = format!("{} {}\n", group.pgid, group.start_ticks);
        fs::write(self.path.join("group"), text)
    }
}

impl Drop for WorkerDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

fn is_worker_dir(name: &str) -> bool {
    name.strip_prefix('w')
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

fn stale_groups(run_dir: &Path) -> Vec<GroupRecord> {
    let Ok(entries) = fs::read_dir(run_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| is_worker_dir(&e.file_name().to_string_lossy()))
        .filter_map(|e| {
            let text = fs::read_to_string(e.path().join("group")).ok()?;
            let mut fields = text.split_ascii_whitespace();
            Some(GroupRecord {
                pgid: fields.next()?.parse().ok()?,
                start_ticks: fields.next()?.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_the_lock_keeps_a_second_agent_out() {
        let state = tempfile::tempdir().unwrap();
        let (mut run, left) = RunDir::open(state.path(), None).unwrap();
        assert!(left.previous.is_none() && left.groups.is_empty());
        let me = AgentRecord {
            boot_id: "b".into(),
            pid: 42,
            start_ticks: 7,
        };
        run.claim(&me).unwrap();
        let worker = run.create_worker(3).unwrap();
        worker
            .record_group(GroupRecord {
                pgid: 99,
                start_ticks: 8,
            })
            .unwrap();
        let mode = fs::metadata(worker.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(matches!(
            RunDir::open(state.path(), None),
            Err(RunDirError::InUse { pid, .. }) if pid == "42"
        ));
        std::mem::forget(worker); // as a SIGKILLed agent would
        drop(run);
        let (_run, left) = RunDir::open(state.path(), None).unwrap();
        assert_eq!(left.previous, Some(me));
        assert_eq!(
            left.groups,
            vec![GroupRecord {
                pgid: 99,
                start_ticks: 8
            }]
        );
    }

    #[test]
    fn a_dropped_worker_dir_is_gone_and_foreign_or_long_dirs_are_refused() {
        let state = tempfile::tempdir().unwrap();
        let (run, _) = RunDir::open(state.path(), None).unwrap();
        let worker = run.create_worker(1).unwrap();
        let path = worker.path().to_path_buf();
        drop(worker);
        assert!(!path.exists());
        let long = state.path().join("x".repeat(100));
        assert!(matches!(
            RunDir::open(&long, None),
            Err(RunDirError::TooLong { .. })
        ));
        let link = state.path().join("link");
        std::os::unix::fs::symlink(run.path(), &link).unwrap();
        assert!(matches!(
            RunDir::open(state.path(), Some(link.to_str().unwrap())),
            Err(RunDirError::NotOurs { .. })
        ));
    }
}
