//! Unit tests of the supervisor's state machine, driven by a fake clock.

use super::test_support::{settings, spawns};
use super::*;

/// A pool plus a fake clock, recording spawned worker ids.
struct Harness {
    pool: Pool,
    t0: Instant,
    now: Instant,
    next_pid: u32,
}

impl Harness {
    fn new(workers: usize) -> Harness {
        let t0 = Instant::now();
        Harness {
            pool: Pool::new(settings(workers)),
            t0,
            now: t0,
            next_pid: 1000,
        }
    }

    fn at(&mut self, secs: f64) {
        self.now = self.t0 + Duration::from_secs_f64(secs);
    }

    /// Feeds an event; every Spawn is answered with Spawned (a fresh pid).
    fn feed(&mut self, event: Event) -> Vec<Action> {
        let mut actions = self.pool.handle(event, self.now);
        let spawned: Vec<WorkerId> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { worker, .. } => Some(*worker),
                _ => None,
            })
            .collect();
        for worker in spawned {
            self.next_pid += 1;
            actions.extend(self.pool.handle(
                Event::Spawned {
                    worker,
                    pid: self.next_pid,
                },
                self.now,
            ));
        }
        actions
    }

    fn serving(&self, slot: usize) -> WorkerId {
        self.pool
            .serving(slot)
            .expect("slot has a serving worker")
            .id
    }
}

fn respawn_delay(actions: &[Action], now: Instant) -> Option<Duration> {
    actions.iter().find_map(|a| match a {
        Action::Schedule {
            at,
            timer: Timer::Respawn { .. },
        } => Some(at.duration_since(now)),
        _ => None,
    })
}

fn respawn_timer(actions: &[Action]) -> Option<Timer> {
    actions.iter().find_map(|a| match a {
        Action::Schedule {
            timer: t @ Timer::Respawn { .. },
            ..
        } => Some(*t),
        _ => None,
    })
}

#[test]
fn start_spawns_every_slot_with_ready_and_uptime_timers() {
    let mut h = Harness::new(3);
    let actions = h.feed(Event::Start);
    assert_eq!(spawns(&actions).len(), 3);
    let timers = actions
        .iter()
        .filter(|a| matches!(a, Action::Schedule { .. }))
        .count();
    assert_eq!(timers, 6);
    assert_eq!(h.pool.slot_state(0), SlotState::Starting);
}

#[test]
fn crashes_back_off_exponentially_and_reset_after_min_uptime() {
    let mut h = Harness::new(1);
    h.feed(Event::Start);
    let mut delays = Vec::new();
    for i in 0..4 {
        h.at(i as f64 * 20.0);
        let w = h.serving(0);
        let actions = h.feed(Event::Exited {
            worker: w,
            status: ExitStatus::Code(1),
        });
        assert!(actions.contains(&Action::CountRestart {
            slot: 0,
            reason: RestartReason::Exit
        }));
        delays.push(respawn_delay(&actions, h.now).expect("respawn scheduled"));
        assert_eq!(h.pool.slot_state(0), SlotState::Backoff);
        let timer = respawn_timer(&actions).unwrap();
        assert_eq!(spawns(&h.feed(Event::Timer(timer))).len(), 1);
    }
    let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, vec![100, 200, 400, 800]);

    // The worker survives min-uptime: the next crash starts over at the initial delay.
    let w = h.serving(0);
    h.at(90.0);
    h.feed(Event::Timer(Timer::MinUptime { worker: w }));
    h.at(200.0);
    let actions = h.feed(Event::Exited {
        worker: w,
        status: ExitStatus::Signal(11),
    });
    assert!(actions.contains(&Action::CountRestart {
        slot: 0,
        reason: RestartReason::Crash
    }));
    assert_eq!(
        respawn_delay(&actions, h.now),
        Some(Duration::from_millis(100))
    );
}

#[test]
fn backoff_is_capped_at_max_delay() {
    let mut h = Harness::new(1);
    let mut s = settings(1);
    s.restart.max_restarts = 100;
    h.pool = Pool::new(s);
    h.feed(Event::Start);
    let mut last = Duration::ZERO;
    for i in 0..12 {
        h.at(i as f64 * 0.5);
        let w = h.serving(0);
        let actions = h.feed(Event::Exited {
            worker: w,
            status: ExitStatus::Code(1),
        });
        last = respawn_delay(&actions, h.now).unwrap();
        h.feed(Event::Timer(respawn_timer(&actions).unwrap()));
    }
    assert_eq!(last, Duration::from_secs(15));
}

