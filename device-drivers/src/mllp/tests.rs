use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

use super::*;

/// Feeds `chunks` one after another, draining events after each, then signals end of stream.
/// Returns the events and the largest number of bytes left buffered between reads.
fn run(codec: &mut MllpCodec, chunks: &[&[u8]]) -> (Vec<MllpEvent>, usize) {
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut peak = 0;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(ev) = codec.decode(&mut buf).expect("decode never fails") {
            events.push(ev);
        }
        peak = peak.max(buf.len());
    }
    while let Some(ev) = codec.decode_eof(&mut buf).expect("decode_eof never fails") {
        events.push(ev);
    }
    assert!(buf.is_empty(), "bytes left after end of stream");
    (events, peak)
}

fn decode_whole(max: usize, stream: &[u8]) -> Vec<MllpEvent> {
    run(&mut MllpCodec::new(max), &[stream]).0
}

fn frame(offset: u64, payload: &[u8]) -> MllpEvent {
    MllpEvent::Frame {
        offset,
        payload: Bytes::copy_from_slice(payload),
    }
}

fn garbage(offset: u64, bytes: &[u8]) -> MllpEvent {
    MllpEvent::Garbage {
        offset,
        len: bytes.len(),
        head: Bytes::copy_from_slice(&bytes[..bytes.len().min(256)]),
    }
}

/// Checks that events tile the stream: each starts where the previous ended.
fn assert_tiles(events: &[MllpEvent], stream_len: usize) {
    let mut next = 0u64;
    for ev in events {
        let (offset, len) = match ev {
            MllpEvent::Frame { offset, payload } => (*offset, payload.len() + 3),
            MllpEvent::Garbage { offset, len, .. } | MllpEvent::Oversized { offset, len, .. } => {
                (*offset, *len)
            }
        };
        assert_eq!(
            offset, next,
            "event {ev:?} does not start where the last ended"
        );
        next = offset + len as u64;
    }
    assert_eq!(next, stream_len as u64, "events do not cover the stream");
}

fn mixed_stream() -> Vec<u8> {
    let mut s = b"noise".to_vec(); // 0..5 garbage
    s.extend(encode_frame(b"MSH|A")); // 5..13
    s.extend(b"\r\n"); // 13..15 garbage between frames
    s.extend(encode_frame(b"MSH|B\x1cX")); // 15..25, 0x1C not followed by 0x0D is payload
    s.extend(b"\x0bMSH|partial"); // 25..37 restarted by the next 0x0B
    s.extend(encode_frame(b"MSH|C")); // 37..45
    s.extend(b"\x0bMSH|trunc"); // 45..55 truncated at end of stream
    s
}

fn mixed_expected() -> Vec<MllpEvent> {
    vec![
        garbage(0, b"noise"),
        frame(5, b"MSH|A"),
        garbage(13, b"\r\n"),
        frame(15, b"MSH|B\x1cX"),
        garbage(25, b"\x0bMSH|partial"),
        frame(37, b"MSH|C"),
        garbage(45, b"\x0bMSH|trunc"),
    ]
}

#[test]
fn decodes_mixed_stream_with_offsets() {
    let stream = mixed_stream();
    let events = decode_whole(64, &stream);
    assert_eq!(events, mixed_expected());
    assert_tiles(&events, stream.len());
}

#[test]
fn split_at_every_byte_position_gives_same_events() {
    let stream = mixed_stream();
    let expected = mixed_expected();
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        let (events, _) = run(&mut MllpCodec::new(64), &[a, b]);
        assert_eq!(events, expected, "split at {cut}");
    }
    let singles: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(run(&mut MllpCodec::new(64), &singles).0, expected);
}

#[test]
fn single_frame_without_garbage() {
    let events = decode_whole(DEFAULT_MAX_FRAME_BYTES, &encode_frame(b"MSH|^~\\&|X"));
    assert_eq!(events, vec![frame(0, b"MSH|^~\\&|X")]);
}

#[test]
fn empty_stream_and_empty_payload() {
    assert!(decode_whole(16, b"").is_empty());
    assert_eq!(decode_whole(16, &encode_frame(b"")), vec![frame(0, b"")]);
    assert_eq!(decode_whole(0, &encode_frame(b"")), vec![frame(0, b"")]);
}

#[test]
fn frame_of_exactly_max_bytes_is_accepted() {
    let payload = vec![b'x'; 100];
    assert_eq!(
        decode_whole(100, &encode_frame(&payload)),
        vec![frame(0, &payload)]
    );
    let longer = vec![b'x'; 101];
    assert!(matches!(
        decode_whole(100, &encode_frame(&longer))[..],
        [MllpEvent::Oversized {
            offset: 0,
            len: 104,
            ..
        }]
    ));
}

