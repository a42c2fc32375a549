//! Reconfiguring a running pool (a reload): scale up, scale down with drains, scale back
//! up while slots still drain, and new settings for the next decision. Fake clock.

use super::test_support::{feed, settings, spawns};
use super::*;

struct Pools {
    pool: Pool,
    now: Instant,
    pid: u32,
}

impl Pools {
    /// A pool of `n` ready workers.
    fn ready(n: usize) -> Pools {
        let mut p = Pools {
            pool: Pool::new(settings(n)),
            now: Instant::now(),
            pid: 100,
        };
        p.feed(Event::Start);
        for slot in 0..n {
            let w = p.serving(slot);
            p.feed(Event::Ready { worker: w });
        }
        p
    }

    fn feed(&mut self, event: Event) -> Vec<Action> {
        feed(&mut self.pool, event, self.now, &mut self.pid)
    }

    fn serving(&self, slot: usize) -> WorkerId {
        self.pool.serving(slot).expect("a serving worker").id
    }
}

fn drained(actions: &[Action]) -> Vec<WorkerId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Drain { worker, .. } => Some(*worker),
            _ => None,
        })
        .collect()
}

#[test]
fn scaling_up_starts_a_worker_per_new_slot() {
    let mut p = Pools::ready(2);
    let actions = p.feed(Event::Reconfigure(settings(3)));
    assert_eq!(spawns(&actions).len(), 1);
    assert_eq!(p.pool.slot_count(), 3);
    assert_eq!(p.pool.slot_state(2), SlotState::Starting);
    assert!(drained(&actions).is_empty(), "nobody else is touched");
}

#[test]
fn scaling_down_drains_the_surplus_slots_which_go_once_empty_and_never_restart() {
    let mut p = Pools::ready(3);
    let (w1, w2) = (p.serving(1), p.serving(2));
    let actions = p.feed(Event::Reconfigure(settings(1)));
    let mut gone = drained(&actions);
    gone.sort_unstable();
    assert_eq!(gone, vec![w1, w2]);
    assert!(spawns(&actions).is_empty());
    assert_eq!(p.pool.slot_count(), 1);
    assert_eq!(p.pool.retiring(), 2);
    let exit = |worker| Event::Exited {
        worker,
        status: ExitStatus::Code(0),
    };
    let actions = p.feed(exit(w2));
    assert!(
        actions.is_empty(),
        "no restart of a retired slot: {actions:?}"
    );
    assert_eq!(p.pool.retiring(), 1);
    let actions = p.feed(exit(w1));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(p.pool.retiring(), 0);
    assert_eq!(p.pool.slot_state(0), SlotState::Ready);
}

#[test]
fn scaling_back_up_while_slots_drain_reuses_them() {
    let mut p = Pools::ready(3);
    let old = p.serving(2);
    p.feed(Event::Reconfigure(settings(2)));
    let actions = p.feed(Event::Reconfigure(settings(3)));
    assert_eq!(spawns(&actions).len(), 1, "slot 2 gets a new worker");
    assert_ne!(p.serving(2), old);
    let actions = p.feed(Event::Exited {
        worker: old,
        status: ExitStatus::Code(0),
    });
    assert!(
        spawns(&actions).is_empty(),
        "the drained one is not replaced again"
    );
    assert_eq!(p.pool.retiring(), 0);
    assert_eq!(p.pool.slot_count(), 3);
}

#[test]
fn a_replacement_in_flight_in_a_retired_slot_is_stopped() {
    let mut p = Pools::ready(2);
    let actions = p.feed(Event::Reload);
    let replacement = spawns(&actions)[0];
    assert_eq!(p.pool.worker(replacement).map(|w| w.slot), Some(0));
    let w1 = p.serving(1);
    let actions = p.feed(Event::Reconfigure(settings(1)));
    // Slot 1 drains; the queued reload of slot 1 is dropped; slot 0 keeps its reload.
    assert_eq!(drained(&actions), vec![w1]);
    assert!(p.pool.replace_queue.is_empty());
    assert!(p.pool.worker(replacement).is_some());
    let mut p = Pools::ready(2);
    p.feed(Event::Replace {
        slot: 1,
        worker: p.serving(1),
        reason: RestartReason::Manual,
    });
    let replacement = p
        .pool
        .workers
        .values()
        .find(|w| matches!(w.role, Role::Replacement(_)))
        .map(|w| w.id)
        .expect("a replacement");
    let actions = p.feed(Event::Reconfigure(settings(1)));
    assert!(actions.iter().any(|a| matches!(a,
        Action::Signal { worker, signal: Signal::Term, .. } if *worker == replacement)));
}

#[test]
fn new_restart_settings_apply_to_the_next_backoff() {
    let mut p = Pools::ready(1);
    let mut s = settings(1);
    s.restart.initial_delay = Duration::from_secs(2);
    p.feed(Event::Reconfigure(s));
    let worker = p.serving(0);
    let actions = p.feed(Event::Exited {
        worker,
        status: ExitStatus::Code(1),
    });
    let delay = actions.iter().find_map(|a| match a {
        Action::Schedule {
            at,
            timer: Timer::Respawn { .. },
        } => Some(at.duration_since(p.now)),
        _ => None,
    });
    assert_eq!(delay, Some(Duration::from_secs(2)));
}
