//! Unit tests of conversion (hand-made raw dumps), diffs and the store.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::pprof::{self, Profile};
use super::*;
use crate::config::ProfilesConfig;
use crate::config::types::Size;

/// A function whose address the test puts into a hand-made dump.
#[inline(never)]
fn profile_test_allocation_site() -> usize {
    std::hint::black_box(7)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn string(p: &Profile, i: i64) -> &str {
    &p.string_table[i as usize]
}

#[test]
fn hand_made_dump_converts_to_symbolized_pprof_with_our_function_on_top() {
    let dir = tempfile::tempdir().expect("temp dir");
    let site = profile_test_allocation_site as fn() -> usize as usize as u64;
    let maps = std::fs::read_to_string("/proc/self/maps").expect("own maps");
    // Return addresses point past the call; the converter subtracts one.
    let raw = format!(
        "heap_v2/524288\n  t*: 3: 3145728 [0: 0]\n@ 0x{:x} 0x{:x}\n  t*: 2: 2097152 [0: 0]\n\
         @ 0x10\n  t*: 1: 1048576 [0: 0]\n\nMAPPED_LIBRARIES:\n{maps}",
        site + 2,
        site + 3,
    );
    let raw_path = dir.path().join("x.raw");
    let out = dir.path().join("x.pb.gz");
    std::fs::write(&raw_path, raw).expect("write raw");
    let summary = convert(&raw_path, &out, None).expect("converts");
    assert_eq!(summary.samples, 2);
    assert_eq!(summary.unsymbolized, 1, "0x10 is outside every mapping");
    assert_eq!(mode(&out), 0o600);
    let profile = pprof::decode(&std::fs::read(&out).expect("read")).expect("decodes");
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (string(&profile, t.r#type), string(&profile, t.unit)))
        .collect();
    assert_eq!(
        types,
        [("inuse_objects", "count"), ("inuse_space", "bytes")]
    );
    assert_eq!(string(&profile, profile.default_sample_type), "inuse_space");
    let scale = 1.0 / (1.0 - (-2.0f64).exp());
    assert_eq!(
        profile.sample[0].value,
        [
            (2.0 * scale).round() as i64,
            (2097152.0 * scale).round() as i64
        ]
    );
    let leaf = &profile.location[profile.sample[0].location_id[0] as usize - 1];
    let function =
        &profile.function[leaf.line.last().expect("symbolized").function_id as usize - 1];
    assert!(
        string(&profile, function.name).ends_with("profile_test_allocation_site"),
        "leaf named {:?}",
        string(&profile, function.name)
    );
}

#[test]
fn garbage_raw_dump_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let raw = dir.path().join("bad.raw");
    std::fs::write(&raw, "not a heap profile").expect("write");
    let err = convert(&raw, &dir.path().join("o.pb.gz"), None).expect_err("rejected");
    assert!(err.to_string().contains("bad.raw"), "{err}");
    assert!(!dir.path().join("o.pb.gz").exists());
    let missing = convert(&dir.path().join("none.raw"), &dir.path().join("o"), Some(1));
    assert!(matches!(missing, Err(ProfileError::Read { .. })));
}

#[test]
fn python_frames_go_above_the_c_frames_with_function_file_and_line() {
    use heapwarden_protocol::python_frames;
    let dir = tempfile::tempdir().expect("temp dir");
    let (inner, outer) = (python_frames::encode(3, 30), python_frames::encode(9, 41));
    // C frames first in the file (jemalloc's unwinder), then the probe's Python frames;
    // code 5 is missing from the table.
    let raw = format!(
        "heap_v2/524288\n  t*: 1: 1048576 [0: 0]\n\
@ 0x10 0x20 {inner:#x} {outer:#x} {:#x}\n  t*: 1: 1048576 [0: 0]\n\n\
MAPPED_LIBRARIES:\n\nPYTHON_FRAMES:\n3\tremember_order\t/srv/shop.py\n9\torder\t/srv/shop.py\n",
        python_frames::encode(5, 1)
    );
    let raw_path = dir.path().join("py.raw");
    let out = dir.path().join("py.pb.gz");
    std::fs::write(&raw_path, raw).expect("write raw");
    convert(&raw_path, &out, None).expect("converts");
    let profile = pprof::decode(&std::fs::read(&out).expect("read")).expect("decodes");
    let frames: Vec<(String, String, i64)> = profile.sample[0]
        .location_id
        .iter()
        .map(|id| {
            let location = &profile.location[*id as usize - 1];
            location.line.first().map_or_else(
                || (String::new(), String::new(), 0),
                |line| {
                    let function = &profile.function[line.function_id as usize - 1];
                    (
                        string(&profile, function.name).to_string(),
                        string(&profile, function.filename).to_string(),
                        line.line,
                    )
                },
            )
        })
        .collect();
    assert_eq!(
        frames[..2],
        [
            ("remember_order".into(), "/srv/shop.py".into(), 30),
            ("order".into(), "/srv/shop.py".into(), 41)
        ]
    );
    assert_eq!(frames[2], (String::new(), String::new(), 0), "unknown code");
    assert_eq!(frames.len(), 5, "the two C frames stay below: {frames:?}");
}

/// A profile whose samples are (leaf-first function names, bytes).
pub(super) fn profile_of(samples: &[(&[&str], i64)]) -> Profile {
    let mut strings = pprof::StringTable::default();
    let mut p = Profile::default();
    let space = strings.intern("inuse_space");
    let bytes = strings.intern("bytes");
    p.sample_type = vec![pprof::ValueType {
        r#type: space,
        unit: bytes,
    }];
    for (names, value) in samples {
        let mut location_id = Vec::new();
        for name in *names {
            let id = p.location.len() as u64 + 1;
            p.function.push(pprof::Function {
                id,
                name: strings.intern(name),
                ..Default::default()
            });
            p.location.push(pprof::Location {
                id,
                line: vec![pprof::Line {
                    function_id: id,
                    line: 1,
                }],
                ..Default::default()
            });
            location_id.push(id);
        }
        p.sample.push(pprof::Sample {
            location_id,
            value: vec![*value],
        });
    }
    p.string_table = strings.finish();
    p
}

#[test]
fn diff_ranks_growing_application_functions_with_allocator_frames_trimmed() {
    let base = profile_of(&[
        (&["malloc", "app::cache_fill", "main"], 1000),
        (&["malloc", "app::steady", "main"], 500),
    ]);
    let leak = profile_of(&[
        (
            &[
                "prof_backtrace_impl",
                "__rust_alloc",
                "alloc::raw_vec::grow",
                "app::leaky",
                "main",
            ],
            9000,
        ),
        (&["malloc", "app::cache_fill", "main"], 1500),
        (&["malloc", "app::steady", "main"], 400),
    ]);
    let report = diff_profiles(1, &base, 2, &leak).expect("diffs");
    assert_eq!((report.base_id, report.profile_id), (1, 2));
    assert_eq!(report.total_delta_bytes, 10900 - 1500);
    let top: Vec<(&str, i64)> = report
        .top
        .iter()
        .map(|e| (e.function.as_str(), e.delta_bytes))
        .collect();
    assert_eq!(
        top,
        [
            ("app::leaky", 9000),
            ("app::cache_fill", 500),
            ("app::steady", -100)
        ]
    );
    assert_eq!(report.top_stacks[0].frames, ["app::leaky", "main"]);
    assert_eq!(top_sites(&report, 1), "app::leaky +8.8KiB");
}

#[test]
fn diff_files_reads_stored_profiles_and_rejects_non_profiles() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b, junk) = (
        dir.path().join("1.pb.gz"),
        dir.path().join("2.pb.gz"),
        dir.path().join("3"),
    );
    std::fs::write(
        &a,
        pprof::encode_gz(&profile_of(&[(&["f"], 1)])).expect("gz"),
    )
    .expect("w");
    std::fs::write(
        &b,
        pprof::encode_gz(&profile_of(&[(&["f"], 5)])).expect("gz"),
    )
    .expect("w");
    std::fs::write(&junk, b"\x1f\x8bnot gzip at all").expect("w");
    let report = diff_files(1, &a, 2, &b).expect("diffs");
    assert_eq!(report.top[0].delta_bytes, 4);
    assert!(matches!(
        diff_files(1, &a, 3, &junk),
        Err(ProfileError::Decode { .. })
    ));
}

