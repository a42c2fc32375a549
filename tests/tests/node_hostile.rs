//! Bad input from a Node worker: malformed frames, a frame of another version, a huge
//! profile file, a file that is not a profile and a snapshot that is not one are each
//! refused with a log line and counted; the agent keeps serving and never blocks.

mod node_support;

use heapwarden_tests::*;
use node_support::*;

#[test]
fn bad_evidence_from_a_node_worker_is_refused_logged_and_counted() {
    let _guard = TimeoutGuard::new("hostile node worker", SECS(120));
    let setup = start(
        r#"["node", "hostile.js"]"#,
        1,
        "probe = \"off\"\n[watchdog]\nwarmup = \"1h\"",
    );
    poll_until(SECS(30), "the hostile worker sampled", || {
        setup.workers()[0]["heap_allocated_bytes"].is_u64()
    });
    let logs = &setup.agent.logs;
    logs.wait_for(
        SECS(10),
        "the malformed frame",
        msg("The worker sent a malformed control message; ignoring it."),
    );

    let huge = setup.cli(&["dump", "0"]).unwrap_err();
    assert!(
        huge.contains("over the") && huge.contains("limit"),
        "{huge}"
    );
    let junk = setup.cli(&["dump", "0"]).unwrap_err();
    assert!(junk.contains("V8 profile"), "{junk}");
    let fake = setup.cli(&["dump", "0", "--snapshot"]).unwrap_err();
    assert!(fake.contains("not a V8 heap snapshot"), "{fake}");
    assert!(setup.profiles().is_empty(), "nothing bad was stored");
    let not_written = logs.matching(msg("A heap profile was not written."));
    assert_eq!(not_written.len(), 2, "{not_written:?}");
    assert!(not_written.iter().all(|r| r["outcome"] == "convert_failed"));
    logs.wait_for(
        SECS(5),
        "the snapshot refusal",
        msg("A heap snapshot was not written."),
    );

    let metrics = http_get(setup.admin, "/metrics", SECS(5)).unwrap().1;
    let counted = |needle: &str| {
        metrics
            .lines()
            .any(|l| l.contains(needle) && !l.ends_with(" 0"))
    };
    assert!(
        counted("heapwarden_heap_profiles_total{trigger=\"manual\",outcome=\"convert_failed\"}"),
        "{metrics}"
    );
    assert!(
        counted("heapwarden_heap_snapshots_total{trigger=\"manual\",outcome=\"dump_failed\"}"),
        "{metrics}"
    );
    // Still sampled, still answering, never blocked.
    assert_eq!(http_get(setup.admin, "/healthz", SECS(5)).unwrap().0, 200);
    assert_eq!(setup.workers()[0]["heap_allocated_bytes"], 1_000_000);
}
