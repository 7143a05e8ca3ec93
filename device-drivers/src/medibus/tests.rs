use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use icu_protos::v1::ObservationStatus;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use super::*;
use crate::terminology::Terminology;

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

fn decode_chunks(bytes: &[u8], chunk: usize) -> (Vec<MedibusEvent>, u64) {
    let mut codec = MedibusCodec::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for part in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(part);
        while let Some(e) = codec.decode(&mut buf).unwrap() {
            out.push(e);
        }
    }
    while let Some(e) = codec.decode_eof(&mut buf).unwrap() {
        out.push(e);
    }
    (out, codec.realtime_bytes())
}

fn decode(bytes: &[u8]) -> Vec<MedibusEvent> {
    decode_chunks(bytes, bytes.len()).0
}

fn only_frame(bytes: &[u8]) -> MedibusFrame {
    match decode(bytes).as_slice() {
        [MedibusEvent::Frame(f)] => f.clone(),
        other => panic!("expected one frame, got {other:?}"),
    }
}

// ---- protocols.md §1.4 / §1.7 worked frames ------------------------------------------------

#[test]
fn precomputed_command_frames() {
    let cases = [
        (commands::ICC, "1B 51 36 43 0D"),
        (commands::DEVICE_ID, "1B 52 36 44 0D"),
        (commands::NOP, "1B 30 34 42 0D"),
        (commands::MEASURED_CP1, "1B 24 33 46 0D"),
        (commands::LOW_LIMITS_CP1, "1B 25 34 30 0D"),
        (commands::HIGH_LIMITS_CP1, "1B 26 34 31 0D"),
        (commands::ALARMS_CP1, "1B 27 34 32 0D"),
        (commands::DATE_TIME, "1B 28 34 33 0D"),
        (commands::DEVICE_SETTINGS, "1B 29 34 34 0D"),
        (commands::TEXT_MESSAGES, "1B 2A 34 35 0D"),
        (commands::STOP, "1B 55 37 30 0D"),
    ];
    for (code, bytes) in cases {
        assert_eq!(
            encode_command(code, &[]),
            hex(bytes),
            "command 0x{code:02X}"
        );
        let f = only_frame(&hex(bytes));
        assert_eq!(
            (f.kind, f.code, f.data.len()),
            (FrameKind::Command, code, 0)
        );
    }
    assert_eq!(encode_response(commands::ICC, &[]), hex("01 51 35 32 0D"));
    assert_eq!(encode_response(commands::NOP, &[]), hex("01 30 33 31 0D"));
}

#[test]
fn configure_data_response_example() {
    let bytes = hex("1B 4A 24 37 44 37 38 38 38 45 33 0D");
    assert_eq!(encode_command(commands::CONFIGURE, b"$7D7888"), bytes);
    assert_eq!(only_frame(&bytes).data, Bytes::from_static(b"$7D7888"));
}

#[test]
fn spec_example_spo2_and_pulse_checksum_7a() {
    let bytes = hex("01 24 45 42 20 39 38 20 45 31 20 37 30 20 37 41 0D");
    assert_eq!(checksum(&bytes[..14]), 0x7A);
    let values = [
        MedibusValue::raw(0xEB, " 98 "),
        MedibusValue::raw(0xE1, " 70 "),
    ];
    assert_eq!(
        encode_response(commands::MEASURED_CP1, &encode_measured(&values)),
        bytes
    );
    let f = only_frame(&bytes);
    assert_eq!((f.kind, f.code, f.offset), (FrameKind::Response, b'$', 0));
    let parsed = parse_measured(&f.data).unwrap();
    assert_eq!(parsed, values);
    assert_eq!(parsed[0].value, Some(98.0));
    assert_eq!(parsed[1].value, Some(70.0));
}

const VENT_MEASURED: &str =
    "01 24 37 44 20 32 32 20 37 38 20 20 35 20 37 33 20 31 31 20 37 34 20 32 30 20 \
    38 38 20 34 38 30 42 39 20 38 2E 35 44 36 20 31 36 20 46 30 20 34 30 20 46 45 0D";

fn vent_values() -> Vec<MedibusValue> {
    [
        (0x7D, " 22 "),
        (0x78, "  5 "),
        (0x73, " 11 "),
        (0x74, " 20 "),
        (0x88, " 480"),
        (0xB9, " 8.5"),
        (0xD6, " 16 "),
        (0xF0, " 40 "),
    ]
    .iter()
    .map(|&(c, r)| MedibusValue::raw(c, r))
    .collect()
}

