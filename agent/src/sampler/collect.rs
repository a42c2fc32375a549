//! The procfs half of one sampling round: every worker's tree, the agent itself, the
//! machine and the agent's cgroup; one `stat` read per process (into one buffer per
//! round, a `pread` of the file the tree cache keeps open) gives its RSS and CPU. Plain
//! blocking reads: a round that walks a tree or reads `smaps_rollup` runs them off the
//! async runtime (`spawn_blocking`), so a slow `smaps_rollup` never stalls the
//! supervisor; one that only re-reads open `stat`s runs in place (`round`).

use std::path::PathBuf;

use super::procfs::{ProcError, ProcFs, SmapsRollup, Stat};
use super::system::{
    CgroupMemory, LoadAverage, SystemError, SystemMemory, read_cgroup_memory, read_loadavg,
    read_meminfo,
};
use super::tree::{ChildSource, Member, ParentTable, TreeCache, process_tree};

/// Where the readers look; the real paths in production, temp dirs in tests.
#[derive(Debug, Clone)]
pub struct Roots {
    pub proc: ProcFs,
    /// The agent's cgroup v2 directory, found once at start (`system::own_cgroup_dir`).
    pub cgroup_dir: Option<PathBuf>,
    /// The agent's own pid in `proc` (its RSS/CPU are metrics too).
    pub agent_pid: u32,
    /// `/proc/PID/task/*/children` exists; otherwise one ppid scan per round.
    pub kernel_children: bool,
}

/// One worker tree's procfs figures.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TreeFigures {
    pub rss: u64,
    pub cpu_seconds: f64,
    pub processes: usize,
    /// Present on smaps rounds.
    pub smaps: Option<TreeSmaps>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TreeSmaps {
    pub pss: u64,
    pub uss: u64,
    pub swap: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AgentFigures {
    pub rss: u64,
    pub cpu_seconds: f64,
}

/// Everything but the workers; each part independently optional.
#[derive(Debug, Default)]
pub struct HostFigures {
    pub agent: Option<AgentFigures>,
    pub memory: Option<SystemMemory>,
    pub load: Option<LoadAverage>,
    pub cgroup: Option<CgroupMemory>,
    /// Reads that failed for a reason other than absence, for one log line per round.
    pub errors: Vec<SystemError>,
}

/// Reads every tree rooted at `pids`, in order. The root's own figures decide the
/// result (a vanished root is `Gone`); a descendant that exits mid-read is skipped.
/// Trees are walked when `cache` says they are due (always on smaps rounds), else the
/// cached members are read; roots not in `pids` leave the cache.
pub fn collect_trees(
    roots: &Roots,
    pids: &[u32],
    with_smaps: bool,
    cache: &mut TreeCache,
) -> Vec<Result<TreeFigures, ProcError>> {
    cache.retain(pids);
    let due: Vec<bool> = pids.iter().map(|&p| with_smaps || cache.due(p)).collect();
    let table = if roots.kernel_children || !due.contains(&true) {
        None
    } else {
        // Without the kernel's lists, a scan failure only costs the descendants.
        Some(ParentTable::scan(&roots.proc))
    };
    let source = table
        .as_ref()
        .map_or(ChildSource::Kernel, ChildSource::Table);
    // One read buffer for the whole round.
    let mut buf = Vec::with_capacity(1024);
    pids.iter()
        .zip(due)
        .map(|(&pid, due)| {
            if !due && let Some(members) = cache.reuse(pid) {
                let (figures, vanished) = read_members(&roots.proc, members, with_smaps, &mut buf);
                if vanished {
                    cache.expire(pid);
                }
                return figures;
            }
            let walked = cache.walk(&roots.proc, pid, source);
            let members = cache.take_walked(pid, walked, &roots.proc);
            let (figures, vanished) = read_members(&roots.proc, &members, with_smaps, &mut buf);
            // A tree that lost a member is walked again next round instead.
            if vanished {
                cache.expire(pid);
            } else {
                cache.store(pid, members);
            }
            figures
        })
        .collect()
}

pub fn read_tree(
    proc: &ProcFs,
    root: u32,
    source: ChildSource<'_>,
    with_smaps: bool,
) -> Result<TreeFigures, ProcError> {
    let mut buf = Vec::new();
    let members: Vec<Member> = process_tree(proc, root, source)
        .into_iter()
        .map(|pid| Member { pid, stat: None })
        .collect();
    read_members(proc, &members, with_smaps, &mut buf).0
}

/// The figures of `members` (root first) and whether a descendant had vanished.
fn read_members(
    proc: &ProcFs,
    members: &[Member],
    with_smaps: bool,
    buf: &mut Vec<u8>,
) -> (Result<TreeFigures, ProcError>, bool) {
    let mut figures = TreeFigures::default();
    let mut smaps = TreeSmaps::default();
    let mut ticks: u64 = 0;
    let mut vanished = false;
    let root = members.first().map_or(0, |m| m.pid);
    for member in members {
        let pid = member.pid;
        let read = read_one(proc, member, with_smaps, buf);
        let (stat, rollup) = match read {
            Ok(r) => r,
            Err(e) if pid != root && e.is_gone() => {
                vanished = true;
                continue;
            }
            Err(e) => return (Err(e), vanished),
        };
        figures.rss = figures
            .rss
            .saturating_add(proc.pages_to_bytes(stat.rss_pages));
        figures.processes += 1;
        ticks = ticks.saturating_add(stat.tree_ticks());
        if let Some(r) = rollup {
            smaps.pss = smaps.pss.saturating_add(r.pss);
            smaps.uss = smaps.uss.saturating_add(r.uss);
            smaps.swap = smaps.swap.saturating_add(r.swap);
        }
    }
    figures.cpu_seconds = proc.ticks_to_seconds(ticks);
    figures.smaps = with_smaps.then_some(smaps);
    (Ok(figures), vanished)
}

type OneProcess = (Stat, Option<SmapsRollup>);

/// One `stat` read (RSS and CPU both), a `pread` where it is kept open, plus
/// `smaps_rollup` on smaps rounds.
fn read_one(
    proc: &ProcFs,
    member: &Member,
    with_smaps: bool,
    buf: &mut Vec<u8>,
) -> Result<OneProcess, ProcError> {
    let stat = match &member.stat {
        Some(file) => proc.read_stat_file(file, buf)?,
        None => proc.stat(member.pid, buf)?,
    };
    let rollup = if with_smaps {
        Some(proc.smaps_rollup(member.pid, buf)?)
    } else {
        None
    };
    Ok((stat, rollup))
}

pub fn collect_host(roots: &Roots) -> HostFigures {
    let mut host = HostFigures::default();
    let proc = &roots.proc;
    let mut buf = Vec::new();
    host.agent = match proc.stat(roots.agent_pid, &mut buf) {
        // Own CPU only: the agent reaps its workers, so its cutime is theirs.
        Ok(stat) => Some(AgentFigures {
            rss: proc.pages_to_bytes(stat.rss_pages),
            cpu_seconds: proc.ticks_to_seconds(stat.own_ticks),
        }),
        Err(_) => None,
    };
    host.memory = keep(read_meminfo(proc.root()), &mut host.errors);
    host.load = keep(read_loadavg(proc.root()), &mut host.errors);
    host.cgroup = roots
        .cgroup_dir
        .as_deref()
        .and_then(|dir| keep(read_cgroup_memory(dir), &mut host.errors));
    host
}

fn keep<T>(result: Result<T, SystemError>, errors: &mut Vec<SystemError>) -> Option<T> {
    result.map_err(|e| errors.push(e)).ok()
}
