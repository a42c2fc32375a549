//! Readers on fake `/proc` and cgroup trees, and whole rounds over them.

use std::path::Path;

use super::collect::{HostReaders, Roots, collect_host, collect_trees, read_tree};
use super::fake_proc::{FakeProc, PAGE, TICKS, write_file};
use super::procfs::{ProcError, parse_smaps_rollup, parse_stat};
use super::system::{
    own_cgroup_dir, parse_pressure_some, read_cgroup_memory, read_loadavg, read_meminfo,
};
use super::tree::{
    ChildSource, PSS_MAX_KEPT, ParentTable, TREE_REFRESH_ROUNDS, TreeCache, kernel_lists_children,
    process_tree,
};

fn roots(fake: &FakeProc, kernel_children: bool) -> Roots {
    Roots {
        proc: fake.procfs(),
        cgroup_dir: None,
        agent_pid: 1,
        kernel_children,
    }
}

#[test]
fn stat_and_rollup_are_read_and_scaled() {
    let fake = FakeProc::new();
    fake.process(10, 1, 250, [30, 20, 5, 5], [900, 600, 12]);
    let proc = fake.procfs();
    let mut buf = Vec::new();
    assert_eq!(proc.rss_bytes(10, &mut buf).expect("rss"), 250 * PAGE);
    let stat = proc.stat(10, &mut buf).expect("stat");
    assert_eq!((stat.ppid, stat.own_ticks, stat.reaped_ticks), (1, 50, 10));
    let rollup = proc.smaps_rollup(10, &mut buf).expect("rollup");
    assert_eq!(rollup.pss, 900 * 1024);
    assert_eq!(rollup.uss, 600 * 1024);
    assert_eq!(rollup.swap, 12 * 1024);
    assert_eq!(rollup.rss, 250 * 4 * 1024);
}

#[test]
fn a_missing_process_is_gone_and_garbage_is_a_parse_error_naming_the_path() {
    let fake = FakeProc::new();
    let proc = fake.procfs();
    assert!(matches!(
        proc.rss_bytes(77, &mut Vec::new()),
        Err(ProcError::Gone { pid: 77 })
    ));
    fake.write("78/stat", "garbage");
    let err = proc.rss_bytes(78, &mut Vec::new()).expect_err("garbage");
    assert!(matches!(err, ProcError::Parse { .. }));
    assert!(err.to_string().contains("78/stat"), "{err}");
}

#[test]
fn parsers_reject_truncated_input() {
    assert_eq!(parse_stat(5, b"5 (x) S 1 2 3"), None);
    assert_eq!(parse_stat(5, b"no parenthesis"), None);
    assert_eq!(parse_smaps_rollup("Rss: 4 kB\n"), None, "no Pss line");
    assert_eq!(parse_smaps_rollup("Pss: x kB\n"), None);
}

#[test]
fn the_tree_follows_kernel_children_lists() {
    let fake = FakeProc::new();
    fake.process(10, 1, 100, [10, 0, 0, 0], [100, 50, 0]);
    fake.process(11, 10, 20, [5, 0, 0, 0], [20, 10, 0]);
    fake.process(12, 11, 30, [5, 0, 0, 0], [30, 20, 4]);
    fake.children(10, &[11]);
    fake.children(11, &[12]);
    let proc = fake.procfs();
    assert!(kernel_lists_children(&proc, 10));
    assert_eq!(
        process_tree(&proc, 10, ChildSource::Kernel),
        vec![10, 11, 12]
    );
    let figures = read_tree(&proc, 10, ChildSource::Kernel, true).expect("tree");
    assert_eq!(figures.rss, 150 * PAGE);
    assert_eq!(figures.processes, 3);
    assert!((figures.cpu_seconds - 20.0 / TICKS as f64).abs() < 1e-9);
    let smaps = figures.smaps.expect("smaps round");
    assert_eq!(
        (smaps.pss, smaps.uss, smaps.swap),
        (150 * 1024, 80 * 1024, 4 * 1024)
    );
}

