use bytes::BytesMut;
use icu_protos::v1::ObservationStatus;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

use super::*;
use crate::terminology::Terminology;

/// protocols.md §2.3, first example line.
const LINE1: &str = "01/15/25 10:22:07 SN=0000012345 SPO2=097% BPM=072 PI=02.45% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- PVI=--- ALARM=0000 EXC=000800\r\n";
/// protocols.md §2.3, second example line (no sensor).
const LINE2: &str = "01/15/25 10:22:08 SN=0000012345 SPO2=---% BPM=--- PI=--.--% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- PVI=--- ALARM=0000 EXC=000001\r\n";

/// 2025-01-15T10:22:07Z in microseconds.
const T1: i64 = 1_736_936_527_000_000;

fn decode_all(codec: &mut MasimoCodec, bytes: &[u8]) -> Vec<MasimoEvent> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(e) = codec.decode(&mut buf).unwrap() {
        out.push(e);
    }
    while let Some(e) = codec.decode_eof(&mut buf).unwrap() {
        out.push(e);
    }
    out
}

fn decode_split(bytes: &[u8], chunk: usize) -> Vec<MasimoEvent> {
    let mut codec = MasimoCodec::default();
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
    out
}

fn record(event: &MasimoEvent) -> &MasimoRecord {
    match event {
        MasimoEvent::Line(r) => r,
        other => panic!("expected a line, got {other:?}"),
    }
}

#[test]
fn example_line_one_parses_by_key() {
    let events = decode_all(&mut MasimoCodec::default(), LINE1.as_bytes());
    assert_eq!(events.len(), 1);
    let r = record(&events[0]);
    assert_eq!(r.device_time_us, T1);
    assert_eq!(r.serial.as_deref(), Some("0000012345"));
    assert_eq!(r.alarm, 0);
    assert_eq!(r.exc, 0x800);
    assert_eq!(r.value("SPO2").unwrap().value, Some(97.0));
    assert_eq!(r.value("SPO2").unwrap().raw, "097%");
    assert_eq!(r.value("BPM").unwrap().value, Some(72.0));
    assert_eq!(r.value("PI").unwrap().value, Some(2.45));
    for key in ["SPCO", "SPMET", "DESAT", "PIDELTA", "PVI"] {
        let v = r.value(key).unwrap();
        assert_eq!(
            (v.value, v.status),
            (None, ValueStatus::NotAvailable),
            "{key}"
        );
    }
    assert!(
        r.technical_conditions().is_empty(),
        "EXC 0x800 (SET) is normal"
    );
    assert!(r.alarms().is_empty());
    assert!(!r.alarm_active() && !r.alarm_silenced());
}

#[test]
fn example_line_two_is_no_sensor_and_not_available() {
    let events = decode_all(&mut MasimoCodec::default(), LINE2.as_bytes());
    let r = record(&events[0]);
    assert_eq!(r.device_time_us, T1 + 1_000_000);
    let spo2 = r.value("SPO2").unwrap();
    assert_eq!(spo2.value, None);
    assert_eq!(spo2.status, ValueStatus::NotAvailable);
    let conditions = r.technical_conditions();
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0].code, "NO_SENSOR");
    assert_eq!(conditions[0].text, "no sensor");

    let obs = to_observations(r, 42, &Terminology::builtin());
    assert_eq!(obs.len(), 3, "SPO2, BPM, PI have MDC codes");
    for o in &obs {
        assert_eq!(o.value, None, "never zero");
        assert_eq!(o.status, ObservationStatus::NotAvailable as i32);
    }
}

#[test]
fn observations_carry_mdc_ucum_loinc_and_times() {
    let events = decode_all(&mut MasimoCodec::default(), LINE1.as_bytes());
    let obs = to_observations(record(&events[0]), 99, &Terminology::builtin());
    let spo2 = obs.iter().find(|o| o.mdc_code == 150456).unwrap();
    assert_eq!(spo2.mdc_refid, "MDC_PULS_OXIM_SAT_O2");
    assert_eq!(spo2.value, Some(97.0));
    assert_eq!(spo2.value_text, "097%");
    assert_eq!(spo2.unit_ucum, "%");
    assert_eq!(spo2.unit_mdc_code, 262688);
    assert_eq!(spo2.loinc, "59408-5");
    assert_eq!(spo2.device_time_us, Some(T1));
    assert_eq!(spo2.receive_time_us, 99);
    assert_eq!(spo2.equipment_id, "0000012345");
    assert_eq!(spo2.status, ObservationStatus::Valid as i32);
    assert_eq!(spo2.source_row, 1);
    assert!(spo2.device_id.is_empty() && spo2.bed.is_empty() && spo2.seq == 0);
    let bpm = obs.iter().find(|o| o.mdc_code == 149530).unwrap();
    assert_eq!(
        (bpm.unit_ucum.as_str(), bpm.unit_mdc_code),
        ("/min", 264864)
    );
    assert_eq!(bpm.loinc, "8889-8");
    let pi = obs.iter().find(|o| o.mdc_code == 150448).unwrap();
    assert_eq!(pi.value, Some(2.45));
}