fn store_config(max_count: usize, max_bytes: u64) -> ProfilesConfig {
    ProfilesConfig {
        max_count,
        max_bytes: Size(max_bytes),
        min_free_disk: Size(0),
        snapshot_headroom: 2.0,
    }
}

/// Takes one profile through begin → (fake conversion) → commit.
fn add(store: &mut ProfileStore, slot: usize, trigger: Trigger, size: usize) -> ProfileMeta {
    let pending = store
        .begin(slot, None, 100 + slot as u32, trigger)
        .expect("begin");
    std::fs::write(&pending.raw_path, "raw").expect("raw");
    std::fs::write(&pending.out_path, vec![0u8; size]).expect("out");
    store
        .commit(pending, ProfileFigures::default(), None)
        .expect("commit")
        .0
}

#[test]
fn store_is_private_and_ids_stay_monotonic_across_reopen() {
    let state = tempfile::tempdir().expect("temp dir");
    let mut store = ProfileStore::open(state.path(), store_config(10, 1 << 20)).expect("open");
    assert_eq!(mode(store.dir()), 0o700);
    let first = add(&mut store, 0, Trigger::Baseline, 10);
    let second = add(&mut store, 0, Trigger::Leak, 20);
    assert_eq!((first.id, second.id), (1, 2));
    assert_eq!(second.file, "2.pb.gz");
    assert_eq!(mode(&store.dir().join("2.pb.gz")), 0o600);
    assert_eq!(mode(&store.dir().join("index.json")), 0o600);
    assert!(
        !store.dir().join("2.raw").exists(),
        "raw dump removed on commit"
    );
    assert_eq!(store.stored_bytes(), 30);
    let aborted = store.begin(1, None, 5, Trigger::Manual).expect("begin");
    std::fs::write(&aborted.out_path, "half").expect("w");
    store.abort(&aborted);
    assert!(!aborted.out_path.exists());
    std::fs::write(store.dir().join("99.pb.gz"), "stray").expect("stray");
    drop(store);
    let store = ProfileStore::open(state.path(), store_config(10, 1 << 20)).expect("reopen");
    assert_eq!(store.list().len(), 2);
    assert!(
        !store.dir().join("99.pb.gz").exists(),
        "unknown files are cleaned up"
    );
    assert_eq!(store.latest_baseline(0).map(|m| m.id), Some(1));
    assert_eq!(store.path_of(7), None);
    let mut store = store;
    assert_eq!(
        add(&mut store, 0, Trigger::Manual, 1).id,
        4,
        "id 3 was handed out before"
    );
}