#[test]
fn crash_loop_fails_the_slot_then_retries_after_cool_down() {
    let mut h = Harness::new(1);
    h.feed(Event::Start);
    let mut last = Vec::new();
    for i in 0..5 {
        h.at(i as f64);
        let w = h.serving(0);
        last = h.feed(Event::Exited {
            worker: w,
            status: ExitStatus::Code(2),
        });
        if i < 4 {
            h.feed(Event::Timer(respawn_timer(&last).unwrap()));
        }
    }
    assert!(
        last.iter()
            .any(|a| matches!(a, Action::SlotFailed { slot: 0, .. }))
    );
    assert_eq!(h.pool.slot_state(0), SlotState::Failed);
    assert_eq!(respawn_delay(&last, h.now), Some(Duration::from_secs(300)));
    // A stale backoff timer from before does nothing.
    assert!(
        h.feed(Event::Timer(Timer::Respawn { slot: 0, epoch: 1 }))
            .is_empty()
    );
    let actions = h.feed(Event::Timer(respawn_timer(&last).unwrap()));
    assert_eq!(spawns(&actions).len(), 1);
    assert_eq!(h.pool.slot_state(0), SlotState::Starting);
}

#[test]
fn plain_worker_is_ready_after_min_uptime_probe_worker_waits_for_ready() {
    let mut h = Harness::new(2);
    h.feed(Event::Start);
    let (plain, probe) = (h.serving(0), h.serving(1));
    h.feed(Event::Hello { worker: probe });
    h.at(5.0);
    h.feed(Event::Timer(Timer::MinUptime { worker: plain }));
    h.feed(Event::Timer(Timer::MinUptime { worker: probe }));
    assert_eq!(h.pool.slot_state(0), SlotState::Ready);
    assert_eq!(h.pool.slot_state(1), SlotState::Starting);
    h.feed(Event::Ready { worker: probe });
    assert_eq!(h.pool.slot_state(1), SlotState::Ready);
}

#[test]
fn native_probe_worker_is_ready_after_min_uptime_and_still_drains_over_the_channel() {
    let mut h = Harness::new(1);
    h.pool = Pool::new(PoolSettings {
        ready_from_probe: false,
        ..settings(1)
    });
    h.feed(Event::Start);
    let w = h.serving(0);
    h.feed(Event::Hello { worker: w });
    h.at(5.0);
    h.feed(Event::Timer(Timer::MinUptime { worker: w }));
    assert_eq!(h.pool.slot_state(0), SlotState::Ready);
    let actions = h.feed(Event::Replace {
        slot: 0,
        worker: h.serving(0),
        reason: RestartReason::Manual,
    });
    let new = spawns(&actions)[0];
    h.feed(Event::Hello { worker: new });
    h.at(10.0);
    let actions = h.feed(Event::Timer(Timer::MinUptime { worker: new }));
    assert!(
        actions.iter().any(|a| matches!(
            a,
            Action::Drain {
                worker,
                via_channel: true,
                ..
            } if *worker == w
        )),
        "{actions:?}"
    );
}

#[test]
fn a_worker_given_a_probe_is_not_plain_ready_before_its_hello_grace() {
    let mut h = Harness::new(2);
    h.pool.settings.probe_hello_grace = Some(Duration::from_secs(10));
    h.feed(Event::Start);
    let (silent, slow) = (h.serving(0), h.serving(1));
    h.at(5.0);
    h.feed(Event::Timer(Timer::MinUptime { worker: silent }));
    h.feed(Event::Timer(Timer::MinUptime { worker: slow }));
    assert_eq!(h.pool.slot_state(0), SlotState::Starting);
    // The probe of slot 1 says hello late, then ready: it is a probe worker after all.
    h.feed(Event::Hello { worker: slow });
    h.at(10.0);
    h.feed(Event::Timer(Timer::MinUptime { worker: silent }));
    h.feed(Event::Timer(Timer::MinUptime { worker: slow }));
    assert_eq!(
        h.pool.slot_state(0),
        SlotState::Ready,
        "plain after the grace"
    );
    assert_eq!(
        h.pool.slot_state(1),
        SlotState::Starting,
        "waits for its ready"
    );
    h.feed(Event::Ready { worker: slow });
    assert_eq!(h.pool.slot_state(1), SlotState::Ready);
}