#[test]
fn alarm_bits_decode_and_flag_the_value() {
    let line = "01/15/25 10:22:07 SPO2=085% BPM=140 ALARM=0036 EXC=000825\r\n";
    let r = parse_line(line.trim_end().as_bytes(), 0).unwrap();
    let codes: Vec<_> = r.alarms().iter().map(|a| (a.code, a.priority)).collect();
    assert_eq!(
        codes,
        vec![
            ("SPO2_LOW", AlarmPriority::High),
            ("PR_HIGH", AlarmPriority::Medium)
        ]
    );
    assert!(r.alarm_active() && r.alarm_silenced());
    let conditions: Vec<_> = r.technical_conditions().iter().map(|c| c.code).collect();
    assert_eq!(conditions, vec!["NO_SENSOR", "LOW_PERFUSION", "SENSOR_OFF"]);
    let obs = to_observations(&r, 0, &Terminology::builtin());
    assert_eq!(obs[0].abnormal_flags, "L");
    assert_eq!(obs[1].abnormal_flags, "H");
    assert_eq!(AlarmPriority::High.code(), "PH");
}

#[test]
fn utc_offset_and_other_models() {
    // Radical-5: no SN, 2-digit ALARM, 3-digit EXC; device clock in UTC+01:00.
    let r = parse_line(
        b"01/15/25 11:22:07 SPO2=097% BPM=072 PI=02.45% ALARM=00 EXC=000",
        60,
    )
    .unwrap();
    assert_eq!(r.device_time_us, T1);
    assert_eq!(r.serial, None);
    // Radical-7 rainbow, key order changed, EXC1 and signed PIDELTA.
    let r = parse_line(
        b"01/15/25 10:22:07 BPM=072 SN=---------- SPO2=097% SPHB=13.5 PIDELTA=-03 ALARM=000000 EXC=0000800 EXC1=00000000",
        0,
    )
    .unwrap();
    assert_eq!(r.serial, None);
    assert_eq!(r.value("PIDELTA").unwrap().value, Some(-3.0));
    assert_eq!(r.value("SPHB").unwrap().value, Some(13.5));
    assert_eq!(r.exc1, Some(0));
    assert_eq!(to_observations(&r, 0, &Terminology::builtin()).len(), 2);
}

#[test]
fn unparseable_value_is_kept_as_invalid() {
    let r = parse_line(b"01/15/25 10:22:07 SPO2=9x7% ALARM=0 EXC=0", 0).unwrap();
    let v = r.value("SPO2").unwrap();
    assert_eq!(
        (v.value, v.status, v.raw.as_str()),
        (None, ValueStatus::Unparseable, "9x7%")
    );
    let obs = to_observations(&r, 0, &Terminology::builtin());
    assert_eq!(obs[0].status, ObservationStatus::Invalid as i32);
    assert_eq!(obs[0].value_text, "9x7%");
}