/// A dump reserves its id when it starts; the export follows the order profiles were
/// stored, so a slow dump stored after a quicker, later one is still pushed (the
/// exporter's cursor once moved past it by id, and a baseline never reached the sink).
#[test]
fn the_export_queue_follows_store_order_and_an_old_index_is_numbered_by_id() {
    let state = tempfile::tempdir().expect("temp dir");
    let mut store = ProfileStore::open(state.path(), store_config(10, 1 << 20)).expect("open");
    let slow = store.begin(0, None, 100, Trigger::Baseline).expect("begin");
    let quick = add(&mut store, 1, Trigger::Baseline, 10);
    std::fs::write(&slow.out_path, vec![0u8; 10]).expect("out");
    let slow = store
        .commit(slow, ProfileFigures::default(), None)
        .expect("commit")
        .0;
    assert!(slow.id < quick.id && slow.stored_seq > quick.stored_seq);
    let first = store.export_queue(0).next.expect("a profile waits").0;
    assert_eq!(first.id, quick.id);
    let queue = store.export_queue(first.stored_seq);
    assert_eq!(queue.next.expect("the slow one waits").0.id, slow.id);
    assert_eq!(queue.pending, 1);
    assert!(store.export_queue(slow.stored_seq).next.is_none());

    // An index written before `stored_seq`: entries numbered by id, new ones after
    // every old id (an old cursor holds an id).
    let index = store.dir().join("index.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index).expect("index")).expect("json");
    json.as_object_mut().expect("object").remove("next_seq");
    for p in json["profiles"].as_array_mut().expect("profiles") {
        p.as_object_mut().expect("entry").remove("stored_seq");
    }
    std::fs::write(&index, json.to_string()).expect("old index");
    drop(store);
    let mut store = ProfileStore::open(state.path(), store_config(10, 1 << 20)).expect("reopen");
    let seqs: Vec<(u64, u64)> = (store.list().iter())
        .map(|p| (p.id, p.stored_seq))
        .collect();
    assert_eq!(seqs, vec![(2, 2), (1, 1)]);
    let next = add(&mut store, 0, Trigger::Manual, 10);
    assert_eq!((next.id, next.stored_seq), (3, 3));
    assert_eq!(store.export_queue(2).next.expect("after 2").0.id, 3);
}

#[test]
fn retention_drops_oldest_but_keeps_each_slots_newest_baseline() {
    let state = tempfile::tempdir().expect("temp dir");
    let mut store = ProfileStore::open(state.path(), store_config(3, 1 << 20)).expect("open");
    let base0 = add(&mut store, 0, Trigger::Baseline, 10);
    let base1 = add(&mut store, 1, Trigger::Baseline, 10);
    let leak_a = add(&mut store, 0, Trigger::Leak, 10);
    let leak_b = add(&mut store, 0, Trigger::Leak, 10);
    let ids: Vec<u64> = store.list().iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        [base0.id, base1.id, leak_b.id],
        "oldest non-baseline went first"
    );
    assert!(!store.dir().join(&leak_a.file).exists());
    // By bytes: 25 bytes allowed, a 20-byte profile pushes out older ones.
    let mut store = ProfileStore::open(state.path(), store_config(10, 25)).expect("reopen");
    let big = add(&mut store, 0, Trigger::Leak, 20);
    assert!(store.stored_bytes() <= 25 || store.list().len() == 1);
    assert_eq!(
        store.list().last().map(|m| m.id),
        Some(big.id),
        "the new profile stays"
    );
}

