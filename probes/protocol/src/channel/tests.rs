//! Property tests of the framing: roundtrips, arbitrary input, truncation, oversize.

use proptest::prelude::*;

use super::*;
use crate::HeapStats;

fn heap_stats() -> impl Strategy<Value = HeapStats> {
    any::<[u64; 6]>().prop_map(|v| HeapStats {
        allocated: v[0],
        active: v[1],
        resident: Some(v[2]),
        mapped: Some(v[3]),
        retained: (v[4] % 2 == 0).then_some(v[4]),
        metadata: Some(v[5]),
    })
}

fn runtime() -> impl Strategy<Value = Runtime> {
    prop_oneof![
        Just(Runtime::Rust),
        Just(Runtime::Node),
        Just(Runtime::Native)
    ]
}

/// Lags in whole microseconds, as the probe reports them. serde_json's default float
/// parser may be one ulp off for 16-17 digit numbers, which is not what these tests are
/// about; values with few digits roundtrip exactly.
fn lag() -> impl Strategy<Value = Option<f64>> {
    proptest::option::of((0u32..1_000_000_000).prop_map(|micros| f64::from(micros) / 1e6))
}

pub(super) fn worker_msg() -> impl Strategy<Value = WorkerMsg> {
    prop_oneof![
        (any::<u32>(), any::<String>(), runtime(), any::<bool>()).prop_map(
            |(pid, probe_version, runtime, push)| WorkerMsg::Hello {
                pid,
                probe_version,
                runtime,
                push,
            }
        ),
        Just(WorkerMsg::Ready),
        (
            any::<u64>(),
            proptest::option::of(heap_stats()),
            lag(),
            any::<u64>(),
            proptest::option::of(any::<String>()),
            proptest::option::of(any::<u64>()),
        )
            .prop_map(
                |(seq, heap, runtime_lag_seconds, dropped, metrics, external)| {
                    WorkerMsg::Stats {
                        seq,
                        heap,
                        runtime_lag_seconds,
                        dropped,
                        metrics,
                        external_bytes: external,
                        array_buffers_bytes: external.map(|e| e / 2),
                        sampling_restarts: external.map(|e| e % 3),
                    }
                }
            ),
        (
            any::<u64>(),
            any::<String>(),
            proptest::option::of(any::<String>()),
            any::<u64>()
        )
            .prop_map(|(seq, path, error, micros)| WorkerMsg::ProfileWritten {
                seq,
                path,
                error,
                micros,
                format: [
                    DumpFormat::Jemalloc,
                    DumpFormat::V8Sampling,
                    DumpFormat::V8Snapshot
                ][(micros % 3) as usize],
            }),
        (any::<u64>(), any::<String>(), any::<i64>())
            .prop_map(|(seq, key, version)| WorkerMsg::Invalidate { seq, key, version }),
        any::<u64>().prop_map(|seq| WorkerMsg::Invalidated { seq }),
        any::<u64>().prop_map(|seq| WorkerMsg::Pong { seq }),
    ]
}

pub(super) fn agent_msg() -> impl Strategy<Value = AgentMsg> {
    prop_oneof![
        (any::<u64>(), any::<bool>()).prop_map(|(seq, metrics)| AgentMsg::Sample { seq, metrics }),
        (any::<u64>(), any::<String>(), any::<bool>()).prop_map(|(seq, path, snapshot)| {
            AgentMsg::Dump {
                seq,
                path,
                kind: if snapshot {
                    DumpKind::Snapshot
                } else {
                    DumpKind::Profile
                },
                max_bytes: None,
            }
        }),
        any::<u64>().prop_map(|deadline_ms| AgentMsg::Drain { deadline_ms }),
        (any::<u64>(), any::<String>(), any::<i64>())
            .prop_map(|(seq, key, version)| AgentMsg::Invalidate { seq, key, version }),
        any::<u64>().prop_map(|seq| AgentMsg::InvalidateDone { seq }),
        any::<u64>().prop_map(|seq| AgentMsg::Ping { seq }),
        (any::<u64>(), any::<u64>(), any::<Option<u64>>()).prop_map(
            |(every_ms, first_ms, at_us)| AgentMsg::Report {
                every_ms,
                first_ms,
                at_us
            }
        ),
    ]
}

/// Drains a decoder, collecting messages and errors until it needs more bytes.
fn drain_decoder(decoder: &mut FrameDecoder) -> Vec<Result<AgentMsg, FrameError>> {
    let mut out = Vec::new();
    // Each iteration consumes at least a 4-byte header, so this bound is never reached
    // by a correct decoder; it turns a livelock into a failure instead of a hang.
    for _ in 0..100_000 {
        match decoder.next_frame::<AgentMsg>() {
            Ok(None) => return out,
            Ok(Some(msg)) => out.push(Ok(msg)),
            Err(error) => {
                let fatal = error.is_fatal();
                out.push(Err(error));
                if fatal {
                    return out;
                }
            }
        }
    }
    panic!("decoder made no progress");
}

