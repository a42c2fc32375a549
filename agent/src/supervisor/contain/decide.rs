//! The containment decisions, as pure functions of what `/proc` says: which processes a
//! previous incarnation left behind, and what to do with a process this agent adopted as
//! a subreaper. Tested without processes.

use super::super::rundir::GroupRecord;
use crate::procfs::Stat as ProcStat;

/// One process seen in `/proc`, with whether its environment carries the previous
/// agent's `HEAPWARDEN_AGENT_INSTANCE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub stat: ProcStat,
    pub has_instance: bool,
}

/// Processes to kill before this agent starts: those marked with the previous
/// instance, and the members of a recorded worker group that is still that group — its
/// leader gone or the very process recorded (same start time), and the member started
/// after it. A pid cannot be reused while its group has members, so a group whose
/// members all started after the recorded leader, led by nobody else, is the worker's.
pub fn leftover_victims(
    seen: &[Seen],
    groups: &[GroupRecord],
    me_pid: u32,
    me_pgid: u32,
) -> Vec<u32> {
    let leader_matches = |g: &GroupRecord| match seen.iter().find(|s| s.stat.pid == g.pgid) {
        None => true,
        Some(leader) => leader.stat.start_ticks == g.start_ticks,
    };
    seen.iter()
        .filter(|s| s.stat.pid != me_pid && s.stat.pid > 1 && s.stat.pgid != me_pgid)
        .filter(|s| {
            s.has_instance
                || groups.iter().any(|g| {
                    g.pgid > 1
                        && s.stat.pgid == g.pgid
                        && s.stat.start_ticks >= g.start_ticks
                        && leader_matches(g)
                })
        })
        .map(|s| s.stat.pid)
        .collect()
}

/// What to do with a child of the agent that is not a live worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanAction {
    /// Not ours to handle (the agent's own helpers), or still part of a live worker.
    Leave,
    /// An adopted process that exited: wait for it so it is not left a zombie.
    Reap,
    /// An adopted process whose worker is gone: nothing of a worker outlives it.
    Kill,
}

/// `child` is a child of the agent and not a live worker. Children in the agent's own
/// process group are its helpers (profile conversion), which their owners wait for;
/// anything else was adopted from a worker's tree. `of_live_worker` says whether an
/// adopted process still belongs to a running worker (its group, or the worker id in
/// its environment).
pub fn orphan_action(
    child: &ProcStat,
    agent_pgid: u32,
    of_live_worker: impl FnOnce() -> bool,
) -> OrphanAction {
    if child.pgid == agent_pgid {
        return OrphanAction::Leave;
    }
    if child.state == 'Z' || child.state == 'X' {
        return OrphanAction::Reap;
    }
    if of_live_worker() {
        OrphanAction::Leave
    } else {
        OrphanAction::Kill
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, pgid: u32, start_ticks: u64) -> ProcStat {
        ProcStat {
            pid,
            state: 'S',
            ppid: 1,
            pgid,
            start_ticks,
            ..ProcStat::default()
        }
    }

    fn seen(stat: ProcStat, has_instance: bool) -> Seen {
        Seen { stat, has_instance }
    }

    #[test]
    fn marked_processes_and_members_of_recorded_groups_are_leftovers() {
        let groups = [GroupRecord {
            pgid: 100,
            start_ticks: 50,
        }];
        let all = [
            // the orphaned `sleep`s of worker 100 (its leader died with the agent)
            seen(proc(101, 100, 60), false),
            seen(proc(102, 100, 61), false),
            // a setsid'd descendant, found by its mark
            seen(proc(300, 300, 70), true),
            // unrelated processes, and this agent itself
            seen(proc(200, 200, 10), false),
            seen(proc(400, 400, 5), false),
        ];
        assert_eq!(
            leftover_victims(&all, &groups, 400, 400),
            vec![101, 102, 300]
        );
    }

    #[test]
    fn a_reused_group_id_is_left_alone() {
        let groups = [GroupRecord {
            pgid: 100,
            start_ticks: 50,
        }];
        // pid 100 now leads a new group: started after the record, different start time.
        let all = [
            seen(proc(100, 100, 90), false),
            seen(proc(105, 100, 95), false),
        ];
        assert!(leftover_victims(&all, &groups, 1, 1).is_empty());
        // The recorded leader itself, still alive, is a leftover.
        let all = [seen(proc(100, 100, 50), false)];
        assert_eq!(leftover_victims(&all, &groups, 1, 1), vec![100]);
        // A member older than the recorded leader cannot be of its group.
        let all = [seen(proc(99, 100, 40), false)];
        assert!(leftover_victims(&all, &groups, 1, 1).is_empty());
    }

    #[test]
    fn adopted_children_are_reaped_or_killed_and_helpers_left_alone() {
        let agent_group = 7;
        let helper = proc(20, agent_group, 1);
        assert_eq!(
            orphan_action(&helper, agent_group, || false),
            OrphanAction::Leave
        );
        let zombie = ProcStat {
            state: 'Z',
            ..proc(21, 21, 1)
        };
        assert_eq!(
            orphan_action(&zombie, agent_group, || true),
            OrphanAction::Reap
        );
        let stray = proc(22, 15, 1);
        assert_eq!(
            orphan_action(&stray, agent_group, || true),
            OrphanAction::Leave
        );
        assert_eq!(
            orphan_action(&stray, agent_group, || false),
            OrphanAction::Kill
        );
    }
}