#[test]
fn a_steady_trees_smaps_figures_are_kept_until_its_rss_moves_or_they_are_too_old() {
    let fake = FakeProc::new();
    fake.process(10, 1, 1000, [1, 0, 0, 0], [3000, 2000, 0]);
    let roots = roots(&fake, true);
    let mut cache = TreeCache::default();
    let pss = |cache: &mut TreeCache| {
        let tree = collect_trees(&roots, &[10], true, cache).remove(0);
        tree.expect("10").smaps.expect("an smaps round").pss / 1024
    };
    assert_eq!(pss(&mut cache), 3000);
    // The kernel's figure moves (sharing changed) but RSS does not: kept...
    fake.process(10, 1, 1000, [1, 0, 0, 0], [2900, 2000, 0]);
    for _ in 0..PSS_MAX_KEPT {
        assert_eq!(pss(&mut cache), 3000);
    }
    // ... but never more than PSS_MAX_KEPT smaps rounds in a row.
    assert_eq!(pss(&mut cache), 2900);
    // RSS within 1 %: kept; beyond: read again.
    fake.process(10, 1, 1009, [1, 0, 0, 0], [2950, 2000, 0]);
    assert_eq!(pss(&mut cache), 2900);
    fake.process(10, 1, 1011, [1, 0, 0, 0], [2960, 2000, 0]);
    assert_eq!(pss(&mut cache), 2960);
    // A new member: read again, whatever the RSS.
    fake.process(10, 1, 1000, [1, 0, 0, 0], [2000, 2000, 0]);
    fake.process(11, 10, 11, [1, 0, 0, 0], [10, 10, 0]);
    fake.children(10, &[11]);
    assert_eq!(pss(&mut cache), 2010);
}

#[test]
fn without_children_files_the_ppid_scan_finds_the_same_tree() {
    let fake = FakeProc::new();
    fake.process(10, 1, 100, [1, 0, 0, 0], [1, 1, 0]);
    fake.process(11, 10, 20, [1, 0, 0, 0], [1, 1, 0]);
    fake.process(12, 11, 30, [1, 0, 0, 0], [1, 1, 0]);
    fake.process(13, 1, 40, [1, 0, 0, 0], [1, 1, 0]);
    let proc = fake.procfs();
    assert!(!kernel_lists_children(&proc, 10));
    let table = ParentTable::scan(&proc);
    let mut tree = process_tree(&proc, 10, ChildSource::Table(&table));
    tree.sort_unstable();
    assert_eq!(tree, vec![10, 11, 12]);
    let trees = collect_trees(
        &roots(&fake, false),
        &[10, 13, 99],
        false,
        &mut TreeCache::default(),
    );
    assert_eq!(trees[0].as_ref().expect("10").rss, 150 * PAGE);
    assert_eq!(trees[0].as_ref().expect("10").smaps, None, "fast round");
    assert_eq!(trees[1].as_ref().expect("13").processes, 1);
    assert!(matches!(trees[2], Err(ProcError::Gone { pid: 99 })));
}

#[test]
fn cached_trees_are_walked_again_every_few_rounds_on_smaps_rounds_and_after_a_loss() {
    let fake = FakeProc::new();
    fake.process(10, 1, 100, [1, 0, 0, 0], [1, 1, 0]);
    fake.process(20, 1, 10, [1, 0, 0, 0], [1, 1, 0]);
    let roots = roots(&fake, true);
    let mut cache = TreeCache::default();
    let rss = |cache: &mut TreeCache, smaps: bool| {
        collect_trees(&roots, &[10], smaps, cache)[0]
            .as_ref()
            .expect("10")
            .rss
    };
    assert_eq!(rss(&mut cache, false), 100 * PAGE);
    // A child appears: counted once the tree is due again, not before.
    fake.process(11, 10, 20, [1, 0, 0, 0], [1, 1, 0]);
    fake.children(10, &[11]);
    let rounds: Vec<u64> = (1..=TREE_REFRESH_ROUNDS)
        .map(|_| rss(&mut cache, false))
        .collect();
    let late = rounds
        .iter()
        .position(|&r| r == 120 * PAGE)
        .expect("counted");
    assert_eq!(late as u32 + 1, TREE_REFRESH_ROUNDS, "{rounds:?}");
    // A smaps round always walks.
    fake.process(12, 10, 30, [1, 0, 0, 0], [1, 1, 0]);
    fake.children(10, &[11, 12]);
    assert_eq!(rss(&mut cache, true), 150 * PAGE);
    // A member that vanished makes the next round walk.
    fake.remove(12);
    fake.children(10, &[11]);
    assert_eq!(rss(&mut cache, false), 120 * PAGE);
    assert!(cache.due(10));
    // A worker's entry goes with it.
    collect_trees(&roots, &[20], false, &mut cache);
    assert_eq!(cache.len(), 1);
    assert!(cache.due(10));
}