#[test]
fn never_ready_worker_is_killed_and_counted_as_ready_timeout() {
    let mut h = Harness::new(1);
    h.feed(Event::Start);
    let w = h.serving(0);
    h.feed(Event::Hello { worker: w });
    h.at(30.0);
    let actions = h.feed(Event::Timer(Timer::ReadyTimeout { worker: w }));
    assert!(matches!(
        actions[..],
        [
            Action::ReadyTimedOut { slot: 0, .. },
            Action::Signal {
                signal: Signal::Kill,
                ..
            }
        ]
    ));
    let actions = h.feed(Event::Exited {
        worker: w,
        status: ExitStatus::Signal(9),
    });
    assert!(actions.contains(&Action::CountRestart {
        slot: 0,
        reason: RestartReason::ReadyTimeout
    }));
}

fn ready_pool(workers: usize) -> Harness {
    let mut h = Harness::new(workers);
    h.feed(Event::Start);
    for slot in 0..workers {
        let w = h.serving(slot);
        h.feed(Event::Hello { worker: w });
        h.feed(Event::Ready { worker: w });
    }
    h
}

#[test]
fn reload_replaces_one_slot_at_a_time_make_before_break() {
    let mut h = ready_pool(2);
    let (old0, old1) = (h.serving(0), h.serving(1));
    let actions = h.feed(Event::Reload);
    let new0 = spawns(&actions);
    assert_eq!(new0.len(), 1, "one replacement at a time");
    assert_eq!(h.pool.slot_state(0), SlotState::Replacing);
    assert_eq!(
        h.serving(0),
        old0,
        "the old worker serves until the new one is ready"
    );
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Drain { .. } | Action::Signal { .. }))
    );

    h.at(1.0);
    let actions = h.feed(Event::Ready { worker: new0[0] });
    assert!(
        actions.iter().any(
            |a| matches!(a, Action::Drain { worker, via_channel: true, .. } if *worker == old0)
        )
    );
    assert!(actions.contains(&Action::CountRestart {
        slot: 0,
        reason: RestartReason::Reload
    }));
    let new1 = spawns(&actions);
    assert_eq!(new1.len(), 1, "slot 1 starts once slot 0 is ready");
    assert_eq!(h.serving(0), new0[0]);

    h.at(2.0);
    let actions = h.feed(Event::Ready { worker: new1[0] });
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Drain { worker, .. } if *worker == old1))
    );
    // Draining workers exiting is not a restart.
    let actions = h.feed(Event::Exited {
        worker: old0,
        status: ExitStatus::Code(0),
    });
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(h.pool.slot_state(0), SlotState::Ready);
}

#[test]
fn drain_escalates_to_term_then_kill() {
    let mut h = ready_pool(1);
    let old = h.serving(0);
    let new = spawns(&h.feed(Event::Replace {
        slot: 0,
        worker: h.serving(0),
        reason: RestartReason::Manual,
    }))[0];
    h.feed(Event::Ready { worker: new });
    h.at(30.0);
    let actions = h.feed(Event::Timer(Timer::DrainDeadline { worker: old }));
    assert!(matches!(
        actions[0],
        Action::Signal {
            signal: Signal::Term,
            ..
        }
    ));
    h.at(40.0);
    let actions = h.feed(Event::Timer(Timer::KillDeadline { worker: old }));
    assert!(matches!(
        actions[..],
        [Action::Signal {
            signal: Signal::Kill,
            ..
        }]
    ));
}