#[test]
fn oversized_frame_is_reported_once_and_next_frame_decodes() {
    let max = 1000;
    let big = vec![b'a'; 5000];
    let mut stream = b"xy".to_vec();
    stream.extend(encode_frame(&big)); // 2..5005
    stream.extend(encode_frame(b"MSH|ok")); // 5005..
    let expected_head = {
        let mut h = vec![0x0b];
        h.extend(vec![b'a'; 255]);
        Bytes::from(h)
    };
    let expected = vec![
        garbage(0, b"xy"),
        MllpEvent::Oversized {
            offset: 2,
            len: 5003,
            head: expected_head,
        },
        frame(5005, b"MSH|ok"),
    ];
    for chunk in [1, 7, 64, 999, 1000, 1001, 4096, stream.len()] {
        let chunks: Vec<&[u8]> = stream.chunks(chunk).collect();
        let (events, peak) = run(&mut MllpCodec::new(max), &chunks);
        assert_eq!(events, expected, "chunk size {chunk}");
        // Memory bound: never more than the limit (+ markers) plus the read that just arrived.
        assert!(peak <= max + 2, "chunk {chunk}: buffered {peak} bytes");
        assert_tiles(&events, stream.len());
    }
}

#[test]
fn memory_never_exceeds_the_limit_between_reads() {
    let max = 512;
    let mut stream = encode_frame(&vec![b'z'; 100_000]);
    stream.extend(encode_frame(b"fine"));
    let mut codec = MllpCodec::new(max);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for chunk in stream.chunks(100) {
        buf.extend_from_slice(chunk);
        while let Some(ev) = codec.decode(&mut buf).unwrap() {
            events.push(ev);
        }
        assert!(buf.len() <= max + 2, "buffered {} bytes", buf.len());
    }
    assert_eq!(events.len(), 2);
    assert!(matches!(
        events[0],
        MllpEvent::Oversized { len: 100_003, .. }
    ));
    assert_eq!(events[1], frame(100_003, b"fine"));
}

#[test]
fn oversized_frame_cut_by_new_start_or_eof() {
    let mut stream = vec![0x0b];
    stream.extend(vec![b'q'; 50]);
    stream.extend(encode_frame(b"ok"));
    stream.push(0x0b);
    stream.extend(vec![b'r'; 40]);
    let events = decode_whole(10, &stream);
    assert!(matches!(
        events[..],
        [
            MllpEvent::Oversized {
                offset: 0,
                len: 51,
                ..
            },
            MllpEvent::Frame { offset: 51, .. },
            MllpEvent::Oversized {
                offset: 56,
                len: 41,
                ..
            }
        ]
    ));
    assert_tiles(&events, stream.len());
}

#[test]
fn oversized_end_marker_split_across_reads() {
    let mut stream = encode_frame(&[b'a'; 30]);
    stream.extend(encode_frame(b"b"));
    for cut in 0..=stream.len() {
        let (a, b) = stream.split_at(cut);
        let (events, _) = run(&mut MllpCodec::new(8), &[a, b]);
        assert!(
            matches!(
                events[..],
                [
                    MllpEvent::Oversized {
                        offset: 0,
                        len: 33,
                        ..
                    },
                    MllpEvent::Frame { offset: 33, .. }
                ]
            ),
            "cut {cut}: {events:?}"
        );
    }
}

#[test]
fn long_garbage_runs_are_reported_in_bounded_pieces() {
    let noise = vec![b'n'; GARBAGE_REPORT_BYTES * 2 + 10];
    let mut stream = noise.clone();
    stream.extend(encode_frame(b"x"));
    for chunk in [1, 100, 5000, stream.len()] {
        let chunks: Vec<&[u8]> = stream.chunks(chunk).collect();
        let (events, peak) = run(&mut MllpCodec::new(64), &chunks);
        let g = GARBAGE_REPORT_BYTES;
        assert_eq!(
            events,
            vec![
                garbage(0, &noise[..g]),
                garbage(g as u64, &noise[g..2 * g]),
                garbage(2 * g as u64, &noise[2 * g..]),
                frame(noise.len() as u64, b"x"),
            ]
        );
        assert!(peak <= 66, "garbage must not be buffered, peak {peak}");
    }
}

#[test]
fn encoder_wraps_and_refuses_framing_bytes() {
    let mut codec = MllpCodec::default();
    let mut dst = BytesMut::new();
    codec.encode(&b"MSA|AA|1"[..], &mut dst).unwrap();
    assert_eq!(&dst[..], &encode_frame(b"MSA|AA|1")[..]);
    assert_eq!(&dst[..], b"\x0bMSA|AA|1\x1c\x0d");
    let err = codec.encode(&b"bad\x0b"[..], &mut dst).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("0x0B"));
    assert!(codec.encode(&b"bad\x1c"[..], &mut dst).is_err());
}

fn payload_strategy() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no framing bytes", |b| *b != 0x0b && *b != 0x1c),
        0..200,
    )
}