#[test]
fn ventilator_measured_data_example_checksum_fe() {
    let bytes = hex(VENT_MEASURED);
    assert_eq!(
        encode_response(commands::MEASURED_CP1, &encode_measured(&vent_values())),
        bytes
    );
    let parsed = parse_measured(&only_frame(&bytes).data).unwrap();
    let numbers: Vec<_> = parsed.iter().map(|v| (v.code, v.value.unwrap())).collect();
    assert_eq!(
        numbers,
        vec![
            (0x7D, 22.0),
            (0x78, 5.0),
            (0x73, 11.0),
            (0x74, 20.0),
            (0x88, 480.0),
            (0xB9, 8.5),
            (0xD6, 16.0),
            (0xF0, 40.0)
        ]
    );
    // The same payload built from numbers (right-justified) differs only in padding.
    let from_numbers: Vec<_> = numbers
        .iter()
        .map(|&(c, v)| MedibusValue::number(c, v))
        .collect();
    let rebuilt = parse_measured(&encode_measured(&from_numbers)).unwrap();
    assert_eq!(
        rebuilt.iter().map(|v| v.value).collect::<Vec<_>>(),
        parsed.iter().map(|v| v.value).collect::<Vec<_>>()
    );
}

#[test]
fn alarm_example_checksum_7c() {
    let bytes = hex("01 27 4B 31 30 50 41 57 20 48 49 47 48 20 20 20 20 37 43 0D");
    let alarm = MedibusAlarm {
        priority: 27,
        code: 0x10,
        phrase: "PAW HIGH".into(),
    };
    assert_eq!(
        encode_response(
            commands::ALARMS_CP1,
            &encode_alarms(std::slice::from_ref(&alarm))
        ),
        bytes
    );
    assert_eq!(parse_alarms(&only_frame(&bytes).data).unwrap(), vec![alarm]);
}

#[test]
fn settings_example_checksum_ea() {
    let bytes =
        hex("01 29 30 31 20 20 34 30 20 30 42 20 20 35 2E 30 30 41 20 31 36 2E 30 45 41 0D");
    let values = vec![
        MedibusValue::raw(0x01, "  40 "),
        MedibusValue::raw(0x0B, "  5.0"),
        MedibusValue::raw(0x0A, " 16.0"),
    ];
    assert_eq!(
        encode_response(commands::DEVICE_SETTINGS, &encode_settings(&values)),
        bytes
    );
    let parsed = parse_settings(&only_frame(&bytes).data).unwrap();
    assert_eq!(parsed, values);
    assert_eq!(parsed[1].value, Some(5.0));
}

#[test]
fn text_message_example_checksum_19() {
    let bytes =
        hex("01 2A 30 37 38 53 49 4D 56 2F 41 53 42 03 32 30 36 41 64 75 6C 74 73 03 31 39 0D");
    let texts = vec![
        MedibusText {
            code: 0x07,
            text: "SIMV/ASB".into(),
        },
        MedibusText {
            code: 0x20,
            text: "Adults".into(),
        },
    ];
    assert_eq!(
        encode_response(commands::TEXT_MESSAGES, &encode_text_messages(&texts)),
        bytes
    );
    assert_eq!(
        parse_text_messages(&only_frame(&bytes).data).unwrap(),
        texts
    );
}

#[test]
fn date_time_example_checksum_fe() {
    let bytes = hex("01 28 31 34 3A 33 30 3A 30 35 20 30 37 2D 4F 4B 54 2D 31 34 46 45 0D");
    assert_eq!(
        encode_response(commands::DATE_TIME, b"14:30:05 07-OKT-14"),
        bytes
    );
    assert_eq!(
        only_frame(&bytes).data,
        Bytes::from_static(b"14:30:05 07-OKT-14")
    );
}

#[test]
fn device_id_example_checksum_ef() {
    let bytes = hex("01 52 30 31 36 31 27 49 43 45 27 30 34 2E 30 33 20 20 20 20 20 20 45 46 0D");
    let id = DeviceIdentity {
        device_id: "0161".into(),
        name: "ICE".into(),
        revision: "04.03".into(),
    };
    assert_eq!(
        encode_response(commands::DEVICE_ID, &encode_identity(&id)),
        bytes
    );
    assert_eq!(parse_identity(&only_frame(&bytes).data).unwrap(), id);
}

// ---- framing -------------------------------------------------------------------------------