#[test]
fn replacement_that_never_gets_ready_leaves_the_old_worker_serving() {
    let mut h = ready_pool(1);
    let old = h.serving(0);
    let new = spawns(&h.feed(Event::Replace {
        slot: 0,
        worker: h.serving(0),
        reason: RestartReason::Leak,
    }))[0];
    h.feed(Event::Hello { worker: new });
    h.at(30.0);
    h.feed(Event::Timer(Timer::ReadyTimeout { worker: new }));
    let actions = h.feed(Event::Exited {
        worker: new,
        status: ExitStatus::Signal(9),
    });
    assert_eq!(h.serving(0), old);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::CountRestart { .. }))
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Drain { .. })));
    // After the backoff the replacement is attempted again.
    let retry = h.feed(Event::Timer(respawn_timer(&actions).unwrap()));
    assert_eq!(spawns(&retry).len(), 1);
    assert_eq!(h.pool.slot_state(0), SlotState::Replacing);
}

#[test]
fn serving_worker_dying_mid_replacement_hands_over_to_the_replacement() {
    let mut h = ready_pool(1);
    let old = h.serving(0);
    let new = spawns(&h.feed(Event::Replace {
        slot: 0,
        worker: h.serving(0),
        reason: RestartReason::Leak,
    }))[0];
    let actions = h.feed(Event::Exited {
        worker: old,
        status: ExitStatus::Signal(9),
    });
    assert!(actions.contains(&Action::CountRestart {
        slot: 0,
        reason: RestartReason::Crash
    }));
    assert!(spawns(&actions).is_empty());
    assert_eq!(h.serving(0), new);
    assert_eq!(h.pool.slot_state(0), SlotState::Starting);
}

#[test]
fn leak_restarts_obey_the_hourly_budget() {
    let mut h = ready_pool(1);
    for i in 0..2 {
        h.at(i as f64 * 60.0);
        let new = spawns(&h.feed(Event::Replace {
            slot: 0,
            worker: h.serving(0),
            reason: RestartReason::Leak,
        }));
        assert_eq!(new.len(), 1);
        h.feed(Event::Ready { worker: new[0] });
    }
    h.at(200.0);
    let actions = h.feed(Event::Replace {
        slot: 0,
        worker: h.serving(0),
        reason: RestartReason::Leak,
    });
    assert_eq!(actions, vec![Action::BudgetExhausted { slot: 0 }]);
    assert!(h.pool.budget_exhausted(0));
    // Repeated trips do not repeat the alert action.
    assert!(
        h.feed(Event::Replace {
            slot: 0,
            worker: h.serving(0),
            reason: RestartReason::Leak,
        })
        .is_empty()
    );
    // An hour after the first leak restart, the budget has room again.
    h.at(3600.0);
    let actions = h.feed(Event::Replace {
        slot: 0,
        worker: h.serving(0),
        reason: RestartReason::Leak,
    });
    assert_eq!(spawns(&actions).len(), 1);
    assert!(!h.pool.budget_exhausted(0));
}

#[test]
fn concurrent_replacements_are_limited() {
    let mut h = ready_pool(3);
    let a = h.feed(Event::Replace {
        slot: 0,
        worker: h.serving(0),
        reason: RestartReason::Leak,
    });
    let b = h.feed(Event::Replace {
        slot: 1,
        worker: h.serving(1),
        reason: RestartReason::Leak,
    });
    assert_eq!(spawns(&a).len(), 1);
    assert!(spawns(&b).is_empty(), "second replacement waits");
    let started = h.feed(Event::Ready {
        worker: spawns(&a)[0],
    });
    assert_eq!(
        spawns(&started).len(),
        1,
        "queued replacement starts when the first is done"
    );
}

#[test]
fn shutdown_terms_everyone_then_kills_and_exits_when_all_are_gone() {
    let mut h = ready_pool(2);
    let (a, b) = (h.serving(0), h.serving(1));
    let actions = h.feed(Event::Shutdown);
    let terms = actions
        .iter()
        .filter(|x| {
            matches!(
                x,
                Action::Signal {
                    signal: Signal::Term,
                    ..
                }
            )
        })
        .count();
    assert_eq!(terms, 2);
    assert_eq!(h.pool.slot_state(0), SlotState::Stopping);
    // No restarts while stopping.
    let actions = h.feed(Event::Exited {
        worker: a,
        status: ExitStatus::Code(0),
    });
    assert!(actions.is_empty());
    assert!(
        h.feed(Event::Replace {
            slot: 1,
            worker: b,
            reason: RestartReason::Leak,
        })
        .is_empty()
    );
    h.at(10.0);
    let actions = h.feed(Event::Timer(Timer::KillDeadline { worker: b }));
    assert!(matches!(
        actions[..],
        [Action::Signal {
            signal: Signal::Kill,
            ..
        }]
    ));
    let actions = h.feed(Event::Exited {
        worker: b,
        status: ExitStatus::Signal(9),
    });
    assert_eq!(actions, vec![Action::Exit]);
}

