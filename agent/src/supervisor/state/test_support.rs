//! What the state machine's unit tests share: default settings and reading actions.

use super::*;

pub fn settings(workers: usize) -> PoolSettings {
    PoolSettings {
        workers,
        min_uptime: Duration::from_secs(5),
        ready_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(30),
        kill_timeout: Duration::from_secs(10),
        restart: RestartConfig {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(15),
            factor: 2.0,
            max_restarts: 5,
            window: Duration::from_secs(60),
            cool_down: Duration::from_secs(300),
        },
        max_concurrent_replacements: 1,
        max_leak_restarts_per_hour: 2,
        ready_from_probe: true,
        probe_hello_grace: None,
    }
}

/// The workers a batch of actions spawns.
pub fn spawns(actions: &[Action]) -> Vec<WorkerId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Spawn { worker, .. } => Some(*worker),
            _ => None,
        })
        .collect()
}

/// Feeds `event` and answers every Spawn with Spawned (a fresh pid); returns all actions.
pub fn feed(pool: &mut Pool, event: Event, now: Instant, pid: &mut u32) -> Vec<Action> {
    let mut actions = pool.handle(event, now);
    let mut i = 0;
    while i < actions.len() {
        if let Action::Spawn { worker, .. } = actions[i] {
            *pid += 1;
            let more = pool.handle(Event::Spawned { worker, pid: *pid }, now);
            actions.extend(more);
        }
        i += 1;
    }
    actions
}
