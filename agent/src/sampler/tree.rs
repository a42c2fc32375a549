//! A worker's process tree: the worker and its descendants, so a worker that forks
//! helpers (a shell wrapper, a pre-fork server) is measured whole.
//!
//! Children come from `/proc/PID/task/TID/children` where the kernel has it
//! (`CONFIG_PROC_CHILDREN`); otherwise from one scan of every `/proc/*/stat` per round,
//! shared by all workers (`ParentTable`). The walk (one `children` file per thread of
//! every process) is most of a round's procfs work, so `TreeCache` keeps each worker's
//! members between walks, each with its `stat` open ([`KEPT_OPEN`] per tree), so reading a
//! member is one `pread`, and the worker's threads' children lists open between walks
//! ([`ChildLists`]), so a walk of a worker without descendants is one listing of its
//! `task` directory and a `pread` per thread.

use std::collections::HashMap;

use super::collect::TreeSmaps;
use super::procfs::{ChildLists, ProcFs, StatFile};

/// Stops a fork bomb in a worker from making one sampling round unbounded.
pub const MAX_TREE: usize = 4096;

/// A worker's tree is walked again every this many rounds (and on smaps rounds, and after
/// one of its members vanished); in between, the members found last are read, so a new
/// descendant is counted at most this many rounds late.
pub const TREE_REFRESH_ROUNDS: u32 = 5;

/// Members of a tree whose `stat` stays open between rounds: the worker and its first
/// descendants. A larger tree's other members are opened on each read, so the agent's
/// descriptors stay bounded by its workers, not by what they fork
/// (`admin::server::FD_PER_WORKER` counts these and the worker's [`ChildLists`]).
pub const KEPT_OPEN: usize = 8;

/// On an smaps round, a tree whose RSS moved by less than 1/this since its last
/// `smaps_rollup` read (and whose process count is the same) keeps those PSS/USS/swap
/// figures instead of reading them again: the kernel walks every page table entry of the
/// worker for them (~0.8 ms for 80 MiB, milliseconds for a large worker), and an idle or
/// steady worker's figures have not moved.
pub const PSS_RSS_TOLERANCE: u64 = 100;

/// ... but never more than this many smaps rounds in a row (sharing with other processes
/// moves PSS without moving RSS): with the default `pss-every` a steady worker's PSS is
/// read at least once a minute.
pub const PSS_MAX_KEPT: u32 = 5;

/// The members of each worker's tree, kept between rounds; entries go with their worker.
#[derive(Debug, Default)]
pub struct TreeCache {
    trees: HashMap<u32, CachedTree>,
    /// Each worker's own children lists, open from one walk to the next.
    lists: HashMap<u32, ChildLists>,
    /// Each tree's last `smaps_rollup` figures.
    pss: HashMap<u32, PssMemo>,
}

#[derive(Debug, Clone, Copy)]
struct PssMemo {
    rss: u64,
    processes: usize,
    smaps: TreeSmaps,
    kept: u32,
}

#[derive(Debug)]
struct CachedTree {
    members: Vec<Member>,
    /// Rounds read from the cache since the walk.
    age: u32,
}

/// A process of a worker's tree; the first [`KEPT_OPEN`] have their `stat` open.
#[derive(Debug)]
pub struct Member {
    pub pid: u32,
    pub stat: Option<StatFile>,
}

impl TreeCache {
    /// Forgets every root not in `roots`.
    pub fn retain(&mut self, roots: &[u32]) {
        self.trees.retain(|pid, _| roots.contains(pid));
        self.lists.retain(|pid, _| roots.contains(pid));
        self.pss.retain(|pid, _| roots.contains(pid));
    }

    /// Walks `root`'s tree; with the kernel's lists, the root's are kept open for the next
    /// walk.
    pub fn walk(&mut self, proc: &ProcFs, root: u32, source: ChildSource<'_>) -> Vec<u32> {
        let lists = match source {
            ChildSource::Kernel => Some(
                self.lists
                    .entry(root)
                    .or_insert_with(|| proc.open_children(root)),
            ),
            ChildSource::Table(_) => None,
        };
        walk(proc, root, source, lists)
    }

    /// Whether `root`'s tree must be walked this round.
    pub fn due(&self, root: u32) -> bool {
        self.trees
            .get(&root)
            .is_none_or(|t| t.age + 1 >= TREE_REFRESH_ROUNDS)
    }

    /// The members found by the last walk.
    pub fn members(&self, root: u32) -> Option<&[Member]> {
        self.trees.get(&root).map(|t| t.members.as_slice())
    }