#[test]
fn second_signal_kills_at_once() {
    let mut h = ready_pool(2);
    h.feed(Event::Shutdown);
    let actions = h.feed(Event::ForceShutdown);
    let kills = actions
        .iter()
        .filter(|x| {
            matches!(
                x,
                Action::Signal {
                    signal: Signal::Kill,
                    ..
                }
            )
        })
        .count();
    assert_eq!(kills, 2);
}

#[test]
fn transition_table_rejects_impossible_moves() {
    assert!(allowed(SlotState::Starting, SlotState::Ready));
    assert!(!allowed(SlotState::Backoff, SlotState::Replacing));
    assert!(!allowed(SlotState::Stopping, SlotState::Starting));
    assert!(!allowed(SlotState::Failed, SlotState::Backoff));
}

/// Defect: a leak replacement decided for one worker (a dump and a conversion take
/// seconds) reached the supervisor after that worker had crashed and been restarted, and
/// replaced the slot's *next* worker, charged to the leak budget. The request names the
/// worker, and one for a worker that no longer serves is dropped.
#[test]
fn a_replacement_for_a_worker_that_is_gone_is_dropped_and_not_charged() {
    let mut h = ready_pool(1);
    let leaker = h.serving(0);
    let actions = h.feed(Event::Exited {
        worker: leaker,
        status: ExitStatus::Signal(9),
    });
    let timer = respawn_timer(&actions).expect("a respawn is scheduled");
    h.at(1.0);
    let restarted = spawns(&h.feed(Event::Timer(timer)))[0];
    h.feed(Event::Ready { worker: restarted });
    let actions = h.feed(Event::Replace {
        slot: 0,
        worker: leaker,
        reason: RestartReason::Leak,
    });
    assert_eq!(
        actions,
        vec![Action::ReplacementDropped {
            slot: 0,
            worker: leaker,
            reason: RestartReason::Leak
        }]
    );
    assert_eq!(h.serving(0), restarted);
    assert!(
        h.pool.slots[0].leak_restarts.is_empty(),
        "budget not charged"
    );
    // The restarted worker itself can still be replaced.
    let actions = h.feed(Event::Replace {
        slot: 0,
        worker: restarted,
        reason: RestartReason::Leak,
    });
    assert_eq!(spawns(&actions).len(), 1);
}

/// A queued replacement whose worker exits before its turn is dropped when its turn comes.
#[test]
fn a_queued_replacement_whose_worker_left_is_dropped_at_its_turn() {
    let mut h = ready_pool(2);
    let (w0, w1) = (h.serving(0), h.serving(1));
    let first = spawns(&h.feed(Event::Replace {
        slot: 0,
        worker: w0,
        reason: RestartReason::Manual,
    }));
    assert!(
        spawns(&h.feed(Event::Replace {
            slot: 1,
            worker: w1,
            reason: RestartReason::Leak,
        }))
        .is_empty(),
        "queued behind slot 0"
    );
    let actions = h.feed(Event::Exited {
        worker: w1,
        status: ExitStatus::Signal(9),
    });
    let timer = respawn_timer(&actions).expect("a respawn is scheduled");
    h.at(1.0);
    let next1 = spawns(&h.feed(Event::Timer(timer)))[0];
    let actions = h.feed(Event::Ready { worker: first[0] });
    assert!(
        actions.contains(&Action::ReplacementDropped {
            slot: 1,
            worker: w1,
            reason: RestartReason::Leak
        }),
        "{actions:?}"
    );
    assert!(!spawns(&actions).iter().any(|w| *w != next1 && *w > next1));
    assert_eq!(h.serving(1), next1);
    assert!(h.pool.slots[1].leak_restarts.is_empty());
}