#[test]
fn a_descendant_that_vanishes_is_skipped_but_a_vanished_root_is_gone() {
    let fake = FakeProc::new();
    fake.process(10, 1, 100, [1, 0, 0, 0], [1, 1, 0]);
    fake.children(10, &[11]);
    let proc = fake.procfs();
    let figures = read_tree(&proc, 10, ChildSource::Kernel, false).expect("tree");
    assert_eq!((figures.rss, figures.processes), (100 * PAGE, 1));
    assert!(read_tree(&proc, 11, ChildSource::Kernel, false).is_err());
}

#[test]
fn system_memory_and_load_are_parsed() {
    let fake = FakeProc::new();
    let mem = read_meminfo(&fake.root()).expect("meminfo");
    assert_eq!(
        (mem.total, mem.available, mem.used()),
        (1_024_000, 614_400, 409_600)
    );
    let load = read_loadavg(&fake.root()).expect("loadavg");
    assert_eq!((load.one, load.five, load.fifteen), (0.5, 1.25, 2.0));
    fake.write("meminfo", "MemTotal: 5 kB\n");
    assert!(
        read_meminfo(&fake.root()).is_err(),
        "MemAvailable is required"
    );
}

#[test]
fn the_agents_cgroup_is_found_and_absent_files_are_none() {
    let fake = FakeProc::new();
    let cgroup_root = fake.dir.path().join("cgroup");
    fake.write(
        "self/cgroup",
        "4:memory:/old\n0::/system.slice/heapwarden.service\n",
    );
    let dir = own_cgroup_dir(&fake.root(), &cgroup_root)
        .expect("read")
        .expect("v2 line");
    assert_eq!(dir, cgroup_root.join("system.slice/heapwarden.service"));
    write_file(&dir.join("memory.current"), "123456\n");
    write_file(&dir.join("memory.max"), "max\n");
    write_file(
        &dir.join("memory.pressure"),
        "some avg10=1.50 avg60=0.25 avg300=0.00 total=10\nfull avg10=9.00 avg60=9.00 avg300=0.00 total=5\n",
    );
    let mem = read_cgroup_memory(&dir).expect("cgroup");
    assert_eq!(mem.current, Some(123_456));
    assert_eq!(mem.max, None, "max means no limit");
    assert_eq!(
        (mem.pressure_avg10, mem.pressure_avg60),
        (Some(1.5), Some(0.25))
    );
    write_file(&dir.join("memory.max"), "1048576\n");
    std::fs::remove_file(dir.join("memory.pressure")).expect("rm");
    let mem = read_cgroup_memory(&dir).expect("cgroup");
    assert_eq!((mem.max, mem.pressure_avg10), (Some(1_048_576), None));
    let empty = read_cgroup_memory(Path::new("/nonexistent/cgroup")).expect("absent is fine");
    assert_eq!(empty, Default::default());
    assert_eq!(parse_pressure_some("full avg10=1.00\n"), (None, None));
}

#[test]
fn a_v1_host_has_no_cgroup_dir() {
    let fake = FakeProc::new();
    fake.write("self/cgroup", "4:memory:/x\n");
    assert_eq!(
        own_cgroup_dir(&fake.root(), Path::new("/sys/fs/cgroup")).expect("read"),
        None
    );
}

#[test]
fn host_figures_use_the_agents_own_cpu_only() {
    let fake = FakeProc::new();
    fake.process(1, 0, 64, [100, 50, 900, 900], [1, 1, 0]);
    let roots = roots(&fake, true);
    let mut readers = HostReaders::new(&roots);
    let host = collect_host(&roots, &mut readers);
    let agent = host.agent.expect("agent");
    assert_eq!(agent.rss, 64 * PAGE);
    assert!(
        (agent.cpu_seconds - 1.5).abs() < 1e-9,
        "reaped workers' CPU is not the agent's"
    );
    assert!(host.memory.is_some() && host.load.is_some() && host.errors.is_empty());
    // The next round reads the files kept open: the agent's CPU has grown since.
    fake.process(1, 0, 64, [200, 50, 900, 900], [1, 1, 0]);
    let again = collect_host(&roots, &mut readers);
    assert!((again.agent.expect("agent").cpu_seconds - 2.5).abs() < 1e-9);
}
