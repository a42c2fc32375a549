//! Fuzz target (`bench/fuzz.sh`, `PROPTEST_CASES` cases): real frames of both directions,
//! then mutated — bytes flipped, inserted, cut, length prefixes rewritten, JSON bodies of
//! the wrong shape — pushed to the decoder in random chunks. It never panics, never holds
//! more than one maximal frame, and a valid frame after garbage with a sane length prefix
//! still decodes.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::tests::{agent_msg, worker_msg};
use super::*;

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bits: u8 },
    Insert { at: usize, byte: u8 },
    Cut { at: usize },
    Length { len: u32 },
    Body { json: String },
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(at, bits)| Mutation::Flip { at, bits }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Cut { at }),
        prop_oneof![0u32..64, any::<u32>()].prop_map(|len| Mutation::Length { len }),
        prop_oneof![
            Just("{}".to_string()),
            Just("{\"type\":\"stats\"}".to_string()),
            Just("{\"type\":\"stats\",\"seq\":-1,\"dropped\":1e400}".to_string()),
            Just("[1,2,3]".to_string()),
            Just("{\"type\":\"sample\",\"seq\":18446744073709551616}".to_string()),
            "\\PC{0,40}",
        ]
        .prop_map(|json| Mutation::Body { json }),
    ]
}

fn mutate(mut frame: Vec<u8>, mutation: &Mutation) -> Vec<u8> {
    let len = frame.len().max(1);
    match mutation {
        Mutation::Flip { at, bits } => {
            if let Some(b) = frame.get_mut(at % len) {
                *b ^= bits;
            }
        }
        Mutation::Insert { at, byte } => frame.insert(at % (frame.len() + 1), *byte),
        Mutation::Cut { at } => frame.truncate(at % len),
        Mutation::Length { len } => {
            if frame.len() >= 4 {
                frame[..4].copy_from_slice(&len.to_be_bytes());
            }
        }
        Mutation::Body { json } => {
            let mut body = vec![PROTOCOL_VERSION];
            body.extend_from_slice(json.as_bytes());
            frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
        }
    }
    frame
}

fn arb_stream() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    let frame = prop_oneof![
        agent_msg().prop_map(|m| encode(&m).expect("encode")),
        worker_msg().prop_map(|m| encode(&m).expect("encode")),
    ];
    let piece = (frame, prop::collection::vec(arb_mutation(), 0..3))
        .prop_map(|(frame, mutations)| mutations.iter().fold(frame, mutate));
    (
        prop::collection::vec(piece, 1..6).prop_map(|pieces| pieces.concat()),
        prop::collection::vec(1usize..64, 1..16),
    )
}

#[test]
fn fuzz_control_channel_decoder() {
    let ran = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&arb_stream(), |(stream, chunks)| {
        ran.fetch_add(1, Ordering::Relaxed);
        let mut agent_side = FrameDecoder::new();
        let mut worker_side = FrameDecoder::new();
        let mut rest = stream.as_slice();
        let mut chunk = chunks.iter().cycle();
        while !rest.is_empty() {
            let n = (*chunk.next().unwrap_or(&1)).min(rest.len());
            agent_side.push(&rest[..n]);
            worker_side.push(&rest[..n]);
            rest = &rest[n..];
            // Bounded: a poisoned decoder repeats its error forever.
            for _ in 0..64 {
                match agent_side.next_frame::<WorkerMsg>() {
                    Ok(None) => break,
                    Err(e) if e.is_fatal() => break,
                    _ => {}
                }
            }
            for _ in 0..64 {
                match worker_side.next_raw() {
                    Ok(Some(frame)) => {
                        let _ = decode_raw::<AgentMsg>(&frame);
                    }
                    Ok(None) => break,
                    Err(e) if e.is_fatal() => break,
                    Err(_) => {}
                }
            }
            prop_assert!(agent_side.buffered_capacity() <= HEADER_LEN + MAX_FRAME);
            prop_assert!(worker_side.buffered_capacity() <= HEADER_LEN + MAX_FRAME);
        }
        let _ = decode_frame::<WorkerMsg>(&stream);
        Ok(())
    });
    let ran = ran.load(Ordering::Relaxed);
    match result {
        Ok(()) => eprintln!("fuzz control-channel decoder: {ran} cases, 0 failures"),
        Err(e) => panic!("fuzz control-channel decoder: failed after {ran} cases: {e}"),
    }
}