#[test]
fn short_disk_skips_the_dump_and_counts_it() {
    let state = tempfile::tempdir().expect("temp dir");
    let config = ProfilesConfig {
        min_free_disk: Size(u64::MAX),
        ..store_config(10, 1 << 20)
    };
    let mut store = ProfileStore::open(state.path(), config).expect("open");
    assert!(store.free_disk_ok(0).expect("statvfs"));
    assert!(!store.free_disk_ok(u64::MAX).expect("statvfs"));
    assert!(matches!(
        store.begin(0, None, 1, Trigger::Leak),
        Err(StoreError::DiskShort { .. })
    ));
    assert_eq!(store.skipped_for_disk(), 1);
}

#[tokio::test]
async fn handle_serves_the_store_from_its_own_thread_and_diffs() {
    let state = tempfile::tempdir().expect("temp dir");
    let store = ProfileStore::open(state.path(), store_config(10, 1 << 20)).expect("open");
    let (handle, thread) = ProfileStoreHandle::spawn(store);
    for (trigger, bytes) in [(Trigger::Baseline, 100), (Trigger::Leak, 5000)] {
        let pending = handle.begin(3, None, 42, trigger).await.expect("begin");
        let profile = profile_of(&[(&["malloc", "app::leaky"], bytes)]);
        std::fs::write(&pending.out_path, pprof::encode_gz(&profile).expect("gz")).expect("w");
        handle
            .commit(pending, ProfileFigures::default(), Some("trend".into()))
            .await
            .expect("commit");
    }
    let report = handle
        .diff(2, None)
        .await
        .expect("diff against the slot's baseline");
    assert_eq!(
        (report.base_id, report.top[0].function.as_str()),
        (1, "app::leaky")
    );
    assert!(matches!(handle.get(9).await, Err(StoreError::UnknownId(9))));
    let stats = handle.stats().await.expect("stats");
    assert_eq!(stats.count, 2);
    drop(handle);
    thread
        .join()
        .expect("store thread ends with its last handle");
}