#[test]
fn corrupt_checksum_is_reported_and_decoding_resyncs() {
    let mut bad = hex(VENT_MEASURED);
    let n = bad.len();
    bad[n - 2] = b'F'; // "FF" instead of "FE"
    let good = encode_command(commands::NOP, &[]);
    let stream = [bad.clone(), good.clone()].concat();
    let events = decode(&stream);
    assert_eq!(events.len(), 2);
    match &events[0] {
        MedibusEvent::Corrupt { offset: 0, reason } => {
            assert_eq!(
                *reason,
                FrameError::BadChecksum {
                    offset: 0,
                    expected: 0xFE,
                    found: "FF".into()
                }
            );
            assert!(reason
                .to_string()
                .starts_with("frame at byte 0: checksum 'FF'"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&events[1], MedibusEvent::Frame(f) if f.code == commands::NOP && f.offset == n as u64)
    );
}

#[test]
fn garbage_realtime_and_flow_control_between_and_inside_frames() {
    let mut stream = b"xyz".to_vec();
    stream.extend([0x80, 0xD1, 0x11]);
    let icc = encode_command(commands::ICC, &[]);
    // Realtime bytes and DC3 interleaved inside a frame.
    stream.extend([
        icc[0], 0x85, icc[1], 0x13, icc[2], 0xC6, 0x81, icc[3], icc[4],
    ]);
    stream.extend(b"\r\n");
    stream.extend(encode_response(commands::NOP, &[]));
    stream.extend(b"tail");
    let (events, realtime) = decode_chunks(&stream, 1);
    assert_eq!(realtime, 5);
    assert_eq!(
        events,
        vec![
            MedibusEvent::Garbage { offset: 0, len: 3 },
            MedibusEvent::Frame(MedibusFrame {
                kind: FrameKind::Command,
                code: commands::ICC,
                data: Bytes::new(),
                offset: 6
            }),
            MedibusEvent::Garbage { offset: 15, len: 2 },
            MedibusEvent::Frame(MedibusFrame {
                kind: FrameKind::Response,
                code: commands::NOP,
                data: Bytes::new(),
                offset: 17
            }),
            MedibusEvent::Garbage { offset: 22, len: 4 },
        ]
    );
}

#[test]
fn interrupted_short_oversized_and_unterminated_frames() {
    let nop = encode_command(commands::NOP, &[]);
    let mut stream = b"\x1b$3".to_vec(); // cut short by the next header
    stream.extend(&nop);
    stream.extend(b"\x01\r"); // too short
    stream.extend(b"\x01$");
    stream.extend(vec![b'7'; DEFAULT_MAX_FRAME_BYTES + 10]);
    stream.extend(b"\r");
    stream.extend(&nop);
    stream.extend(b"\x1b0");
    let events = decode(&stream);
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            MedibusEvent::Frame(f) => format!("frame {}", f.offset),
            MedibusEvent::Corrupt { reason, .. } => reason.to_string(),
            MedibusEvent::Garbage { offset, len } => format!("garbage {offset}+{len}"),
        })
        .collect();
    let big_end = 3 + 5 + 2 + 2 + DEFAULT_MAX_FRAME_BYTES + 10 + 1;
    assert_eq!(
        kinds,
        vec![
            "frame at byte 0: cut short by a new frame header at byte 3".to_owned(),
            "frame 3".into(),
            "frame at byte 8: 1 bytes before CR; a frame needs a header, a command byte and a 2-character checksum".into(),
            format!("frame at byte 10: no CR within {DEFAULT_MAX_FRAME_BYTES} bytes; dropped up to its end"),
            format!("frame {big_end}"),
            format!("frame at byte {}: the stream ended before its CR", big_end + 5),
        ]
    );
}

#[test]
fn split_at_every_byte_gives_the_same_events() {
    let mut stream = hex(VENT_MEASURED);
    stream.extend(b"noise\x80\x81");
    stream.extend(hex(
        "01 27 4B 31 30 50 41 57 20 48 49 47 48 20 20 20 20 37 43 0D",
    ));
    let mut bad = encode_command(commands::ICC, &[]);
    bad[2] = b'0';
    stream.extend(bad);
    stream.extend(encode_command(commands::NOP, &[]));
    let whole = decode(&stream);
    assert_eq!(whole.len(), 5);
    for split in 1..stream.len() {
        let (a, b) = stream.split_at(split);
        let mut codec = MedibusCodec::default();
        let mut buf = BytesMut::from(a);
        let mut out = Vec::new();
        while let Some(e) = codec.decode(&mut buf).unwrap() {
            out.push(e);
        }
        buf.extend_from_slice(b);
        while let Some(e) = codec.decode_eof(&mut buf).unwrap() {
            out.push(e);
        }
        assert_eq!(out, whole, "split at {split}");
    }
}

#[test]
fn lower_case_checksum_is_accepted() {
    let mut bytes = hex("01 24 45 42 20 39 38 20 45 31 20 37 30 20 37 41 0D");
    bytes[15] = b'a';
    assert_eq!(only_frame(&bytes).code, b'$');
}

