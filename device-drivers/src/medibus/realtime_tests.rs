//! Realtime data: decoder, configuration payloads, the session's set-up and the curves.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use super::*;

const LOW: SampleByteOrder = SampleByteOrder::LowFirst;

fn rt_frames(bytes: &[u8]) -> Vec<RealtimeFrame> {
    let mut d = RealtimeDecoder::new(LOW);
    for (i, &b) in bytes.iter().enumerate() {
        d.push(b, i as u64);
    }
    d.finish();
    d.take_frames()
}

/// Slow events and realtime frames of `bytes` fed in chunks of `chunk`.
fn decode_both(
    bytes: &[u8],
    chunk: usize,
    realtime: bool,
) -> (Vec<MedibusEvent>, Vec<RealtimeFrame>) {
    let mut codec = MedibusCodec::default();
    if realtime {
        codec = codec.with_realtime(LOW);
    }
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut frames = Vec::new();
    for part in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(part);
        while let Some(e) = codec.decode(&mut buf).unwrap() {
            events.push(e);
        }
        frames.extend(codec.take_realtime());
    }
    while let Some(e) = codec.decode_eof(&mut buf).unwrap() {
        events.push(e);
    }
    frames.extend(codec.take_realtime());
    (events, frames)
}

#[test]
fn sample_bytes_carry_twelve_bits_in_either_order() {
    // OpenICE and VSCaptureDrgVent: first byte = low six bits.
    assert_eq!(LOW.bin(0x81, 0x82), 1 | (2 << 6));
    // The OpenICE fork's test: 0x81 0x82 is 66 when the first byte is the high six bits.
    assert_eq!(SampleByteOrder::HighFirst.bin(0x81, 0x82), 66);
    for order in [LOW, SampleByteOrder::HighFirst] {
        for bin in 0..4096u16 {
            let [a, b] = order.bytes(bin);
            assert!((0x80..=0xBF).contains(&a) && (0x80..=0xBF).contains(&b));
            assert_eq!(order.bin(a, b), bin);
        }
    }
}

#[test]
fn frames_with_streams_above_four_breath_phase_and_enable() {
    let mut bytes = encode_frame(0b0111, &[1, 2, 4095], None, LOW);
    bytes.extend(encode_frame(
        0b1_0001_0001,
        &[10, 50, 90],
        Some(BreathPhase::Expiration),
        LOW,
    ));
    bytes.extend(encode_enable(0b0000_0000_0101));
    let frames = rt_frames(&bytes);
    assert_eq!(frames.len(), 3);
    assert_eq!(
        frames[0].samples().collect::<Vec<_>>(),
        [(1, 1), (2, 2), (3, 4095)]
    );
    assert_eq!(frames[0].offset, 0);
    assert_eq!(
        frames[1].samples().collect::<Vec<_>>(),
        [(1, 10), (5, 50), (9, 90)]
    );
    assert_eq!(frames[1].breath, Some(BreathPhase::Expiration));
    assert_eq!(frames[2].bins, Vec::<u16>::new());
    assert_eq!(frames[2].fault, None);
    assert_eq!(frames[2].enabled_streams(), Some((0x0FFF, 0b0101)));
    // VSCaptureDrgVent's one-group form: D0 C1 CF C0 C0 enables streams 1-4 only.
    let vsc = rt_frames(&[0xD0, 0xC1, 0xCF, 0xC0, 0xC0]);
    assert_eq!(vsc[0].enabled_streams(), Some((0x000F, 0x000F)));
}

type FaultCheck = fn(&RealtimeFault) -> bool;