/// Writes one stored profile of `slot`'s worker `worker_id` (pid `pid`) holding `bytes`
/// in `app::leaky`.
async fn write_profile(
    handle: &ProfileStoreHandle,
    (slot, worker_id, pid): (usize, u64, u32),
    trigger: Trigger,
    bytes: i64,
) {
    let pending = handle
        .begin(slot, Some(worker_id), pid, trigger)
        .await
        .expect("begin");
    let profile = profile_of(&[(&["malloc", "app::leaky"], bytes)]);
    std::fs::write(&pending.out_path, pprof::encode_gz(&profile).expect("gz")).expect("w");
    handle
        .commit(pending, ProfileFigures::default(), None)
        .await
        .expect("commit");
}

/// Defect: with `action = "restart"` every leak profile is followed by the replacement
/// worker's own baseline, and `diff <leak>` took the slot's newest baseline, the
/// replacement's, so it measured another process. The default base is the baseline of
/// the worker that wrote the leak profile.
#[tokio::test]
async fn a_leak_diffs_against_its_own_workers_baseline_not_the_replacements() {
    let state = tempfile::tempdir().expect("temp dir");
    let store = ProfileStore::open(state.path(), store_config(10, 1 << 20)).expect("open");
    let (handle, _thread) = ProfileStoreHandle::spawn(store);
    // Worker 1 (pid 42): baseline at 1 MiB, leak at 90 MiB; its replacement, worker 2
    // (pid 43), writes its baseline at 10 MiB; then worker 1's leak profile is diffed.
    write_profile(&handle, (0, 1, 42), Trigger::Baseline, 1 << 20).await;
    write_profile(&handle, (0, 1, 42), Trigger::Leak, 90 << 20).await;
    write_profile(&handle, (0, 2, 43), Trigger::Baseline, 10 << 20).await;
    let report = handle.diff(2, None).await.expect("diff");
    assert_eq!(report.base_id, 1, "the leaker's own baseline");
    assert_eq!(report.total_delta_bytes, (90 << 20) - (1 << 20));
    // The replacement's later leak takes the replacement's baseline.
    write_profile(&handle, (0, 2, 43), Trigger::Leak, 30 << 20).await;
    assert_eq!(handle.diff(4, None).await.expect("diff").base_id, 3);
    // A pre-fork worker's leak profile is the child that grew (pid 44), baselined through
    // worker 2's first process: same worker, another pid, still its base.
    write_profile(&handle, (0, 2, 44), Trigger::Leak, 30 << 20).await;
    assert_eq!(handle.diff(5, None).await.expect("diff").base_id, 3);
    // A worker without a baseline of its own has no default base.
    write_profile(&handle, (1, 5, 50), Trigger::Manual, 30 << 20).await;
    assert!(matches!(
        handle.diff(6, None).await,
        Err(StoreError::NoBaseline {
            id: 6,
            slot: 1,
            pid: 50
        })
    ));
}

