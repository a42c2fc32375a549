//! A worker's heap figure over its process tree. A pre-fork server's memory lives in its
//! forked children, which report their own heaps on channels of their own
//! (`supervisor::children`). A child's jemalloc counts what it inherited from the worker
//! at the fork as well (it cannot tell), so the tree's heap is the worker's own plus what
//! each child allocated since its first report: the inherited part is counted once, a
//! child joining adds nothing at first (no false step when a server starts or recycles
//! a child after the baseline), and a leak in any child moves the figure by what it holds.
//!
//! Also named per round: the child whose heap grew most since it first reported (the
//! leak profile is taken there) and the child with the largest heap (the baseline
//! profile is taken there, so a server that loads the app in its children diffs like
//! against like). A child that misses one sample keeps its last figure, so one slow
//! answer is not a drop in the worker's heap.

use std::collections::{HashMap, HashSet};

use heapwarden_protocol::HeapStats;

/// The tree's heap for one round.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TreeHeap {
    pub heap: Option<HeapStats>,
    /// Processes whose figures are in `heap`.
    pub processes: usize,
    pub children: ProfiledChildren,
}

/// The forked children a profile of the tree is taken in, as one round saw them
/// (`profiles::CaptureRequest::in_forked_child` picks one by the profile's trigger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProfiledChildren {
    /// The child whose heap grew most since it first reported, when one grew more than
    /// the worker itself.
    pub grower: Option<u32>,
    /// The child with the largest heap.
    pub largest: Option<u32>,
}

/// What the sampler remembers of each reporting process (by pid) between rounds.
#[derive(Debug, Default)]
pub struct ChildHeaps {
    first: HashMap<u32, HeapStats>,
    last: HashMap<u32, HeapStats>,
}

impl ChildHeaps {
    /// Sums the worker's reply and its children's (`None`: no answer this round).
    pub fn combine(
        &mut self,
        worker_pid: u32,
        worker: Option<HeapStats>,
        children: &[(u32, Option<HeapStats>)],
    ) -> TreeHeap {
        let mut members: Vec<(u32, HeapStats)> = Vec::with_capacity(children.len() + 1);
        if let Some(heap) = worker {
            members.push((worker_pid, heap));
        }
        for &(pid, reply) in children {
            let heap = match reply {
                Some(heap) => {
                    self.last.insert(pid, heap);
                    Some(heap)
                }
                None => self.last.get(&pid).copied(),
            };
            if let Some(heap) = heap {
                members.push((pid, heap));
            }
        }
        if members.is_empty() {
            return TreeHeap::default();
        }
        let mut total = HeapStats {
            resident: Some(0),
            mapped: Some(0),
            retained: Some(0),
            metadata: Some(0),
            ..HeapStats::default()
        };
        let add = |sum: &mut Option<u64>, part: Option<u64>| {
            *sum = sum.zip(part).map(|(a, b)| a.saturating_add(b));
        };
        let mut grower: Option<(u32, u64)> = None;
        for &(pid, heap) in &members {
            let first = *self.first.entry(pid).or_insert(heap);
            // The worker counts whole; a child, what it allocated since it first reported.
            let own = if pid == worker_pid {
                heap
            } else {
                since(heap, first)
            };
            total.allocated = total.allocated.saturating_add(own.allocated);
            total.active = total.active.saturating_add(own.active);
            add(&mut total.resident, own.resident);
            add(&mut total.mapped, own.mapped);
            add(&mut total.retained, own.retained);
            add(&mut total.metadata, own.metadata);
            let growth = heap.allocated.saturating_sub(first.allocated);
            if growth > 0 && grower.is_none_or(|(_, most)| growth > most) {
                grower = Some((pid, growth));
            }
        }
        let largest_child = members
            .iter()
            .filter(|(pid, _)| *pid != worker_pid)
            .max_by_key(|(_, heap)| heap.allocated)
            .map(|(pid, _)| *pid);
        TreeHeap {
            heap: Some(total),
            processes: members.len(),
            children: ProfiledChildren {
                grower: grower.map(|(pid, _)| pid).filter(|pid| *pid != worker_pid),
                largest: largest_child,
            },
        }
    }

    /// Forgets every process not in `live` (exited children, replaced workers).
    pub fn retain(&mut self, live: &HashSet<u32>) {
        self.first.retain(|pid, _| live.contains(pid));
        self.last.retain(|pid, _| live.contains(pid));
    }
}

/// `now − first`, field by field (never below zero).
fn since(now: HeapStats, first: HeapStats) -> HeapStats {
    let minus = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b.unwrap_or(0)));
    HeapStats {
        allocated: now.allocated.saturating_sub(first.allocated),
        active: now.active.saturating_sub(first.active),
        resident: minus(now.resident, first.resident),
        mapped: minus(now.mapped, first.mapped),
        retained: minus(now.retained, first.retained),
        metadata: minus(now.metadata, first.metadata),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap(allocated: u64) -> HeapStats {
        HeapStats {
            allocated,
            active: allocated + 10,
            resident: Some(allocated * 2),
            ..HeapStats::default()
        }
    }

    #[test]
    fn children_count_what_they_allocated_since_they_first_reported() {
        let mut heaps = ChildHeaps::default();
        let first = heaps.combine(
            1,
            Some(heap(100)),
            &[(2, Some(heap(500))), (3, Some(heap(300)))],
        );
        let total = first.heap.unwrap();
        assert_eq!(total.allocated, 100, "a joining child adds nothing yet");
        assert_eq!(total.active, 110);
        assert_eq!(total.resident, Some(200));
        assert_eq!(total.mapped, None, "absent in a member: absent in the sum");
        assert_eq!(first.processes, 3);
        assert_eq!(first.children.grower, None, "nothing grew yet");
        assert_eq!(first.children.largest, Some(2));

        // Child 3 grows, the worker grows less, child 2 misses a sample.
        let later = heaps.combine(1, Some(heap(150)), &[(2, None), (3, Some(heap(900)))]);
        assert_eq!(later.heap.unwrap().allocated, 150 + 600);
        assert_eq!(later.heap.unwrap().resident, Some(300 + 1200));
        assert_eq!(later.children.grower, Some(3));
        assert_eq!(later.children.largest, Some(3));

        // A new child joining later is no step in the figure.
        let joined = heaps.combine(
            1,
            Some(heap(150)),
            &[
                (2, Some(heap(500))),
                (3, Some(heap(900))),
                (4, Some(heap(700))),
            ],
        );
        assert_eq!(joined.heap.unwrap().allocated, 150 + 600);
    }

    #[test]
    fn a_worker_growing_most_names_no_child_and_exited_children_are_forgotten() {
        let mut heaps = ChildHeaps::default();
        heaps.combine(1, Some(heap(100)), &[(2, Some(heap(100)))]);
        let grown = heaps.combine(1, Some(heap(400)), &[(2, Some(heap(150)))]);
        assert_eq!(grown.children.grower, None);
        heaps.retain(&HashSet::from([1]));
        // Pid 2 reused by a new child: its growth counts from its own first report.
        let reused = heaps.combine(1, Some(heap(400)), &[(2, Some(heap(1000)))]);
        assert_eq!(reused.children.grower, None);
        let none = heaps.combine(1, None, &[]);
        assert_eq!(none, TreeHeap::default());
    }
}
