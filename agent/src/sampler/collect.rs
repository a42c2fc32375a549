//! The procfs half of one sampling round: every worker's tree, the agent itself, the
//! machine and the agent's cgroup; one `stat` read per process (into one buffer per
//! round, a `pread` of the file the tree cache keeps open) gives its RSS and CPU, and
//! the host's files are kept open too ([`HostReaders`]). Plain
//! blocking reads: a round that walks a tree or reads `smaps_rollup` runs them off the
//! async runtime (`spawn_blocking`), so a slow `smaps_rollup` never stalls the
//! supervisor; one that only re-reads open `stat`s runs in place (`round`).

use std::path::PathBuf;

use super::procfs::{ProcError, ProcFs, SmapsRollup, StatFile};
use super::system::{CgroupMemory, HostFiles, LoadAverage, SystemError, SystemMemory};
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
/// cached members are read; roots not in `pids` leave the cache. On smaps rounds a tree
/// whose RSS has not moved keeps its last smaps figures ([`TreeCache::kept_smaps`]).
pub fn collect_trees(
    roots: &Roots,
    pids: &[u32],
    with_smaps: bool,
    cache: &mut TreeCache,
) -> Vec<Result<TreeFigures, ProcError>> {
    cache.retain(pids);
    read_trees(roots, pids, with_smaps, cache)
}

/// [`collect_trees`] for some of the workers (a fast-lane round): the others' cached
/// trees are kept.
pub fn read_trees(
    roots: &Roots,
    pids: &[u32],
    with_smaps: bool,
    cache: &mut TreeCache,
) -> Vec<Result<TreeFigures, ProcError>> {
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
    let proc = &roots.proc;
    pids.iter()
        .zip(due)
        .map(|(&pid, due)| {
            // Members from a walk are taken out of the cache and handed back after.
            let walked = (due || cache.reuse(pid).is_none()).then(|| {
                let walked = cache.walk(proc, pid, source);
                cache.take_walked(pid, walked, proc)
            });
            let (mut figures, mut vanished) =
                read_stats(proc, members_of(walked.as_deref(), cache, pid), &mut buf);
            if with_smaps && let Ok(tree) = figures {
                figures = match cache.kept_smaps(pid, tree.rss, tree.processes) {
                    Some(kept) => Ok(TreeFigures {
                        smaps: Some(kept),
                        ..tree
                    }),
                    None => {
                        let members = members_of(walked.as_deref(), cache, pid);
                        let (smaps, gone) = read_smaps(proc, members, &mut buf);
                        vanished |= gone;
                        smaps.map(|smaps| {
                            cache.read_smaps(pid, tree.rss, tree.processes, smaps);
                            TreeFigures {
                                smaps: Some(smaps),
                                ..tree
                            }
                        })
                    }
                };
            }
            // A tree that lost a member is walked again next round instead.
            if vanished {
                cache.expire(pid);
            } else if let Some(members) = walked {
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
    let mut figures = read_stats(proc, &members, &mut buf).0?;
    if with_smaps {
        figures.smaps = Some(read_smaps(proc, &members, &mut buf).0?);
    }
    Ok(figures)
}

/// A tree's members: from this round's walk, else from the cache.
fn members_of<'a>(walked: Option<&'a [Member]>, cache: &'a TreeCache, root: u32) -> &'a [Member] {
    walked.or_else(|| cache.members(root)).unwrap_or_default()
}

/// The RSS and CPU of `members` (root first) and whether a descendant had vanished.
fn read_stats(
    proc: &ProcFs,
    members: &[Member],
    buf: &mut Vec<u8>,
) -> (Result<TreeFigures, ProcError>, bool) {
    let mut figures = TreeFigures::default();
    let mut ticks: u64 = 0;
    let mut vanished = false;
    let root = members.first().map_or(0, |m| m.pid);
    for member in members {
        let read = match &member.stat {
            Some(file) => proc.read_stat_file(file, buf),
            None => proc.stat(member.pid, buf),
        };
        let stat = match read {
            Ok(stat) => stat,
            Err(e) if member.pid != root && e.is_gone() => {
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
    }
    figures.cpu_seconds = proc.ticks_to_seconds(ticks);
    (Ok(figures), vanished)
}

/// The summed `smaps_rollup` of `members` and whether a descendant had vanished.
fn read_smaps(
    proc: &ProcFs,
    members: &[Member],
    buf: &mut Vec<u8>,
) -> (Result<TreeSmaps, ProcError>, bool) {
    let mut smaps = TreeSmaps::default();
    let mut vanished = false;
    let root = members.first().map_or(0, |m| m.pid);
    for member in members {
        let rollup: SmapsRollup = match proc.smaps_rollup(member.pid, buf) {
            Ok(rollup) => rollup,
            Err(e) if member.pid != root && e.is_gone() => {
                vanished = true;
                continue;
            }
            Err(e) => return (Err(e), vanished),
        };
        smaps.pss = smaps.pss.saturating_add(rollup.pss);
        smaps.uss = smaps.uss.saturating_add(rollup.uss);
        smaps.swap = smaps.swap.saturating_add(rollup.swap);
    }
    (Ok(smaps), vanished)
}

/// What [`collect_host`] keeps open between rounds: the agent's own `stat` and the
/// machine's and cgroup's files.
#[derive(Debug)]
pub struct HostReaders {
    agent_stat: Option<StatFile>,
    files: HostFiles,
    buf: Vec<u8>,
}

impl HostReaders {
    pub fn new(roots: &Roots) -> Self {
        HostReaders {
            agent_stat: None,
            files: HostFiles::new(roots.proc.root(), roots.cgroup_dir.as_deref()),
            buf: Vec::new(),
        }
    }
}

pub fn collect_host(roots: &Roots, readers: &mut HostReaders) -> HostFigures {
    let mut host = HostFigures::default();
    let proc = &roots.proc;
    if readers.agent_stat.is_none() {
        readers.agent_stat = proc.open_stat(roots.agent_pid).ok();
    }
    let stat = match &readers.agent_stat {
        Some(file) => proc.read_stat_file(file, &mut readers.buf),
        None => proc.stat(roots.agent_pid, &mut readers.buf),
    };
    host.agent = match stat {
        // Own CPU only: the agent reaps its workers, so its cutime is theirs.
        Ok(stat) => Some(AgentFigures {
            rss: proc.pages_to_bytes(stat.rss_pages),
            cpu_seconds: proc.ticks_to_seconds(stat.own_ticks),
        }),
        Err(_) => None,
    };
    host.memory = keep(readers.files.meminfo(), &mut host.errors);
    host.load = keep(readers.files.loadavg(), &mut host.errors);
    host.cgroup = readers
        .files
        .cgroup_memory()
        .and_then(|read| keep(read, &mut host.errors));
    host
}

fn keep<T>(result: Result<T, SystemError>, errors: &mut Vec<SystemError>) -> Option<T> {
    result.map_err(|e| errors.push(e)).ok()
}
