//! Process-tree containment: no descendant of a worker outlives its worker or the agent.
//!
//! * While the agent runs it is a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process
//!   whose parent in a worker's tree exits is re-parented to the agent instead of init.
//!   `sweep` reaps those that exited and kills those whose worker is gone (a worker's own
//!   process group is killed when the worker exits; this catches what left the group).
//! * A SIGKILLed agent cannot clean up, and `PDEATHSIG` reaches only the workers
//!   themselves, so their orphans (`sh -c "sleep 47 & sleep 48"`, holding the service
//!   socket) would survive. Each worker's group is recorded in its run directory, and
//!   every worker carries `HEAPWARDEN_AGENT_INSTANCE`; the next agent, before it binds,
//!   kills what carries the previous instance's mark and what is still in a recorded
//!   group (`decide::leftover_victims`).
//!
//! Not covered: a process that both leaves the worker's group and clears its environment
//! while its worker lives on, once the agent is SIGKILLed. A cgroup would catch that too;
//! the systemd unit's own cgroup (`KillMode=mixed`) does when heapwarden runs as a service.

mod decide;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use slog::{Logger, info, warn};

use super::procstat;
use super::rundir::{AgentRecord, GroupRecord, RunDir, RunDirError, WorkerDir};
use super::state::WorkerId;
use crate::log::Causes;
use decide::{OrphanAction, Seen, leftover_victims, orphan_action};

const PROC: &str = "/proc";
/// How long the agent waits for killed leftovers to vanish before it binds.
const LEFTOVER_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ContainError {
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error("cannot read this agent's own /proc entry")]
    OwnStat,
    #[error("cannot record this agent in {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct Containment {
    run_dir: RunDir,
    instance: String,
    proc_root: PathBuf,
    agent_pid: u32,
    agent_pgid: u32,
}

impl Containment {
    /// Before anything binds: locks the run directory, becomes a subreaper, kills what a
    /// previous incarnation left and records this one.
    pub fn establish(state_dir: &Path, log: &Logger) -> Result<Containment, ContainError> {
        let runtime_dir = std::env::var("RUNTIME_DIRECTORY").ok();
        let (mut run_dir, leftovers) = RunDir::open(state_dir, runtime_dir.as_deref())?;
        let proc_root = PathBuf::from(PROC);
        let agent_pid = std::process::id();
        let own = procstat::stat(&proc_root, agent_pid).ok_or(ContainError::OwnStat)?;
        let me = AgentRecord {
            boot_id: boot_id(),
            pid: agent_pid,
            start_ticks: own.start_ticks,
        };
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            warn!(log, "The agent cannot adopt orphaned worker processes."; "error" => %Causes(&e));
        }
        if let Some(previous) = leftovers.previous.filter(|p| p.boot_id == me.boot_id) {
            kill_leftovers(&proc_root, &previous, &leftovers.groups, own, log);
        }
        run_dir.claim(&me).map_err(|source| ContainError::Record {
            path: run_dir.path().to_path_buf(),
            source,
        })?;
        Ok(Containment {
            run_dir,
            instance: me.instance(),
            proc_root,
            agent_pid,
            agent_pgid: own.pgid,
        })
    }

    /// This incarnation's mark, `HEAPWARDEN_AGENT_INSTANCE` in every worker.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn create_worker_dir(&self, id: WorkerId) -> std::io::Result<WorkerDir> {
        self.run_dir.create_worker(id)
    }

    /// Records a just-started worker's process group (it leads its own) in its directory.
    pub fn record_group(&self, dir: &WorkerDir, pid: u32) {
        if let Some(stat) = procstat::stat(&self.proc_root, pid) {
            let _ = dir.record_group(GroupRecord {
                pgid: pid,
                start_ticks: stat.start_ticks,
            });
        }
    }

    /// Reaps adopted processes that exited and kills adopted processes whose worker is
    /// gone. `live` maps each live worker's pid to its id.
    pub fn sweep(&self, live: &HashMap<u32, WorkerId>, log: &Logger) {
        for pid in procstat::children(&self.proc_root, self.agent_pid) {
            if live.contains_key(&pid) {
                continue;
            }
            let Some(stat) = procstat::stat(&self.proc_root, pid) else {
                continue;
            };
            let of_live_worker = || {
                live.contains_key(&stat.pgid)
                    || live.values().any(|id| {
                        let mark = format!("HEAPWARDEN_WORKER_ID={id}");
                        procstat::environ_has(&self.proc_root, pid, mark.as_bytes())
                    })
            };
            match orphan_action(&stat, self.agent_pgid, of_live_worker) {
                OrphanAction::Leave => {}
                OrphanAction::Reap => {
                    let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
                }
                OrphanAction::Kill => {
                    info!(log, "A process left behind by an exited worker was killed.";
                        "pid" => pid, "pgid" => stat.pgid);
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
        }
    }
}

/// Kills the previous incarnation's leftovers and waits (briefly) until they are gone,
/// so the service socket they held is free.
fn kill_leftovers(
    proc_root: &Path,
    previous: &AgentRecord,
    groups: &[GroupRecord],
    me: procstat::Stat,
    log: &Logger,
) {
    let mark = format!("HEAPWARDEN_AGENT_INSTANCE={}", previous.instance());
    let deadline = Instant::now() + LEFTOVER_GRACE;
    let mut killed = HashSet::new();
    loop {
        let seen: Vec<Seen> = procstat::all_pids(proc_root)
            .into_iter()
            .filter_map(|pid| {
                let stat = procstat::stat(proc_root, pid)?;
                // Zombies hold nothing and cannot be killed again.
                (stat.state != 'Z').then(|| Seen {
                    stat,
                    has_instance: procstat::environ_has(proc_root, pid, mark.as_bytes()),
                })
            })
            .collect();
        let victims = leftover_victims(&seen, groups, me.pid, me.pgid);
        if victims.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            warn!(log, "Processes left by a previous agent are still alive.";
                "pids" => format!("{victims:?}"));
            break;
        }
        for pid in victims {
            if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                killed.insert(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !killed.is_empty() {
        warn!(log, "Processes left by a previous agent were killed.";
            "processes" => killed.len(), "previous_pid" => previous.pid);
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
