//! The written protocol (`probes/protocol/frames.json`, described in
//! `docs/src/workers/protocol.md`) against these types: every example body decodes, survives
//! an encode/decode roundtrip as the same message, and every invalid body is refused.
//! The Node probe's test decodes the same file, so both probes answer to one description.

use serde_json::Value;

use super::*;

const FIXTURE: &str = include_str!("../../frames.json");

fn bodies(key: &str) -> Vec<Value> {
    let all: Value = serde_json::from_str(FIXTURE).expect("frames.json is JSON");
    all[key].as_array().expect(key).clone()
}

fn frame_of(body: &Value) -> Vec<u8> {
    let json = serde_json::to_vec(body).unwrap();
    let mut frame = ((json.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(PROTOCOL_VERSION);
    frame.extend_from_slice(&json);
    frame
}

fn roundtrips<T>(key: &str)
where
    T: serde::de::DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let examples = bodies(key);
    assert!(!examples.is_empty(), "{key} has examples");
    for body in examples {
        let (msg, used) = decode_frame::<T>(&frame_of(&body))
            .unwrap_or_else(|e| panic!("{key}: {body} does not decode: {e}"))
            .expect("a whole frame");
        assert_eq!(used, frame_of(&body).len());
        let again = encode(&msg).unwrap();
        let (back, _) = decode_frame::<T>(&again).unwrap().unwrap();
        assert_eq!(back, msg, "{key}: {body}");
    }
}

#[test]
fn every_example_frame_decodes_and_roundtrips() {
    roundtrips::<WorkerMsg>("worker_to_agent");
    roundtrips::<AgentMsg>("agent_to_worker");
    roundtrips::<WorkerMsg>("legacy_worker_to_agent");
    roundtrips::<AgentMsg>("legacy_agent_to_worker");
}

#[test]
fn optional_fields_default_for_version_one_probes() {
    let legacy = bodies("legacy_worker_to_agent");
    let hello: WorkerMsg = serde_json::from_value(legacy[0].clone()).unwrap();
    assert!(matches!(
        hello,
        WorkerMsg::Hello {
            runtime: Runtime::Rust,
            ..
        }
    ));
    let WorkerMsg::Hello { push, .. } = hello else {
        unreachable!()
    };
    assert!(
        !push,
        "a probe that does not say push is asked, never told to report"
    );
    let written: WorkerMsg = serde_json::from_value(legacy[2].clone()).unwrap();
    assert!(matches!(
        written,
        WorkerMsg::ProfileWritten {
            format: DumpFormat::Jemalloc,
            ..
        }
    ));
    let dump: AgentMsg =
        serde_json::from_value(bodies("legacy_agent_to_worker")[0].clone()).unwrap();
    assert!(matches!(
        dump,
        AgentMsg::Dump {
            kind: DumpKind::Profile,
            ..
        }
    ));
}

#[test]
fn node_stats_carry_no_jemalloc_figures() {
    let node_stats = bodies("worker_to_agent")
        .into_iter()
        .find(|b| b["type"] == "stats" && b["seq"] == 7)
        .expect("the Node stats example");
    let WorkerMsg::Stats {
        heap: Some(heap),
        external_bytes,
        array_buffers_bytes,
        sampling_restarts,
        ..
    } = serde_json::from_value(node_stats).unwrap()
    else {
        panic!("stats with heap");
    };
    assert_eq!((heap.allocated, heap.active), (52_428_800, 62_914_560));
    assert_eq!(heap.resident, None, "absent, not faked as 0");
    assert_eq!(external_bytes, Some(1_048_576));
    assert_eq!(array_buffers_bytes, Some(524_288));
    assert_eq!(sampling_restarts, Some(1));
}

#[test]
fn invalid_bodies_are_malformed_frames_not_panics() {
    for body in bodies("invalid_bodies") {
        let text = body.as_str().unwrap();
        let mut frame = ((text.len() + 1) as u32).to_be_bytes().to_vec();
        frame.push(PROTOCOL_VERSION);
        frame.extend_from_slice(text.as_bytes());
        assert!(
            matches!(
                decode_frame::<WorkerMsg>(&frame),
                Err(FrameError::Malformed(_))
            ),
            "{text}"
        );
    }
}

#[test]
fn pushing_probes_say_so_and_their_pushed_stats_carry_seq_zero() {
    let examples = bodies("worker_to_agent");
    let pushers: Vec<WorkerMsg> = examples
        .iter()
        .filter(|b| b["push"] == true)
        .map(|b| serde_json::from_value(b.clone()).unwrap())
        .collect();
    assert!(matches!(pushers[..], [WorkerMsg::Hello { push: true, .. }]));
    let pushed = examples
        .iter()
        .find(|b| b["type"] == "stats" && b["seq"] == 0)
        .expect("a pushed stats example");
    let WorkerMsg::Stats {
        seq, heap, metrics, ..
    } = serde_json::from_value(pushed.clone()).unwrap()
    else {
        panic!("stats");
    };
    assert_eq!(seq, PUSHED_SEQ);
    assert_eq!(heap.map(|h| h.allocated), Some(2000));
    assert_eq!(metrics, None, "a push never carries metrics");
    let reports: Vec<AgentMsg> = bodies("agent_to_worker")
        .into_iter()
        .filter(|b| b["type"] == "report")
        .map(|b| serde_json::from_value(b).unwrap())
        .collect();
    assert_eq!(
        reports,
        [
            AgentMsg::Report {
                every_ms: 1000,
                first_ms: 430,
                at_us: Some(98_765_430_000)
            },
            AgentMsg::Report {
                every_ms: 0,
                first_ms: 0,
                at_us: None
            }
        ]
    );
    let legacy: AgentMsg =
        serde_json::from_value(bodies("legacy_agent_to_worker")[1].clone()).unwrap();
    assert_eq!(
        legacy,
        AgentMsg::Report {
            every_ms: 1000,
            first_ms: 430,
            at_us: None
        },
        "an older agent's report has no clock time: the probe counts first_ms"
    );
}