/// A fake helper: a shell script standing in for `heapwarden __convert-profile`.
fn fake_helper(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("helper.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    path
}

#[tokio::test]
async fn helper_summary_failure_and_timeout_are_reported() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("temp dir");
    let (raw, out) = (dir.path().join("1.raw"), dir.path().join("1.pb.gz"));
    let ok = fake_helper(
        dir.path(),
        r#"echo '{"samples":1,"locations":2,"functions":3,"unsymbolized":0,"total_bytes":5,"total_objects":1,"raw_bytes":9,"out_bytes":7,"elapsed_ms":1}'"#,
    );
    let summary = convert_with_helper(&ok, &raw, &out, Some(1), Duration::from_secs(10))
        .await
        .expect("summary parsed");
    assert_eq!((summary.samples, summary.out_bytes), (1, 7));

    let failing = fake_helper(dir.path(), "echo 'cannot read raw' >&2; exit 3");
    let err = convert_with_helper(&failing, &raw, &out, None, Duration::from_secs(10))
        .await
        .expect_err("non-zero exit is an error");
    assert!(err.to_string().contains("cannot read raw"), "{err}");

    let hanging = fake_helper(dir.path(), "exec sleep 30");
    let started = Instant::now();
    let err = convert_with_helper(&hanging, &raw, &out, None, Duration::from_millis(300))
        .await
        .expect_err("times out");
    assert!(matches!(err, ProfileError::HelperTimeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn manual_profiles_never_evict_leak_profiles_and_go_first() {
    let state = tempfile::tempdir().expect("temp dir");
    let mut store = ProfileStore::open(state.path(), store_config(3, 1 << 20)).expect("open");
    let base = add(&mut store, 0, Trigger::Baseline, 10);
    let leak_a = add(&mut store, 0, Trigger::Leak, 10);
    let leak_b = add(&mut store, 0, Trigger::Leak, 10);
    let pending = store.begin(0, None, 100, Trigger::Manual).expect("begin");
    std::fs::write(&pending.out_path, vec![0u8; 10]).expect("out");
    let refused = store.commit(pending.clone(), ProfileFigures::default(), None);
    assert!(
        matches!(refused, Err(StoreError::RetentionFull { .. })),
        "{refused:?}"
    );
    assert!(
        !pending.out_path.exists(),
        "the refused manual profile is removed"
    );
    let ids: Vec<u64> = store.list().iter().map(|m| m.id).collect();
    assert_eq!(ids, [base.id, leak_a.id, leak_b.id]);

    // With room for manual ones, a manual profile evicts the oldest manual profile, and
    // a leak profile evicts manual ones before any older leak profile.
    let mut store = ProfileStore::open(state.path(), store_config(5, 1 << 20)).expect("reopen");
    let manual_a = add(&mut store, 0, Trigger::Manual, 10);
    let manual_b = add(&mut store, 0, Trigger::Manual, 10);
    let manual_c = add(&mut store, 0, Trigger::Manual, 10);
    let ids: Vec<u64> = store.list().iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        [base.id, leak_a.id, leak_b.id, manual_b.id, manual_c.id]
    );
    assert!(!store.dir().join(&manual_a.file).exists());
    let leak_c = add(&mut store, 0, Trigger::Leak, 10);
    let ids: Vec<u64> = store.list().iter().map(|m| m.id).collect();
    assert_eq!(ids, [base.id, leak_a.id, leak_b.id, manual_c.id, leak_c.id]);
}

#[test]
fn free_space_is_rechecked_for_the_dump_before_conversion() {
    let state = tempfile::tempdir().expect("temp dir");
    let store = ProfileStore::open(state.path(), store_config(10, 1 << 30)).expect("open");
    let free = store.free_disk().expect("statvfs");
    drop(store);
    let config = ProfilesConfig {
        min_free_disk: Size(free.saturating_sub(64 << 20)),
        ..store_config(10, 1 << 30)
    };
    let mut store = ProfileStore::open(state.path(), config).expect("reopen");
    let pending = store
        .begin(0, None, 1, Trigger::Manual)
        .expect("room at begin");
    // A (sparse) 256 MiB raw dump: converting it needs room the disk does not have.
    let raw = std::fs::File::create(&pending.raw_path).expect("raw");
    raw.set_len(256 << 20).expect("sparse");
    assert!(matches!(
        store.recheck_disk(&pending),
        Err(StoreError::DiskShort { .. })
    ));
    assert_eq!(store.skipped_for_disk(), 1);
}

/// Commits a snapshot of `size` bytes the way `snapshot.rs` does; `Err` when refused.
fn add_snapshot(
    store: &mut ProfileStore,
    slot: usize,
    trigger: Trigger,
    size: usize,
) -> Result<ProfileMeta, StoreError> {
    let (pending, cap) = store.begin_snapshot(slot, None, 1, trigger, size as u64)?;
    assert!(cap >= size as u64, "cap {cap} below the expected {size}");
    std::fs::write(&pending.out_path, vec![b'{'; size]).expect("snapshot file");
    store
        .commit(pending, ProfileFigures::default(), None)
        .map(|(meta, _)| meta)
}

#[test]
fn a_snapshot_never_evicts_pprof_profiles_and_one_that_cannot_fit_is_refused_before_it_is_taken() {
    let state = tempfile::tempdir().expect("temp dir");
    let mut store = ProfileStore::open(state.path(), store_config(50, 1000)).expect("open");
    let base = add(&mut store, 0, Trigger::Baseline, 300);
    let leak = add(&mut store, 0, Trigger::Leak, 300);
    // 400 bytes of room once every snapshot is gone: a 600-byte snapshot is refused
    // before the worker is asked for it, and nothing is removed.
    let refused = add_snapshot(&mut store, 0, Trigger::Leak, 600);
    assert!(
        matches!(refused, Err(StoreError::SnapshotTooLarge { room: 400, .. })),
        "{refused:?}"
    );
    let ids: Vec<u64> = store.list().iter().map(|m| m.id).collect();
    assert_eq!(ids, [base.id, leak.id]);
    // One that fits is kept; the next evicts it (not the profiles).
    let first = add_snapshot(&mut store, 0, Trigger::Manual, 350).expect("fits");
    let second = add_snapshot(&mut store, 0, Trigger::Manual, 380).expect("fits");
    let ids: Vec<u64> = store.list().iter().map(|m| m.id).collect();
    assert_eq!(ids, [base.id, leak.id, second.id]);
    assert!(!store.dir().join(&first.file).exists());
    // A snapshot bigger than announced (the worker's file past the estimate) that does
    // not fit is not kept, and still evicts no profile.
    let (pending, _cap) = store
        .begin_snapshot(0, None, 1, Trigger::Manual, 100)
        .expect("announced small");
    std::fs::write(&pending.out_path, vec![b'{'; 900]).expect("snapshot file");
    let refused = store.commit(pending.clone(), ProfileFigures::default(), None);
    assert!(
        matches!(refused, Err(StoreError::RetentionFull { .. })),
        "{refused:?}"
    );
    assert!(!pending.out_path.exists());
    let ids: Vec<u64> = store.list().iter().map(|m| m.id).collect();
    assert_eq!(ids, [base.id, leak.id]);
}

#[test]
fn a_snapshot_is_refused_when_the_disk_cannot_hold_it_above_min_free_disk() {
    let state = tempfile::tempdir().expect("temp dir");
    let store = ProfileStore::open(state.path(), store_config(10, 1 << 40)).expect("open");
    let free = store.free_disk().expect("statvfs");
    drop(store);
    let config = ProfilesConfig {
        min_free_disk: Size(free.saturating_sub(64 << 20)),
        ..store_config(10, 1 << 40)
    };
    let mut store = ProfileStore::open(state.path(), config).expect("reopen");
    // ~64 MiB of room on the disk: a 256 MiB snapshot (a 128 MiB heap) is refused.
    let refused = store.begin_snapshot(0, None, 1, Trigger::Manual, 256 << 20);
    assert!(
        matches!(refused, Err(StoreError::SnapshotTooLarge { .. })),
        "{refused:?}"
    );
    assert_eq!(store.skipped_for_disk(), 1);
}