// ---- payload errors ------------------------------------------------------------------------

#[test]
fn payload_errors_name_the_record_offset() {
    assert_eq!(
        parse_measured(b"EB 98 E1 7").unwrap_err(),
        PayloadError::Truncated {
            offset: 6,
            len: 4,
            need: 6,
            what: "measured-data"
        }
    );
    assert_eq!(
        parse_measured(b"EB 98 G1 70 ").unwrap_err().to_string(),
        "record at data byte 6: code 'G1' is not two hex digits"
    );
    assert_eq!(
        parse_alarms(b"K10PAW HIGH    \x2010PAW HIGH    ").unwrap_err(),
        PayloadError::BadPriority {
            offset: 15,
            byte: b' '
        }
    );
    assert_eq!(
        parse_text_messages(b"078SIMV/ASB\x03206Adults!").unwrap_err(),
        PayloadError::MissingEtx { offset: 12, len: 6 }
    );
    assert!(matches!(
        parse_text_messages(b"07\x018"),
        Err(PayloadError::BadLength { offset: 2, .. })
    ));
    assert_eq!(
        parse_identity(b"0161ICE04.03").unwrap_err(),
        PayloadError::BadIdentity { offset: 0 }
    );
    // Blank, dashes and text values are kept, without a number.
    let v = parse_measured(b"7D    78----73 x  ").unwrap();
    assert!(v.iter().all(|v| v.value.is_none()));
    assert!(v[0].is_not_available() && v[1].is_not_available() && !v[2].is_not_available());
    // Signed values and spaces in codes (read as 0).
    let v = parse_measured(b"71 -2 A  1.5").unwrap();
    assert_eq!(
        (v[0].value, v[1].code, v[1].value),
        (Some(-2.0), 0xA0, Some(1.5))
    );
}

#[test]
fn format_value_fits_the_width() {
    assert_eq!(format_value(22.0, 4), "  22");
    assert_eq!(format_value(8.5, 4), " 8.5");
    assert_eq!(format_value(5.0, 5), "    5");
    assert_eq!(format_value(12345.678, 4), "----");
    assert_eq!(format_value(0.126, 4), "0.13");
    assert_eq!(format_value(f64::NAN, 4), "----");
}

// ---- observations --------------------------------------------------------------------------

#[test]
fn observations_with_limits_and_device_units() {
    let t = Terminology::builtin();
    let mut limits = MedibusLimits::default();
    limits.update_low(&[
        MedibusValue::raw(0x78, "  2 "),
        MedibusValue::raw(0xD6, "  5 "),
    ]);
    limits.update_high(&[
        MedibusValue::raw(0x7D, " 40 "),
        MedibusValue::raw(0xD6, " 35 "),
    ]);
    let mut values = vent_values();
    values.push(MedibusValue::raw(0x07, " 50 ")); // compliance: no MDC mapping, skipped
    values.push(MedibusValue::raw(0xEB, "----"));
    let obs = medibus_to_observations(&values, &limits, None, 7, &t);
    assert_eq!(obs.len(), 9);
    let ppeak = &obs[0];
    assert_eq!(ppeak.mdc_code, 151817);
    assert_eq!(ppeak.mdc_refid, "MDC_PRESS_AWAY_INSP_MAX");
    assert_eq!(ppeak.value, Some(22.0));
    assert_eq!(ppeak.value_text, "22");
    assert_eq!(
        (ppeak.unit_ucum.as_str(), ppeak.unit_mdc_code),
        ("mbar", 266098)
    );
    assert_eq!(ppeak.loinc, "76531-3");
    assert_eq!((ppeak.limit_low, ppeak.limit_high), (None, Some(40.0)));
    assert_eq!((ppeak.receive_time_us, ppeak.device_time_us), (7, None));
    let peep = &obs[1];
    assert_eq!((peep.mdc_code, peep.limit_low), (151976, Some(2.0)));
    let rr = obs.iter().find(|o| o.mdc_code == 151562).unwrap();
    assert_eq!((rr.limit_low, rr.limit_high), (Some(5.0), Some(35.0)));
    assert_eq!(rr.unit_ucum, "/min");
    let mv = obs.iter().find(|o| o.mdc_code == 151880).unwrap();
    assert_eq!((mv.value, mv.unit_ucum.as_str()), (Some(8.5), "L/min"));
    let spo2 = obs.last().unwrap();
    assert_eq!(spo2.mdc_code, 150456);
    assert_eq!(spo2.status, ObservationStatus::NotAvailable as i32);
    assert_eq!(spo2.value, None);

    let settings = parse_settings(b"01  40 0B  5.00A 16.0").unwrap();
    let obs = medibus_settings_to_observations(&settings, Some(1), 2, &t);
    assert_eq!(obs.len(), 1, "only the FiO2 setting has an MDC code");
    assert_eq!((obs[0].mdc_code, obs[0].value), (160920, Some(40.0)));
}