#[test]
fn bad_lines_name_the_byte() {
    let cases: [(&[u8], MasimoError); 7] = [
        (
            b"1/15/25 10:22:07 ALARM=0 EXC=0",
            MasimoError::BadTimestamp {
                at: 0,
                found: "1/15/25 10:22:07 (byte 1)".into(),
            },
        ),
        (
            b"13/15/25 10:22:07 ALARM=0 EXC=0",
            MasimoError::BadTimestamp {
                at: 0,
                found: "13/15/25 10:22:07".into(),
            },
        ),
        (
            b"01/15/25 10:22:07 SPO2 ALARM=0 EXC=0",
            MasimoError::BadField {
                at: 18,
                found: "SPO2".into(),
            },
        ),
        (
            b"01/15/25 10:22:07 ALARM=0 EXC=0 ALARM=1",
            MasimoError::DuplicateKey {
                at: 32,
                key: "ALARM".into(),
            },
        ),
        (
            b"01/15/25 10:22:07 ALARM=00G0 EXC=0",
            MasimoError::BadHex {
                at: 24,
                key: "ALARM",
                found: "00G0".into(),
            },
        ),
        (
            b"01/15/25 10:22:07 SPO2=097% ALARM=0",
            MasimoError::MissingField { key: "EXC" },
        ),
        (
            b"01/15/25 10:22:07 SPO2=\xff",
            MasimoError::NotAscii { at: 23, byte: 0xFF },
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(
            parse_line(line, 0).unwrap_err(),
            expected,
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    assert_eq!(
        MasimoError::BadField {
            at: 18,
            found: "SPO2".into()
        }
        .to_string(),
        "byte 18: expected KEY=value, found 'SPO2'"
    );
}

#[test]
fn blank_lines_skipped_and_offsets_reported() {
    let bad = "garbage line\r\n";
    let stream = format!("\r\n{LINE1}\r\n\r\n{bad}{LINE2}");
    let events = decode_all(&mut MasimoCodec::default(), stream.as_bytes());
    assert_eq!(events.len(), 3);
    record(&events[0]);
    match &events[1] {
        MasimoEvent::Invalid {
            offset,
            line,
            reason,
        } => {
            assert_eq!(*offset as usize, 2 + LINE1.len() + 4);
            assert_eq!(line, "garbage line\r");
            assert!(matches!(reason, MasimoError::BadTimestamp { .. }));
        }
        other => panic!("{other:?}"),
    }
    record(&events[2]);
}

#[test]
fn oversized_line_is_dropped_once_then_decoding_resumes() {
    let long = format!("{}\r\n", "X".repeat(2000));
    let stream = format!("{long}{LINE1}");
    for chunk in [1, 7, 100, 5000] {
        let events = decode_split(stream.as_bytes(), chunk);
        assert_eq!(
            events[0],
            MasimoEvent::Oversized {
                offset: 0,
                len: long.len()
            },
            "chunk {chunk}"
        );
        assert_eq!(events.len(), 2);
        record(&events[1]);
    }
}

#[test]
fn split_at_every_byte_gives_the_same_events() {
    let stream = format!("{LINE1}\r\n{LINE2}junk\r\n{LINE1}");
    let whole = decode_split(stream.as_bytes(), stream.len());
    assert_eq!(whole.len(), 4);
    for split in 1..stream.len() {
        let (a, b) = stream.as_bytes().split_at(split);
        let mut codec = MasimoCodec::default();
        let mut buf = BytesMut::from(a);
        let mut out = Vec::new();
        while let Some(e) = codec.decode(&mut buf).unwrap() {
            out.push(e);
        }
        buf.extend_from_slice(b);
        while let Some(e) = codec.decode(&mut buf).unwrap() {
            out.push(e);
        }
        assert_eq!(out, whole, "split at {split}");
    }
}

#[test]
fn unterminated_line_at_eof_is_reported() {
    let events = decode_all(&mut MasimoCodec::default(), b"01/15/25 10:22:07 SPO2=0");
    assert!(matches!(
        events.as_slice(),
        [MasimoEvent::Invalid {
            offset: 0,
            reason: MasimoError::Unterminated,
            ..
        }]
    ));
}

proptest! {
    #[test]
    fn decoder_never_panics_and_chunking_does_not_matter(
        bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        chunk in 1usize..64,
    ) {
        let whole = decode_split(&bytes, bytes.len().max(1));
        prop_assert_eq!(decode_split(&bytes, chunk), whole);
    }

    #[test]
    fn line_like_input_never_panics(line in "[0-9/: A-Z=%+.-]{0,120}") {
        let _ = parse_line(line.as_bytes(), 0);
        let _ = decode_split(format!("{line}\r\n").as_bytes(), 3);
    }

    #[test]
    fn numbers_round_trip(spo2 in 0u32..=100, bpm in 0u32..=300, pi in 0u32..2000) {
        let line = format!(
            "02/29/24 23:59:59 SPO2={spo2:03}% BPM={bpm:03} PI={:02}.{:02}% ALARM=0000 EXC=000800",
            pi / 100, pi % 100
        );
        let r = parse_line(line.as_bytes(), 0).unwrap();
        prop_assert_eq!(r.value("SPO2").unwrap().value, Some(f64::from(spo2)));
        prop_assert_eq!(r.value("BPM").unwrap().value, Some(f64::from(bpm)));
        let got = r.value("PI").unwrap().value.unwrap();
        prop_assert!((got - f64::from(pi) / 100.0).abs() < 1e-9);
    }
}