    /// The tree's last smaps figures, when its RSS and process count say they still hold
    /// ([`PSS_RSS_TOLERANCE`], [`PSS_MAX_KEPT`]); `None`: read them again.
    pub fn kept_smaps(&mut self, root: u32, rss: u64, processes: usize) -> Option<TreeSmaps> {
        let memo = self.pss.get_mut(&root)?;
        let moved = memo.rss.abs_diff(rss);
        if memo.processes != processes
            || memo.kept >= PSS_MAX_KEPT
            || moved.saturating_mul(PSS_RSS_TOLERANCE) > memo.rss
        {
            return None;
        }
        memo.kept += 1;
        Some(memo.smaps)
    }

    /// Smaps figures just read, with the RSS and process count they went with.
    pub fn read_smaps(&mut self, root: u32, rss: u64, processes: usize, smaps: TreeSmaps) {
        let memo = PssMemo {
            rss,
            processes,
            smaps,
            kept: 0,
        };
        self.pss.insert(root, memo);
    }

    /// The members found by the last walk, counting one more round of use.
    pub fn reuse(&mut self, root: u32) -> Option<&[Member]> {
        let tree = self.trees.get_mut(&root)?;
        tree.age += 1;
        Some(&tree.members)
    }

    /// A fresh walk's `pids` (root first) as members: taken out of the cache (hand them
    /// back with [`TreeCache::store`]), each keeping the `stat` it had open in the last
    /// walk, the new ones opened. A process that exited since is left unopened, and its
    /// read says so.
    pub fn take_walked(&mut self, root: u32, pids: Vec<u32>, proc: &ProcFs) -> Vec<Member> {
        let mut open: HashMap<u32, StatFile> = self
            .trees
            .remove(&root)
            .map(|tree| {
                tree.members
                    .into_iter()
                    .filter_map(|m| Some((m.pid, m.stat?)))
                    .collect()
            })
            .unwrap_or_default();
        pids.into_iter()
            .enumerate()
            .map(|(i, pid)| Member {
                pid,
                stat: (i < KEPT_OPEN)
                    .then(|| open.remove(&pid).or_else(|| proc.open_stat(pid).ok()))
                    .flatten(),
            })
            .collect()
    }

    pub fn store(&mut self, root: u32, members: Vec<Member>) {
        self.trees.insert(root, CachedTree { members, age: 0 });
    }

    /// A member vanished: walk again next round (closing the tree's files; the root may be
    /// gone, and its pid reused by a new worker).
    pub fn expire(&mut self, root: u32) {
        self.trees.remove(&root);
        self.lists.remove(&root);
        self.pss.remove(&root);
    }

    pub fn len(&self) -> usize {
        self.trees.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trees.is_empty()
    }
}

/// ppid → children, from one scan of the `/proc` root.
#[derive(Debug, Default, Clone)]
pub struct ParentTable {
    children: HashMap<u32, Vec<u32>>,
}

impl ParentTable {
    /// Reads every process's `stat` through the one `/proc` reader; processes that vanish
    /// mid-scan are skipped, and an unreadable `/proc` is an empty table.
    pub fn scan(proc: &ProcFs) -> ParentTable {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut buf = Vec::with_capacity(1024);
        for pid in proc.all_pids() {
            if let Ok(stat) = proc.stat(pid, &mut buf) {
                children.entry(stat.ppid).or_default().push(pid);
            }
        }
        ParentTable { children }
    }

    /// Processes seen by the scan.
    pub fn len(&self) -> usize {
        self.children.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    pub fn children_of(&self, pid: u32) -> &[u32] {
        self.children.get(&pid).map_or(&[], Vec::as_slice)
    }
}

/// Where a process's children are looked up.
#[derive(Debug, Clone, Copy)]
pub enum ChildSource<'a> {
    /// `/proc/PID/task/*/children`.
    Kernel,
    Table(&'a ParentTable),
}

/// Whether this kernel exposes `children` files, judged on `pid` (the agent itself).
pub fn kernel_lists_children(proc: &ProcFs, pid: u32) -> bool {
    proc.kernel_lists_children(pid)
}

/// `root` and every descendant, root first. A vanished process simply has no children.
pub fn process_tree(proc: &ProcFs, root: u32, source: ChildSource<'_>) -> Vec<u32> {
    walk(proc, root, source, None)
}

/// [`process_tree`], reading the root's children from `root_lists` when given.
fn walk(
    proc: &ProcFs,
    root: u32,
    source: ChildSource<'_>,
    mut root_lists: Option<&mut ChildLists>,
) -> Vec<u32> {
    let mut tree = vec![root];
    let mut next = 0;
    let mut buf = Vec::new();
    while next < tree.len() && tree.len() < MAX_TREE {
        let pid = tree[next];
        next += 1;
        match source {
            ChildSource::Kernel => match root_lists.take() {
                Some(lists) => {
                    lists.read(&mut buf, &mut tree);
                }
                None => {
                    proc.children(pid, &mut buf, &mut tree);
                }
            },
            ChildSource::Table(table) => tree.extend_from_slice(table.children_of(pid)),
        }
    }
    tree.truncate(MAX_TREE);
    tree
}