/// Splits `stream` at the given (sorted, deduplicated) cut points.
fn chunked<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut last = 0;
    for p in points {
        out.push(&stream[last..p]);
        last = p;
    }
    out.push(&stream[last..]);
    out
}

#[derive(Debug, Clone)]
enum Item {
    Frame(Vec<u8>),
    Garbage(Vec<u8>),
}

/// What the decoder must report for a sequence of items (garbage never contains 0x0B).
fn model(items: &[Item], max: usize) -> Vec<MllpEvent> {
    let mut events = Vec::new();
    let mut offset = 0u64;
    let mut run: Vec<u8> = Vec::new();
    let mut run_start = 0u64;
    let flush = |run: &mut Vec<u8>, run_start: u64, events: &mut Vec<MllpEvent>| {
        for (i, piece) in run.chunks(GARBAGE_REPORT_BYTES).enumerate() {
            events.push(garbage(
                run_start + (i * GARBAGE_REPORT_BYTES) as u64,
                piece,
            ));
        }
        run.clear();
    };
    for item in items {
        match item {
            Item::Garbage(g) => {
                if run.is_empty() {
                    run_start = offset;
                }
                run.extend_from_slice(g);
                offset += g.len() as u64;
            }
            Item::Frame(p) => {
                flush(&mut run, run_start, &mut events);
                if p.len() <= max {
                    events.push(frame(offset, p));
                } else {
                    let framed = encode_frame(p);
                    events.push(MllpEvent::Oversized {
                        offset,
                        len: framed.len(),
                        head: Bytes::copy_from_slice(&framed[..256.min(framed.len())]),
                    });
                }
                offset += p.len() as u64 + 3;
            }
        }
    }
    flush(&mut run, run_start, &mut events);
    events
}

fn item_strategy() -> impl Strategy<Value = Item> {
    prop_oneof![
        3 => payload_strategy().prop_map(Item::Frame),
        1 => proptest::collection::vec(any::<u8>().prop_filter("no start byte", |b| *b != 0x0b), 1..40)
            .prop_map(Item::Garbage),
    ]
}

proptest! {
    #[test]
    fn payloads_survive_any_chunking(
        payloads in proptest::collection::vec(payload_strategy(), 0..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
    ) {
        let mut stream = Vec::new();
        let mut codec = MllpCodec::default();
        for p in &payloads {
            let mut dst = BytesMut::new();
            codec.encode(&p[..], &mut dst).unwrap();
            stream.extend_from_slice(&dst);
        }
        let (events, _) = run(&mut MllpCodec::default(), &chunked(&stream, &cuts));
        let decoded: Vec<Vec<u8>> = events
            .iter()
            .map(|e| match e {
                MllpEvent::Frame { payload, .. } => payload.to_vec(),
                other => panic!("unexpected event {other:?}"),
            })
            .collect();
        prop_assert_eq!(decoded, payloads);
        assert_tiles(&events, stream.len());
    }

    #[test]
    fn frames_and_garbage_match_the_model(
        items in proptest::collection::vec(item_strategy(), 0..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
        max in 0usize..150,
    ) {
        let mut stream = Vec::new();
        for item in &items {
            match item {
                Item::Frame(p) => stream.extend(encode_frame(p)),
                Item::Garbage(g) => stream.extend_from_slice(g),
            }
        }
        let (events, peak) = run(&mut MllpCodec::new(max), &chunked(&stream, &cuts));
        prop_assert_eq!(&events, &model(&items, max));
        assert_tiles(&events, stream.len());
        prop_assert!(peak <= max + 2);
    }

    #[test]
    fn arbitrary_bytes_are_accounted_for(
        stream in proptest::collection::vec(any::<u8>(), 0..600),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
        max in 0usize..64,
    ) {
        let whole = decode_whole(max, &stream);
        let (events, _) = run(&mut MllpCodec::new(max), &chunked(&stream, &cuts));
        prop_assert_eq!(&events, &whole);
        assert_tiles(&events, stream.len());
    }
}

#[tokio::test]
async fn works_through_framed_read_and_write() {
    use futures::{SinkExt, StreamExt};
    use tokio_util::codec::{FramedRead, FramedWrite};

    let mut wire = Vec::new();
    {
        let mut writer = FramedWrite::new(&mut wire, MllpCodec::default());
        writer.send(&b"MSH|one"[..]).await.unwrap();
        writer.send(&b"MSH|two"[..]).await.unwrap();
    }
    wire.extend_from_slice(b"\x0bMSH|cut");
    let events: Vec<MllpEvent> = FramedRead::new(&wire[..], MllpCodec::default())
        .map(|r| r.expect("no io error"))
        .collect()
        .await;
    assert_eq!(
        events,
        vec![
            frame(0, b"MSH|one"),
            frame(10, b"MSH|two"),
            garbage(20, b"\x0bMSH|cut"),
        ]
    );
}