proptest! {
    #[test]
    fn worker_messages_roundtrip(msg in worker_msg()) {
        let frame = encode(&msg).unwrap();
        let (decoded, used) = decode_frame::<WorkerMsg>(&frame).unwrap().unwrap();
        prop_assert_eq!(decoded, msg);
        prop_assert_eq!(used, frame.len());
    }

    #[test]
    fn agent_messages_roundtrip_through_decoder(msgs in proptest::collection::vec(agent_msg(), 0..8)) {
        let mut decoder = FrameDecoder::new();
        for msg in &msgs {
            decoder.push(&encode(msg).unwrap());
        }
        let decoded: Vec<AgentMsg> =
            drain_decoder(&mut decoder).into_iter().map(|r| r.unwrap()).collect();
        prop_assert_eq!(decoded, msgs);
        prop_assert!(decoder.finish().is_ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_overallocate(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode_frame::<AgentMsg>(&bytes);
        let _ = decode_frame::<WorkerMsg>(&bytes);
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        let _ = drain_decoder(&mut decoder);
        prop_assert!(decoder.buffered_capacity() <= HEADER_LEN + MAX_FRAME);
    }

    #[test]
    fn truncated_frames_wait_until_complete(msg in agent_msg()) {
        let frame = encode(&msg).unwrap();
        for cut in 0..frame.len() {
            prop_assert_eq!(decode_frame::<AgentMsg>(&frame[..cut]).unwrap(), None);
        }
        let mut decoder = FrameDecoder::new();
        decoder.push(&frame[..frame.len() - 1]);
        prop_assert_eq!(decoder.next_frame::<AgentMsg>().unwrap(), None);
        let truncated = matches!(decoder.finish(), Err(FrameError::Truncated { .. }));
        prop_assert!(truncated);
        decoder.push(&frame[frame.len() - 1..]);
        prop_assert_eq!(decoder.next_frame::<AgentMsg>().unwrap(), Some(msg));
    }

    #[test]
    fn oversized_length_rejected_before_allocating(
        len in (MAX_FRAME as u32 + 1)..=u32::MAX,
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&tail);
        prop_assert_eq!(
            decode_frame::<AgentMsg>(&bytes).unwrap_err(),
            FrameError::Oversized { len: len as usize }
        );
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        prop_assert_eq!(
            decoder.next_frame::<AgentMsg>().unwrap_err(),
            FrameError::Oversized { len: len as usize }
        );
        // Poisoned: nothing more is buffered, and the error sticks.
        decoder.push(&[0u8; 1024]);
        prop_assert_eq!(decoder.buffered_capacity(), 0);
        prop_assert!(decoder.next_frame::<AgentMsg>().unwrap_err().is_fatal());
    }

    #[test]
    fn byte_by_byte_equals_whole(
        msgs in proptest::collection::vec(agent_msg(), 1..6),
        garbage in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut stream = Vec::new();
        for msg in &msgs {
            stream.extend_from_slice(&encode(msg).unwrap());
        }
        // A well-delimited malformed frame in the middle must not desynchronise either way.
        let mut bad = ((garbage.len() + 1) as u32).to_be_bytes().to_vec();
        bad.push(PROTOCOL_VERSION);
        bad.extend_from_slice(&garbage);
        stream.splice(0..0, bad);

        let mut whole = FrameDecoder::new();
        whole.push(&stream);
        let whole_out = drain_decoder(&mut whole);

        let mut single = FrameDecoder::new();
        let mut single_out = Vec::new();
        for byte in &stream {
            single.push(std::slice::from_ref(byte));
            single_out.extend(drain_decoder(&mut single));
        }
        prop_assert_eq!(&single_out, &whole_out);
        let decoded: Vec<AgentMsg> = whole_out.into_iter().filter_map(Result::ok).collect();
        prop_assert_eq!(decoded, msgs);
    }
}

#[test]
fn wrong_version_and_empty_frames_are_skipped() {
    let ping = encode(&AgentMsg::Ping { seq: 3 }).unwrap();
    let mut stream = vec![0, 0, 0, 0];
    let mut old = ping.clone();
    old[HEADER_LEN] = 9;
    stream.extend_from_slice(&old);
    stream.extend_from_slice(&ping);
    let mut decoder = FrameDecoder::new();
    decoder.push(&stream);
    let out = drain_decoder(&mut decoder);
    assert_eq!(
        out,
        vec![
            Err(FrameError::Empty),
            Err(FrameError::BadVersion { got: 9 }),
            Ok(AgentMsg::Ping { seq: 3 })
        ]
    );
}

#[test]
fn wire_format_is_length_version_json() {
    let frame = encode(&AgentMsg::Ping { seq: 7 }).unwrap();
    let body = br#"{"type":"ping","seq":7}"#;
    assert_eq!(&frame[..4], &((body.len() + 1) as u32).to_be_bytes());
    assert_eq!(frame[4], PROTOCOL_VERSION);
    assert_eq!(&frame[5..], body);
}

#[test]
fn encoding_a_message_over_the_limit_fails() {
    let msg = WorkerMsg::Stats {
        seq: 1,
        heap: None,
        runtime_lag_seconds: None,
        dropped: 0,
        metrics: Some("x".repeat(MAX_FRAME)),
        external_bytes: None,
        array_buffers_bytes: None,
        sampling_restarts: None,
    };
    assert!(matches!(encode(&msg), Err(FrameError::Oversized { .. })));
}