#[test]
fn bad_frames_carry_a_fault_and_no_samples() {
    let good = encode_frame(0b11, &[7, 8], None, LOW);
    let cases: Vec<(Vec<u8>, FaultCheck)> = vec![
        (encode_corrupt_frame(0b11), |f| {
            *f == RealtimeFault::DeviceCorrupt
        }),
        // One sample where two are announced.
        (good[..3].to_vec(), |f| {
            matches!(
                f,
                RealtimeFault::SampleCount {
                    expected: 2,
                    found: 1
                }
            )
        }),
        // A stray byte with no known meaning.
        ([&good[..3], &[0xE5], &good[3..]].concat(), |f| {
            matches!(f, RealtimeFault::UnknownByte { byte: 0xE5, .. })
        }),
        // Half a sample, then a sync command.
        ([&good[..4], &[0xC6, 0xC0]].concat(), |f| {
            matches!(f, RealtimeFault::HalfSample { .. })
        }),
        // A sync command whose argument is a sample byte.
        ([&good[..1], &[0xC4], &good[1..]].concat(), |f| {
            matches!(f, RealtimeFault::MissingArgument { command: 0xC4, .. })
        }),
        // Streams 5-8 named after samples began.
        ([&good[..3], &[0xC4, 0xC1], &good[3..]].concat(), |f| {
            matches!(f, RealtimeFault::LateStreams { .. })
        }),
    ];
    for (bad, expected) in cases {
        // The bad frame, then a good one: the decoder resynchronises on the sync byte.
        let frames = rt_frames(&[bad.as_slice(), &good].concat());
        assert_eq!(frames.len(), 2, "{bad:02X?}");
        let fault = frames[0].fault.as_ref().expect("a fault");
        assert!(expected(fault), "{bad:02X?}: {fault:?}");
        assert!(frames[0].bins.is_empty());
        assert_eq!(frames[1].samples().collect::<Vec<_>>(), [(1, 7), (2, 8)]);
    }
    // Cut inside a sample at the end of the stream.
    let frames = rt_frames(&good[..4]);
    assert_eq!(frames[0].fault, Some(RealtimeFault::Truncated));
    // Realtime bytes before any sync byte belong to no frame.
    let mut d = RealtimeDecoder::new(LOW);
    for b in [0x81, 0x82, 0xC6] {
        d.push(b, 0);
    }
    assert_eq!(d.stats().orphan_bytes, 3);
}

#[test]
fn gaps_stay_gaps_in_the_curves() {
    let spec = |stream, code| StreamSpec {
        stream,
        code,
        interval_us: 8000,
        scale: RealtimeScale {
            min: -20.0,
            max: 80.0,
            maxbin: 4095,
        },
    };
    let mut asm = WaveformAssembler::new(&[spec(1, 0x00), spec(2, 0x01)], 4);
    let mut bytes = Vec::new();
    bytes.extend(encode_frame(0b11, &[100, 200], None, LOW));
    bytes.extend(encode_corrupt_frame(0b11));
    bytes.extend(encode_frame(0b111, &[101, 201, 999], None, LOW));
    bytes.extend(encode_frame(
        0b11,
        &[102, 202],
        Some(BreathPhase::Inspiration),
        LOW,
    ));
    for f in rt_frames(&bytes) {
        asm.push(&f);
    }
    let runs = asm.take_runs();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].samples, [Some(100), None, Some(101), Some(102)]);
    assert_eq!(runs[1].samples, [Some(200), None, Some(201), Some(202)]);
    assert_eq!(runs[0].breaths, [(3, BreathPhase::Inspiration)]);
    assert_eq!(runs[0].gaps(), 1);
    assert_eq!(
        asm.stats().unmapped_samples,
        1,
        "stream 3 was not configured"
    );
    assert!((runs[0].scale.value(4095) - 80.0).abs() < 1e-9);
    assert!((runs[0].scale.value(0) + 20.0).abs() < 1e-9);
}