// ---- session -------------------------------------------------------------------------------

struct Link {
    session: MedibusSession,
    device: MedibusDevice,
    t0: Instant,
}

fn identity() -> DeviceIdentity {
    DeviceIdentity {
        device_id: "0161".into(),
        name: "Evita".into(),
        revision: "04.03".into(),
    }
}

fn frames_of(bytes: &[u8]) -> Vec<MedibusFrame> {
    decode(bytes)
        .into_iter()
        .map(|e| match e {
            MedibusEvent::Frame(f) => f,
            other => panic!("{other:?}"),
        })
        .collect()
}

fn sent(actions: &[Action]) -> Vec<(FrameKind, u8)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(bytes) => Some(frames_of(bytes)),
            _ => None,
        })
        .flatten()
        .map(|f| (f.kind, f.code))
        .collect()
}

fn response(code: u8, data: &[u8]) -> MedibusFrame {
    frames_of(&encode_response(code, data)).remove(0)
}

fn command(code: u8) -> MedibusFrame {
    frames_of(&encode_command(code, &[])).remove(0)
}

impl Link {
    fn new(timings: SessionTimings) -> Self {
        let mut device = MedibusDevice::new(identity());
        device.measured = vent_values();
        device.low_limits = vec![MedibusValue::raw(0x78, "  2 ")];
        device.high_limits = vec![MedibusValue::raw(0x7D, " 40 ")];
        device.alarms = vec![MedibusAlarm {
            priority: 27,
            code: 0x10,
            phrase: "PAW HIGH".into(),
        }];
        device.settings = vec![MedibusValue::raw(0x01, "  40 ")];
        device.texts = vec![MedibusText {
            code: 0x07,
            text: "SIMV/ASB".into(),
        }];
        Self {
            session: MedibusSession::new(timings),
            device,
            t0: Instant::now(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Delivers every Send to the device and the device's answers back, all at `ms`, until
    /// quiet; returns every action of the session.
    fn pump(&mut self, mut actions: Vec<Action>, ms: u64) -> Vec<Action> {
        let now = self.at(ms);
        let mut all = Vec::new();
        while !actions.is_empty() {
            let mut next = Vec::new();
            for a in &actions {
                if let Action::Send(bytes) = a {
                    for f in frames_of(bytes) {
                        for answer in self.device.on_frame(&f) {
                            for f in frames_of(&answer) {
                                next.extend(self.session.on_frame(&f, now));
                            }
                        }
                    }
                }
            }
            all.append(&mut actions);
            actions = next;
        }
        all
    }

    fn tick(&mut self, ms: u64) -> Vec<Action> {
        let actions = self.session.on_tick(self.at(ms));
        self.pump(actions, ms)
    }
}

const CMD: FrameKind = FrameKind::Command;
const RSP: FrameKind = FrameKind::Response;

#[test]
fn session_identifies_then_polls_in_order_one_request_at_a_time() {
    let mut link = Link::new(SessionTimings::default());
    assert_eq!(link.session.state(), SessionState::Disconnected);
    let actions = link.tick(0);
    let expected: Vec<_> = [commands::ICC, commands::DEVICE_ID]
        .into_iter()
        .chain(POLL_CYCLE)
        .map(|c| (CMD, c))
        .collect();
    assert_eq!(sent(&actions), expected);
    assert!(actions.contains(&Action::Connected(identity())));
    assert_eq!(link.session.state(), SessionState::Polling);
    assert_eq!(link.session.identity(), Some(&identity()));
    let data: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Data(d) => Some(d.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(data.len(), 6);
    assert_eq!(data[0], MedibusData::Measured(vent_values()));
    assert!(matches!(&data[1], MedibusData::LowLimits(v) if v[0].value == Some(2.0)));
    assert!(matches!(&data[2], MedibusData::HighLimits(v) if v[0].value == Some(40.0)));
    assert!(matches!(&data[3], MedibusData::Alarms(a) if a[0].priority == 27));
    assert!(matches!(&data[4], MedibusData::Settings(s) if s[0].value == Some(40.0)));
    assert!(matches!(&data[5], MedibusData::Text(t) if t[0].text == "SIMV/ASB"));
    assert_eq!(link.session.in_flight(), None);

    // The next cycle starts one poll interval after the previous one.
    assert!(link.tick(999).is_empty());
    assert_eq!(sent(&link.tick(1000))[0], (CMD, commands::MEASURED_CP1));
}

#[test]
fn only_one_request_in_flight() {
    let mut s = MedibusSession::new(SessionTimings::default());
    let t0 = Instant::now();
    let ms = |m| t0 + Duration::from_millis(m);
    assert_eq!(sent(&s.on_tick(ms(0))), vec![(CMD, commands::ICC)]);
    assert_eq!(s.state(), SessionState::Initialising);
    assert_eq!(
        sent(&s.on_frame(&response(commands::ICC, &[]), ms(10))),
        vec![(CMD, commands::DEVICE_ID)]
    );
    assert_eq!(s.state(), SessionState::Identifying);
    let id = encode_identity(&identity());
    let actions = s.on_frame(&response(commands::DEVICE_ID, &id), ms(20));
    assert_eq!(sent(&actions), vec![(CMD, commands::MEASURED_CP1)]);
    // Ticks while the request is unanswered send nothing (no NOP, no next poll).
    for t in [30, 500, 1100, 1500, 2000] {
        assert!(s.on_tick(ms(t)).is_empty(), "tick at {t}");
    }
    assert_eq!(s.in_flight(), Some(commands::MEASURED_CP1));
    // A response to something else is ignored and counted.
    assert!(s
        .on_frame(&response(commands::ALARMS_CP1, &[]), ms(2100))
        .is_empty());
    assert_eq!(s.stats().unexpected_responses, 1);
    // The answer releases the next request.
    let actions = s.on_frame(&response(commands::MEASURED_CP1, b"EB 98 "), ms(2200));
    assert_eq!(sent(&actions), vec![(CMD, commands::LOW_LIMITS_CP1)]);
    assert!(matches!(&actions[0], Action::Data(MedibusData::Measured(v)) if v.len() == 1));
}

#[test]
fn icc_is_retried_until_answered() {
    let mut s = MedibusSession::new(SessionTimings::default());
    let t0 = Instant::now();
    let ms = |m| t0 + Duration::from_millis(m);
    assert_eq!(sent(&s.on_tick(ms(0))), vec![(CMD, commands::ICC)]);
    assert!(s.on_tick(ms(1999)).is_empty());
    assert_eq!(sent(&s.on_tick(ms(2000))), vec![(CMD, commands::ICC)]);
    assert!(s.on_tick(ms(3999)).is_empty());
    assert_eq!(sent(&s.on_tick(ms(4000))), vec![(CMD, commands::ICC)]);
    // Stale responses and corrupt frames do not disturb initialisation.
    assert!(s
        .on_frame(&response(commands::NOP, &[]), ms(4100))
        .is_empty());
    assert!(s.on_corrupt("noise".into(), ms(4200)).is_empty());
    assert_eq!(
        sent(&s.on_frame(&response(commands::ICC, &[]), ms(4300))),
        vec![(CMD, commands::DEVICE_ID)]
    );
}

#[test]
fn nop_keep_alive_when_nothing_was_sent() {
    let timings = SessionTimings {
        poll_interval: Duration::from_secs(10),
        ..SessionTimings::default()
    };
    let mut link = Link::new(timings);
    link.tick(0); // connect and one full cycle at t=0
    assert!(link.tick(999).is_empty());
    let actions = link.tick(1000);
    assert_eq!(sent(&actions), vec![(CMD, commands::NOP)]);
    // The device answered the NOP within pump(), so the link is quiet again.
    assert_eq!(link.session.in_flight(), None);
    assert!(link.tick(1999).is_empty());
    assert_eq!(sent(&link.tick(2000)), vec![(CMD, commands::NOP)]);
    assert_eq!(link.session.next_deadline(), Some(link.at(3000)));
    assert_eq!(link.session.state(), SessionState::Polling);
}

#[test]
fn silence_and_response_timeout_reinitialise() {
    // Silence: the device stops answering; 3 s after the last byte the link is re-initialised.
    let mut link = Link::new(SessionTimings::default());
    link.tick(0);
    link.device = MedibusDevice::new(identity()); // uninitialised: answers nothing but ICC
    let actions = link.session.on_tick(link.at(1000));
    assert_eq!(sent(&actions), vec![(CMD, commands::MEASURED_CP1)]);
    assert!(link.session.on_tick(link.at(2999)).is_empty());
    let actions = link.session.on_tick(link.at(3000));
    assert_eq!(
        actions[0],
        Action::Reinit {
            reason: ReinitReason::Silence(LINK_TIMEOUT)
        }
    );
    assert_eq!(sent(&actions), vec![(CMD, commands::ICC)]);
    assert_eq!(link.session.state(), SessionState::Initialising);
    assert_eq!(link.session.stats().reinits, 1);

    // Response timeout: the device keeps talking (its own NOPs) but never answers the request.
    let timings = SessionTimings {
        response_timeout: Duration::from_millis(2500),
        ..SessionTimings::default()
    };
    let mut s = MedibusSession::new(timings);
    let t0 = Instant::now();
    let ms = |m| t0 + Duration::from_millis(m);
    s.on_tick(ms(0));
    s.on_frame(&response(commands::ICC, &[]), ms(0));
    s.on_frame(
        &response(commands::DEVICE_ID, &encode_identity(&identity())),
        ms(0),
    );
    assert_eq!(s.in_flight(), Some(commands::MEASURED_CP1));
    let echo = s.on_frame(&command(commands::NOP), ms(2000));
    assert_eq!(sent(&echo), vec![(RSP, commands::NOP)]);
    let actions = s.on_tick(ms(2500));
    assert_eq!(
        actions[0],
        Action::Reinit {
            reason: ReinitReason::ResponseTimeout {
                code: commands::MEASURED_CP1,
                after: Duration::from_millis(2500)
            }
        }
    );
}

#[test]
fn corrupt_frame_and_device_icc_reinitialise_and_device_commands_are_echoed() {
    let mut link = Link::new(SessionTimings::default());
    link.tick(0);
    let now = link.at(100);
    // Device-sent NOP and time-changed are echoed without data; the session stays connected.
    for code in [
        commands::NOP,
        commands::TIME_CHANGED,
        commands::MEASURED_CP1,
    ] {
        let actions = link.session.on_frame(&command(code), now);
        assert_eq!(actions, vec![Action::Send(encode_response(code, &[]))]);
    }
    assert_eq!(link.session.state(), SessionState::Polling);
    assert_eq!(link.session.stats().echoed_commands, 3);

    // Device ICC: echo, then re-initialise from our side.
    let actions = link.session.on_frame(&command(commands::ICC), now);
    assert_eq!(
        sent(&actions),
        vec![(RSP, commands::ICC), (CMD, commands::ICC)]
    );
    assert_eq!(
        actions[1],
        Action::Reinit {
            reason: ReinitReason::DeviceIcc
        }
    );
    let actions = link.pump(actions, 100);
    assert!(actions.contains(&Action::Connected(identity())));

    // Corrupt frame while connected.
    let mut bad = encode_response(commands::MEASURED_CP1, b"EB 98 ");
    bad[3] = b'X';
    let event = decode(&bad).remove(0);
    let actions = link.session.on_event(&event, link.at(200));
    assert!(matches!(
        &actions[0],
        Action::Reinit { reason: ReinitReason::Corrupt(r) } if r.contains("checksum")
    ));
    assert_eq!(sent(&actions), vec![(CMD, commands::ICC)]);

    // Device STOP while connected.
    let mut link = Link::new(SessionTimings::default());
    link.tick(0);
    let actions = link.session.on_frame(&command(commands::STOP), link.at(50));
    assert_eq!(
        sent(&actions),
        vec![(RSP, commands::STOP), (CMD, commands::ICC)]
    );
}

#[test]
fn bad_payload_is_reported_and_polling_goes_on() {
    let mut s = MedibusSession::new(SessionTimings::default());
    let t0 = Instant::now();
    s.on_tick(t0);
    s.on_frame(&response(commands::ICC, &[]), t0);
    s.on_frame(
        &response(commands::DEVICE_ID, &encode_identity(&identity())),
        t0,
    );
    let actions = s.on_frame(&response(commands::MEASURED_CP1, b"EB 9"), t0);
    assert!(matches!(
        &actions[0],
        Action::BadPayload {
            code: b'$',
            error: PayloadError::Truncated { offset: 0, .. },
            ..
        }
    ));
    assert_eq!(sent(&actions), vec![(CMD, commands::LOW_LIMITS_CP1)]);
    // A NAK ("corrupt command") answers the request in flight and polling continues.
    let actions = s.on_frame(&response(commands::NAK_CORRUPT, &[]), t0);
    assert_eq!(sent(&actions), vec![(CMD, commands::HIGH_LIMITS_CP1)]);
    // An unreadable identification re-initialises.
    let mut s = MedibusSession::new(SessionTimings::default());
    s.on_tick(t0);
    s.on_frame(&response(commands::ICC, &[]), t0);
    let actions = s.on_frame(&response(commands::DEVICE_ID, b"0161 no quotes"), t0);
    assert!(matches!(
        &actions[0],
        Action::Reinit {
            reason: ReinitReason::BadIdentity(_)
        }
    ));
}

#[test]
fn device_answers_only_after_icc() {
    let mut d = MedibusDevice::new(identity());
    assert!(d.on_frame(&command(commands::MEASURED_CP1)).is_empty());
    assert_eq!(
        d.on_frame(&command(commands::ICC)),
        vec![hex("01 51 35 32 0D")]
    );
    assert!(d.is_initialised());
    assert_eq!(
        d.on_frame(&command(commands::NOP)),
        vec![hex("01 30 33 31 0D")]
    );
    assert!(d.on_frame(&response(commands::NOP, &[])).is_empty());
    assert_eq!(
        d.on_frame(&command(commands::STOP)),
        vec![encode_response(commands::STOP, &[])]
    );
    assert!(!d.is_initialised());
}

// ---- properties ----------------------------------------------------------------------------

proptest! {
    #[test]
    fn frames_round_trip(
        command in any::<bool>(),
        code in 0x20u8..0x7F,
        data in "[ -~]{0,300}",
        noise in "[a-z]{0,5}",
        chunk in 1usize..20,
    ) {
        let bytes = if command {
            encode_command(code, data.as_bytes())
        } else {
            encode_response(code, data.as_bytes())
        };
        let stream = [noise.as_bytes(), &bytes].concat();
        let (events, _) = decode_chunks(&stream, chunk);
        let frame = events.into_iter().find_map(|e| match e {
            MedibusEvent::Frame(f) => Some(f),
            _ => None,
        });
        let frame = frame.expect("a frame");
        prop_assert_eq!(frame.code, code);
        prop_assert_eq!(frame.data.as_ref(), data.as_bytes());
        prop_assert_eq!(frame.offset, noise.len() as u64);
        prop_assert_eq!(frame.encode(), bytes);
    }

    #[test]
    fn decoder_never_panics_and_chunking_does_not_matter(
        bytes in proptest::collection::vec(any::<u8>(), 0..3000),
        chunk in 1usize..64,
    ) {
        let whole = decode_chunks(&bytes, bytes.len().max(1));
        prop_assert_eq!(decode_chunks(&bytes, chunk), whole);
    }

    #[test]
    fn payload_parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_measured(&data);
        let _ = parse_settings(&data);
        let _ = parse_alarms(&data);
        let _ = parse_text_messages(&data);
        let _ = parse_identity(&data);
    }

    #[test]
    fn value_records_round_trip(values in proptest::collection::vec((any::<u8>(), -999i32..9999), 0..40)) {
        let values: Vec<_> = values.iter().map(|&(c, v)| MedibusValue::number(c, f64::from(v))).collect();
        let parsed = parse_measured(&encode_measured(&values)).unwrap();
        prop_assert_eq!(parsed.len(), values.len());
        for (p, v) in parsed.iter().zip(&values) {
            prop_assert_eq!((p.code, p.value), (v.code, v.value));
        }
    }

    #[test]
    fn alarms_and_texts_round_trip(
        alarms in proptest::collection::vec((1u8..=31, any::<u8>(), "[ -~]{0,12}"), 0..10),
        texts in proptest::collection::vec((any::<u8>(), "[ -~]{0,40}"), 0..10),
    ) {
        let alarms: Vec<_> = alarms.into_iter()
            .map(|(priority, code, phrase)| MedibusAlarm { priority, code, phrase: phrase.trim_end().to_owned() })
            .collect();
        prop_assert_eq!(parse_alarms(&encode_alarms(&alarms)).unwrap(), alarms);
        let texts: Vec<_> = texts.into_iter().map(|(code, text)| MedibusText { code, text }).collect();
        prop_assert_eq!(parse_text_messages(&encode_text_messages(&texts)).unwrap(), texts);
    }

    #[test]
    fn session_never_panics_on_any_event_sequence(
        stream in proptest::collection::vec(any::<u8>(), 0..600),
        ticks in proptest::collection::vec(0u64..4000, 0..20),
    ) {
        let mut s = MedibusSession::new(SessionTimings::default());
        let t0 = Instant::now();
        let mut t = 0;
        for (i, e) in decode(&stream).iter().enumerate() {
            t += ticks.get(i % ticks.len().max(1)).copied().unwrap_or(10);
            let _ = s.on_event(e, t0 + Duration::from_millis(t));
            let _ = s.on_tick(t0 + Duration::from_millis(t));
            prop_assert!(s.in_flight().is_some() || s.state() != SessionState::Initialising);
        }
    }
}
