//! The transition table of the module header is the code's: a test parses the header
//! cell by cell against `allowed`, and random event sequences (proptest) may only make
//! the moves it allows (`Pool::handle` asserts each one in debug builds).

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

const SOURCE: &str = include_str!("mod.rs");

/// The header table as (from, to, allowed) cells; `·` (no change) counts as allowed.
fn header_cells() -> Vec<(SlotState, SlotState, bool)> {
    let rows: Vec<Vec<String>> = SOURCE
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .filter_map(|l| l.strip_prefix("//! |"))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    let header = &rows[0];
    assert_eq!(header[0], "from \\ to", "first header cell");
    let columns: Vec<SlotState> = header[1..]
        .iter()
        .filter(|c| !c.is_empty())
        .map(|c| SlotState::from_label(c).unwrap_or_else(|| panic!("column {c:?}")))
        .collect();
    let mut cells = Vec::new();
    for row in rows.iter().skip(2) {
        let from = SlotState::from_label(&row[0]).unwrap_or_else(|| panic!("row {:?}", row[0]));
        for (to, cell) in columns.iter().zip(&row[1..]) {
            let yes = match cell.trim_end_matches(['¹', '²', '³']) {
                "yes" | "·" => true,
                "" => false,
                other => panic!("cell {from:?} -> {to:?}: {other:?}"),
            };
            cells.push((from, *to, yes));
        }
    }
    cells
}

#[test]
fn header_table_matches_allowed_cell_by_cell() {
    let cells = header_cells();
    assert_eq!(
        cells.len(),
        SlotState::ALL.len() * SlotState::ALL.len(),
        "one row and one column per state"
    );
    let differ: Vec<String> = cells
        .iter()
        .filter(|(from, to, yes)| allowed(*from, *to) != *yes)
        .map(|(from, to, yes)| format!("{from:?} -> {to:?}: header {yes}, code {}", !yes))
        .collect();
    assert!(
        differ.is_empty(),
        "header and `allowed` differ: {differ:#?}"
    );
}

/// What the random walk does next; indices pick among what exists at that moment.
#[derive(Debug, Clone)]
enum Step {
    Hello(usize),
    Ready(usize),
    Exit(usize, bool),
    SpawnFailed(usize),
    FireTimer(usize),
    Replace(usize, usize),
    Reload,
    Shutdown,
    ForceShutdown,
}

fn step() -> impl Strategy<Value = Step> {
    let i = 0usize..64;
    prop_oneof![
        3 => i.clone().prop_map(Step::Hello),
        6 => i.clone().prop_map(Step::Ready),
        4 => (i.clone(), any::<bool>()).prop_map(|(w, s)| Step::Exit(w, s)),
        1 => i.clone().prop_map(Step::SpawnFailed),
        8 => i.clone().prop_map(Step::FireTimer),
        3 => (i.clone(), 0usize..6).prop_map(|(s, r)| Step::Replace(s, r)),
        1 => Just(Step::Reload),
        1 => Just(Step::Shutdown),
        1 => Just(Step::ForceShutdown),
    ]
}

/// The unit tests' settings, with fewer restarts before a cool-down and two concurrent
/// replacements, so short walks reach crash loops and overlapping replacements.
fn settings() -> PoolSettings {
    let mut settings = super::test_support::settings(3);
    settings.restart.max_restarts = 3;
    settings.max_concurrent_replacements = 2;
    settings
}

/// Runs `steps` against a 3-slot pool; returns every slot move it made.
fn walk(steps: &[Step]) -> BTreeSet<(SlotState, SlotState)> {
    let mut pool = Pool::new(settings());
    let mut now = Instant::now();
    let mut timers: Vec<(Instant, Timer)> = Vec::new();
    let mut live: Vec<WorkerId> = Vec::new();
    let mut next_pid = 100;
    let mut moves = BTreeSet::new();
    let mut feed =
        |pool: &mut Pool, event: Event, now: Instant, timers: &mut Vec<_>, live: &mut Vec<_>| {
            let mut queue = vec![event];
            while let Some(event) = queue.pop() {
                let before: Vec<SlotState> =
                    (0..pool.slot_count()).map(|s| pool.slot_state(s)).collect();
                for action in pool.handle(event, now) {
                    match action {
                        Action::Spawn { worker, .. } => {
                            next_pid += 1;
                            live.push(worker);
                            queue.push(Event::Spawned {
                                worker,
                                pid: next_pid,
                            });
                        }
                        Action::Schedule { at, timer } => timers.push((at, timer)),
                        _ => {}
                    }
                }
                for (slot, from) in before.into_iter().enumerate() {
                    moves.insert((from, pool.slot_state(slot)));
                }
            }
        };
    feed(&mut pool, Event::Start, now, &mut timers, &mut live);
    let pick = |v: &[WorkerId], i: usize| (!v.is_empty()).then(|| v[i % v.len()]);
    for step in steps {
        let event = match step.clone() {
            Step::Hello(i) => pick(&live, i).map(|worker| Event::Hello { worker }),
            Step::Ready(i) => pick(&live, i).map(|worker| Event::Ready { worker }),
            Step::Exit(i, signal) => pick(&live, i).map(|worker| {
                live.retain(|w| *w != worker);
                let status = if signal {
                    ExitStatus::Signal(9)
                } else {
                    ExitStatus::Code(1)
                };
                Event::Exited { worker, status }
            }),
            Step::SpawnFailed(i) => pick(&live, i).map(|worker| {
                live.retain(|w| *w != worker);
                Event::SpawnFailed { worker }
            }),
            Step::FireTimer(i) => (!timers.is_empty()).then(|| {
                let (at, timer) = timers.remove(i % timers.len());
                now = now.max(at);
                Event::Timer(timer)
            }),
            Step::Replace(slot, reason) => Some(Event::Replace {
                slot: slot % 3,
                // The serving worker, or one that is gone (such requests are dropped).
                worker: pool.serving(slot % 3).map_or(0, |w| w.id),
                reason: RestartReason::ALL[reason],
            }),
            Step::Reload => Some(Event::Reload),
            Step::Shutdown => Some(Event::Shutdown),
            Step::ForceShutdown => Some(Event::ForceShutdown),
        };
        if let Some(event) = event {
            feed(&mut pool, event, now, &mut timers, &mut live);
        }
    }
    moves
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_event_sequences_only_make_allowed_moves(steps in prop::collection::vec(step(), 1..120)) {
        for (from, to) in walk(&steps) {
            prop_assert!(allowed(from, to), "{from:?} -> {to:?}");
        }
    }
}

#[test]
fn seeded_random_walks_reach_every_allowed_move_and_no_other() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(ProptestConfig::default(), rng);
    let walks = prop::collection::vec(step(), 1..120);
    let mut reached = BTreeSet::new();
    for _ in 0..WALKS {
        let steps = walks.new_tree(&mut runner).expect("a walk").current();
        reached.extend(walk(&steps).into_iter().filter(|(from, to)| from != to));
    }
    let table: BTreeSet<(SlotState, SlotState)> = header_cells()
        .into_iter()
        .filter(|(from, to, yes)| *yes && from != to)
        .map(|(from, to, _)| (from, to))
        .collect();
    let dead: Vec<_> = table.difference(&reached).collect();
    assert!(
        dead.is_empty(),
        "moves the table allows but {WALKS} walks never made: {dead:?}"
    );
    let undeclared: Vec<_> = reached.difference(&table).collect();
    assert!(
        undeclared.is_empty(),
        "moves the table lacks: {undeclared:?}"
    );
}

/// Enough seeded walks to reach every move (the rarest needs a few hundred).
const WALKS: usize = 1000;