#[test]
fn realtime_configuration_round_trips_and_refuses_bad_records() {
    let data = b"00    8000  -20   80FFF01    8000 -150  150FFF";
    let configs = parse_realtime_config(data, IntervalUnit::Microseconds).unwrap();
    assert_eq!(configs.len(), 2);
    assert_eq!(configs[0].code, 0x00);
    assert_eq!(configs[0].interval_us, 8000);
    assert_eq!(configs[0].scale.min, -20.0);
    assert_eq!(configs[0].scale.max, 80.0);
    assert_eq!(configs[0].scale.maxbin, 4095);
    assert_eq!(configs[1].scale.min, -150.0);
    assert_eq!(encode_realtime_config(&configs), data.to_vec());
    let ms = parse_realtime_config(&data[..23], IntervalUnit::Milliseconds).unwrap();
    assert_eq!(ms[0].interval_us, 8_000_000);
    // OpenICE drops spaces inside a number: "-  80".
    let spaced = parse_realtime_config(b"03   10000-  80  2.5FFF", IntervalUnit::Microseconds);
    assert_eq!(spaced.unwrap()[0].scale.min, -80.0);
    for bad in [
        &b"00    8000  -20   80000"[..], // max-bin 0
        b"00    8000  -20   80XYZ",      // max-bin not hex
        b"00    abcd  -20   80FFF",      // interval not a number
        b"00       0  -20   80FFF",      // interval 0
        b"00    8000   80   80FFF",      // max = min
        b"00    8000  -20   80FF",       // cut short
        b"G0    8000  -20   80FFF",      // code not hex
    ] {
        assert!(
            parse_realtime_config(bad, IntervalUnit::Microseconds).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    let requests = [
        RealtimeRequest {
            code: 0x00,
            multiplier: 1,
        },
        RealtimeRequest {
            code: 0x1C,
            multiplier: 2,
        },
    ];
    let args = encode_configure_realtime(&requests);
    assert_eq!(args, b"00011C02");
    assert_eq!(parse_configure_realtime(&args).unwrap(), requests);
    assert!(parse_configure_realtime(b"000").is_err());
}

/// A gateway session and a device, wired through real codecs on both sides.
struct RtLink {
    session: MedibusSession,
    device: MedibusDevice,
    host_codec: MedibusCodec,
    device_codec: MedibusCodec,
    t0: Instant,
}

fn offer() -> Vec<RealtimeConfig> {
    let cfg = |code, min, max| RealtimeConfig {
        code,
        interval_us: 8000,
        scale: RealtimeScale {
            min,
            max,
            maxbin: 4095,
        },
    };
    vec![
        cfg(0x00, -20.0, 80.0),
        cfg(0x01, -150.0, 150.0),
        cfg(0x02, 0.0, 100.0),
        cfg(0x03, 0.0, 2000.0),
    ]
}

impl RtLink {
    fn new() -> Self {
        let mut device = MedibusDevice::new(DeviceIdentity {
            device_id: "0161".into(),
            name: "Evita".into(),
            revision: "04.03".into(),
        });
        device.measured = vec![MedibusValue::number(0x7D, 22.0)];
        device.realtime_offer = offer();
        let mut settings = RealtimeSettings::ventilator();
        settings.run_len = 4;
        Self {
            session: MedibusSession::with_realtime(SessionTimings::default(), settings),
            device,
            host_codec: MedibusCodec::default().with_realtime(LOW),
            device_codec: MedibusCodec::default().with_realtime(LOW),
            t0: Instant::now(),
        }
    }

    /// Session actions' bytes to the device, the device's answers (and `extra` line bytes)
    /// back, until quiet. Returns every action.
    fn pump(&mut self, mut actions: Vec<Action>, extra: &[u8], ms: u64) -> Vec<Action> {
        let now = self.t0 + Duration::from_millis(ms);
        let mut all = Vec::new();
        let mut to_host = extra.to_vec();
        loop {
            let mut to_device = Vec::new();
            for a in &actions {
                if let Action::Send(bytes) = a {
                    to_device.extend_from_slice(bytes);
                }
            }
            all.append(&mut actions);
            let mut buf = BytesMut::from(&to_device[..]);
            while let Some(e) = self.device_codec.decode(&mut buf).unwrap() {
                if let MedibusEvent::Frame(f) = e {
                    for answer in self.device.on_frame(&f) {
                        to_host.extend(answer);
                    }
                }
            }
            for f in self.device_codec.take_realtime() {
                self.device.on_realtime_frame(&f);
            }
            if to_host.is_empty() {
                return all;
            }
            let mut buf = BytesMut::from(&std::mem::take(&mut to_host)[..]);
            while let Some(e) = self.host_codec.decode(&mut buf).unwrap() {
                actions.extend(self.session.on_event(&e, now));
            }
            let frames = self.host_codec.take_realtime();
            actions.extend(self.session.on_realtime(&frames, now));
        }
    }

    fn tick(&mut self, ms: u64) -> Vec<Action> {
        let actions = self.session.on_tick(self.t0 + Duration::from_millis(ms));
        self.pump(actions, &[], ms)
    }
}

fn sent_codes(actions: &[Action]) -> Vec<u8> {
    let mut codec = MedibusCodec::default();
    let mut out = Vec::new();
    for a in actions {
        if let Action::Send(bytes) = a {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Some(MedibusEvent::Frame(f)) = codec.decode(&mut buf).unwrap() {
                out.push(f.code);
            }
        }
    }
    out
}

fn realtime(actions: &[Action]) -> Vec<&RealtimeEvent> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Realtime(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn curves(actions: &[Action]) -> Vec<(u8, Vec<Option<u16>>)> {
    realtime(actions)
        .into_iter()
        .filter_map(|e| match e {
            RealtimeEvent::Waveform(run) => Some((run.code, run.samples.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn session_sets_up_realtime_before_polling_and_decodes_curves_beside_numerics() {
    let mut link = RtLink::new();
    let actions = link.tick(0);
    // ICC, identification, realtime configuration, configure transmission: then streaming.
    assert_eq!(sent_codes(&actions), [b'Q', b'R', b'S', b'T']);
    let started = realtime(&actions)
        .into_iter()
        .find_map(|e| match e {
            RealtimeEvent::Started(specs) => Some(specs.clone()),
            _ => None,
        })
        .expect("started");
    // Pleth (0x02) is offered but not asked for; stream order = the settings' order.
    assert_eq!(
        started
            .iter()
            .map(|s| (s.stream, s.code))
            .collect::<Vec<_>>(),
        [(1, 0x00), (2, 0x01), (3, 0x03)]
    );
    // The device saw the enable sync commands.
    assert_eq!(
        link.device
            .realtime_streams()
            .iter()
            .map(|(n, c)| (*n, c.code))
            .collect::<Vec<_>>(),
        [(1, 0x00), (2, 0x01), (3, 0x03)]
    );
    // The next tick starts the poll cycle; realtime frames arrive between and inside answers.
    let mut line = Vec::new();
    for k in 0..4u16 {
        line.extend(encode_frame(0b111, &[k, 100 + k, 4000 + k], None, LOW));
    }
    line.extend(encode_corrupt_frame(0b111));
    line.extend(encode_frame(0b111, &[9, 9, 9], None, LOW)); // completes the corrupt frame
    let poll = link.session.on_tick(link.t0 + Duration::from_millis(10));
    assert_eq!(sent_codes(&poll), [b'$']);
    // Split the device's measured-data answer around realtime bytes.
    let answer = encode_response(b'$', &encode_measured(&link.device.measured));
    let mut mixed = answer[..4].to_vec();
    mixed.extend(&line);
    mixed.extend(&answer[4..]);
    let actions = link.pump(Vec::new(), &mixed, 10);
    let measured: Vec<_> = actions
        .iter()
        .filter(|a| matches!(a, Action::Data(MedibusData::Measured(_))))
        .collect();
    assert_eq!(
        measured.len(),
        1,
        "the numerics are undisturbed: {actions:?}"
    );
    assert_eq!(
        curves(&actions),
        [
            (0x00, vec![Some(0), Some(1), Some(2), Some(3)]),
            (0x01, vec![Some(100), Some(101), Some(102), Some(103)]),
            (0x03, vec![Some(4000), Some(4001), Some(4002), Some(4003)]),
        ]
    );
    assert!(realtime(&actions).iter().any(|e| matches!(
        e,
        RealtimeEvent::BadFrame {
            fault: RealtimeFault::DeviceCorrupt,
            ..
        }
    )));
    // The corrupt frame is a gap in each stream's next run (flushed at the end).
    let rest = link.session.flush_realtime();
    let rest = curves(&rest);
    assert_eq!(rest[0].1, [None]);
    assert_eq!(rest.len(), 3);
}

#[test]
fn device_change_and_silence_set_realtime_up_again_refusal_leaves_it_off() {
    let mut link = RtLink::new();
    link.tick(0);
    // The device says its realtime configuration changed: echo, then S and T again.
    let cmd = encode_command(commands::REALTIME_CONFIG_CHANGED, &[]);
    let actions = link.pump(Vec::new(), &cmd, 100);
    assert!(realtime(&actions)
        .iter()
        .any(|e| matches!(e, RealtimeEvent::Restart(_))));
    let actions = link.tick(200);
    assert_eq!(sent_codes(&actions), [b'S', b'T']);
    assert_eq!(link.session.stats().realtime_restarts, 1);
    // Keep the slow link alive but send no realtime frame: after the silence timeout the
    // realtime part is set up again, the slow link is not re-initialised.
    let mut ms = 200;
    let mut restarted = false;
    while ms < 200 + 3000 + 500 {
        ms += 100;
        let actions = link.tick(ms);
        if sent_codes(&actions).contains(&b'S') {
            restarted = true;
            break;
        }
    }
    assert!(restarted, "realtime was not set up again after silence");
    assert_eq!(link.session.stats().reinits, 0);
    assert_eq!(link.session.state(), SessionState::Polling);

    // A device that refuses S: realtime off, polling goes on.
    let mut link = RtLink::new();
    link.device.realtime_offer.clear();
    let actions = link.tick(0);
    assert!(realtime(&actions)
        .iter()
        .any(|e| matches!(e, RealtimeEvent::Unavailable(_))));
    let actions = link.tick(10);
    assert_eq!(sent_codes(&actions).first(), Some(&b'$'));
}

#[test]
fn without_realtime_settings_the_session_never_sends_s() {
    let mut device = MedibusDevice::new(DeviceIdentity {
        device_id: "1".into(),
        name: "E".into(),
        revision: "1".into(),
    });
    device.realtime_offer = offer();
    let mut session = MedibusSession::new(SessionTimings::default());
    let t0 = Instant::now();
    let mut codes = Vec::new();
    let mut actions = session.on_tick(t0);
    for _ in 0..20 {
        let mut next = Vec::new();
        for a in &actions {
            if let Action::Send(bytes) = a {
                let mut buf = BytesMut::from(&bytes[..]);
                let mut codec = MedibusCodec::default();
                while let Some(MedibusEvent::Frame(f)) = codec.decode(&mut buf).unwrap() {
                    codes.push(f.code);
                    for ans in device.on_frame(&f) {
                        let mut b = BytesMut::from(&ans[..]);
                        let mut c = MedibusCodec::default();
                        while let Some(e) = c.decode(&mut b).unwrap() {
                            next.extend(session.on_event(&e, t0));
                        }
                    }
                }
            }
        }
        actions = next;
    }
    assert!(codes.contains(&b'$'));
    assert!(!codes.contains(&b'S'));
}

proptest! {
    /// The slow protocol sees exactly the same events with the realtime decoder on, however
    /// realtime bytes are mixed in and however the stream is cut.
    #[test]
    fn realtime_decoding_does_not_change_the_slow_events(
        slow in proptest::collection::vec(any::<u8>(), 0..300),
        fast in proptest::collection::vec(0x80u8..=0xFF, 0..300),
        picks in proptest::collection::vec(any::<bool>(), 0..600),
        chunk in 1usize..64,
    ) {
        let (mut s, mut f) = (slow.iter(), fast.iter());
        let mut mixed = Vec::new();
        for take_fast in picks {
            let next = if take_fast { f.next().or_else(|| s.next()) } else { s.next().or_else(|| f.next()) };
            match next { Some(&b) => mixed.push(b), None => break }
        }
        mixed.extend(s.copied());
        mixed.extend(f.copied());
        let (with, _) = decode_both(&mixed, chunk, true);
        let (without, _) = decode_both(&mixed, chunk, false);
        prop_assert_eq!(with, without);
    }

    /// Encoded frames decode back bit-exact, whatever slow bytes sit between their bytes.
    #[test]
    fn frames_round_trip_through_the_codec(
        frames in proptest::collection::vec((1u16..0x1000, proptest::collection::vec(0u16..4096, 12)), 1..20),
        chunk in 1usize..64,
    ) {
        let mut line = Vec::new();
        let mut expected = Vec::new();
        for (i, (streams, bins)) in frames.iter().enumerate() {
            let n = streams.count_ones() as usize;
            line.extend(encode_frame(*streams, &bins[..n], None, LOW));
            if i % 3 == 0 {
                line.extend(encode_command(b'0', &[]));
            }
            expected.push(stream_numbers(*streams).zip(bins[..n].iter().copied()).collect::<Vec<_>>());
        }
        let (events, got) = decode_both(&line, chunk, true);
        prop_assert!(events.iter().all(|e| matches!(e, MedibusEvent::Frame(_))));
        let got: Vec<Vec<(u8, u16)>> = got.iter().map(|f| f.samples().collect()).collect();
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn a_silent_realtime_stream_is_set_up_again_with_backoff_and_a_refusal_is_retried() {
    let mut link = RtLink::new();
    link.tick(0);
    // No realtime frame ever: set-ups at about 3 s, then 6 s later, then 12 s later.
    let mut setups = Vec::new();
    let mut ms = 0;
    while ms < 3000 + 6000 + 12000 + 1000 {
        ms += 100;
        if sent_codes(&link.tick(ms)).contains(&b'S') {
            setups.push(ms);
        }
    }
    let gaps: Vec<u64> = setups.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(setups.len(), 3, "{setups:?}");
    assert!(
        gaps[0] >= 6000 && gaps[1] >= 12000,
        "backoff doubles: {gaps:?}"
    );
    assert_eq!(
        link.session.stats().reinits,
        0,
        "the slow link is never dropped"
    );

    // A device that refuses: asked again after the backoff, not only at re-initialisation.
    let mut link = RtLink::new();
    link.device.realtime_offer.clear();
    link.tick(0);
    let mut asked_again = None;
    let mut ms = 0;
    while ms < 8000 {
        ms += 100;
        if sent_codes(&link.tick(ms)).contains(&b'S') {
            asked_again = Some(ms);
            break;
        }
    }
    assert!(
        asked_again.is_some_and(|t| t >= 6000),
        "refusal retried after the backoff: {asked_again:?}"
    );
}

#[test]
fn a_run_becomes_a_segment_of_bins_with_its_gaps() {
    let run = WaveformRun {
        stream: 2,
        code: 0x01,
        interval_us: 8000,
        scale: RealtimeScale {
            min: -150.0,
            max: 150.0,
            maxbin: 4000,
        },
        first_offset: 77,
        samples: vec![Some(2048), None, None, Some(4095), Some(0)],
        breaths: Vec::new(),
    };
    let s = run_to_segment(&run, 1_000);
    assert_eq!(
        (s.mdc_code, s.mdc_refid.as_str()),
        (151_764, "MDC_FLOW_AWAY")
    );
    assert_eq!((s.unit_ucum.as_str(), s.unit_mdc_code), ("L/min", 265_216));
    assert_eq!(s.samples, [2048, 4095, 0], "the device's bins, exactly");
    assert_eq!(s.sample_count, 5);
    assert_eq!(s.gaps, [icu_protos::v1::SampleRun { start: 1, count: 2 }]);
    assert_eq!(
        s.above_range,
        [icu_protos::v1::SampleRun { start: 3, count: 1 }]
    );
    assert_eq!((s.sample_period_us, s.sample_rate_hz), (8000.0, 125.0));
    assert_eq!((s.scale, s.offset), (300.0 / 4000.0, -150.0));
    assert_eq!(
        s.first_sample_time_us, None,
        "MEDIBUS realtime has no device time"
    );
    assert_eq!(s.receive_time_us, 1_000);
    assert_eq!(
        (s.source_message_id.as_str(), s.source_row),
        ("medibus-rt@77", 2)
    );
    assert_eq!(curve_named("FLOW").map(|c| c.code), Some(0x01));
    assert_eq!(curve_named("03").map(|c| c.name), Some("volume"));
    assert_eq!(curve_named("pleth"), None);
}
