//! The bodies of the cargo-fuzz targets (`device-drivers/fuzz/fuzz_targets/<name>.rs`), one
//! function per target, so the fuzzer and the corpus regression test
//! (`device-drivers/tests/fuzz_corpus.rs`, part of the normal test run, no nightly needed) run
//! the same code on the same inputs.
//!
//! Every parser that reads network or device input has a target: MLLP framing, PCD-01 (and its
//! waveform rows), ADT,
//! the ACKs the PCD-04 output reads, MQTT topics and JSON/protobuf payloads, Masimo and MEDIBUS
//! (serial). Each must not panic on any input, and checks what it can cheaply: a decoded value
//! is checked again against the rules its decoder promises.
//!
//! Not a stable API: for the fuzz crate and the tests only.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::hl7::{
    ack_error_text, decode_adt, decode_pcd01, decode_pcd01_waveforms, parse_msa, WaveformConfig,
};
use crate::masimo::{to_observations, MasimoCodec, MasimoEvent};
use crate::medibus::{
    medibus_to_observations, parse_configure_realtime, parse_realtime_config, Action,
    DeviceIdentity, IntervalUnit, MedibusCodec, MedibusData, MedibusDevice, MedibusEvent,
    MedibusLimits, MedibusSession, RealtimeEvent, RealtimeSettings, SampleByteOrder,
    SessionTimings,
};
use crate::mllp::MllpCodec;
use crate::mqtt::{decode_payload, ObsTopic, PayloadFormat, MAX_MSG_ID_BYTES};
use crate::terminology::Terminology;

/// The body of a fuzz target: any bytes in, a panic for a finding.
pub type FuzzBody = fn(&[u8]);

/// Every target: its name (the cargo-fuzz binary and the corpus folder) and its body.
pub const TARGETS: &[(&str, FuzzBody)] = &[
    ("mllp", mllp),
    ("pcd01", pcd01),
    ("adt", adt),
    ("hl7_ack", hl7_ack),
    ("mqtt_topic", mqtt_topic),
    ("mqtt_json", mqtt_json),
    ("mqtt_pb", mqtt_pb),
    ("masimo", masimo),
    ("medibus", medibus),
    ("pcd01_waveform", pcd01_waveform),
    ("medibus_realtime", medibus_realtime),
];

/// The first byte chooses where the input is split in two reads (a frame across reads).
fn split(data: &[u8]) -> usize {
    data.first().map_or(0, |&b| usize::from(b)).min(data.len())
}

/// MLLP framing: arbitrary bytes, fed in two chunks, through the decode loop.
pub fn mllp(data: &[u8]) {
    let mut codec = MllpCodec::new(4096);
    let mut buf = BytesMut::new();
    let (a, b) = data.split_at(split(data));
    for part in [a, b] {
        buf.extend_from_slice(part);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
    }
    while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}
}

/// IHE PCD-01 decoding of one MLLP payload.
pub fn pcd01(data: &[u8]) {
    if let Ok(m) = decode_pcd01(data, 0, &Terminology::builtin()) {
        for o in &m.observations {
            assert!(
                o.value.is_none_or(f64::is_finite),
                "a decoded value is finite"
            );
        }
    }
}

/// IHE PCD-01 waveform decoding (WCM rows next to numerics) of one MLLP payload: every position
/// of a segment is a sample or a gap, the flagged runs lie inside the segment, and the bounds of
/// the configuration hold.
pub fn pcd01_waveform(data: &[u8]) {
    let config = WaveformConfig {
        max_samples: 4096,
        ..WaveformConfig::default()
    };
    let Ok(w) = decode_pcd01_waveforms(data, 0, &Terminology::builtin(), &config) else {
        return;
    };
    for o in &w.message.observations {
        assert!(
            o.value.is_none_or(f64::is_finite),
            "a decoded value is finite"
        );
    }
    for s in &w.segments {
        let missing: u64 = s.gaps.iter().map(|g| u64::from(g.count)).sum();
        assert_eq!(
            s.samples.len() as u64 + missing,
            u64::from(s.sample_count),
            "every position is a sample or a gap"
        );
        assert!(s.sample_count <= config.max_samples);
        assert!(s.sample_rate_hz > 0.0 && s.sample_rate_hz <= config.max_sample_rate_hz);
        assert!(s.scale > 0.0 && s.scale.is_finite());
        for run in s.gaps.iter().chain(&s.below_range).chain(&s.above_range) {
            assert!(run.count > 0);
            assert!(u64::from(run.start) + u64::from(run.count) <= u64::from(s.sample_count));
        }
    }
}

/// ADT (A01/A02/A03/A08 ...) decoding of one MLLP payload.
pub fn adt(data: &[u8]) {
    let Ok(m) = decode_adt(data) else { return };
    assert!(!m.patient.id.is_empty(), "a decoded ADT names its patient");
    if m.event.requires_location() {
        assert!(m.location.is_some(), "{:?} requires PV1-3", m.event);
    }
    for loc in [&m.location, &m.prior_location].into_iter().flatten() {
        let _ = loc.key();
    }
    assert_eq!(
        crate::hl7::AdtEventKind::from_code(m.event.code()),
        Some(m.event),
        "the event code round-trips"
    );
}

/// The ACK the PCD-04 output reads back from the alarm manager (MSA and ERR).
pub fn hl7_ack(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some((code, id)) = parse_msa(&text) {
        assert_eq!(code, code.trim().to_ascii_uppercase());
        assert_eq!(id, id.trim());
        assert!(!code.contains(['\r', '\n']) && !id.contains(['\r', '\n']));
    }
    if let Some(t) = ack_error_text(&text) {
        assert!(t.chars().count() <= 200 && !t.contains(['\r', '\n']));
    }
}

/// An MQTT topic, checked against the gateway id it names and against another one.
pub fn mqtt_topic(data: &[u8]) {
    let topic = String::from_utf8_lossy(data);
    let named = topic.split('/').nth(1).unwrap_or("gw").to_owned();
    for gateway in [named.as_str(), "gw"] {
        if let Ok(t) = ObsTopic::parse(&topic, gateway) {
            assert_eq!(t.to_string(), topic, "a parsed topic prints as received");
            assert_eq!(t.gateway_id, gateway);
            let again = ObsTopic::new(&t.gateway_id, &t.bed_id, &t.device_id, t.format);
            assert_eq!(again.as_ref(), Ok(&t), "its levels are valid ids");
        }
    }
}

/// A JSON observation payload (`.../obs/json`).
pub fn mqtt_json(data: &[u8]) {
    payload(PayloadFormat::Json, data);
}

/// A protobuf observation payload (`.../obs/pb`, `MqttBatch`).
pub fn mqtt_pb(data: &[u8]) {
    payload(PayloadFormat::Protobuf, data);
}

fn payload(format: PayloadFormat, data: &[u8]) {
    const RECEIVED: i64 = 1_714_564_800_000_000;
    let Ok(batch) = decode_payload(format, data, 64 * 1024, RECEIVED, &Terminology::builtin())
    else {
        return;
    };
    assert!(batch.msg_id.len() <= MAX_MSG_ID_BYTES);
    for (i, o) in batch.observations.iter().enumerate() {
        assert!(o.value.is_none_or(f64::is_finite), "observations[{i}]");
        assert!(o.device_id.is_empty() && o.bed.is_empty() && o.seq == 0);
        assert_eq!(o.receive_time_us, RECEIVED);
    }
}

/// Masimo ASCII 1: line codec, record parsing and mapping to observations.
pub fn masimo(data: &[u8]) {
    let terminology = Terminology::builtin();
    let mut codec = MasimoCodec::new(512, 60);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let (a, b) = data.split_at(split(data));
    for part in [a, b] {
        buf.extend_from_slice(part);
        while let Ok(Some(e)) = codec.decode(&mut buf) {
            events.push(e);
        }
    }
    while let Ok(Some(e)) = codec.decode_eof(&mut buf) {
        events.push(e);
    }
    for e in events {
        if let MasimoEvent::Line(record) = e {
            let _ = to_observations(&record, 0, &terminology);
            let _ = record.alarms();
            let _ = record.technical_conditions();
        }
    }
}

/// Dräger MEDIBUS: frame codec, payload parsers, the gateway session and the device responder.
/// The session's clock is simulated (700 ms per event from one start).
pub fn medibus(data: &[u8]) {
    let terminology = Terminology::builtin();
    let mut codec = MedibusCodec::new(1024);
    let mut buf = BytesMut::from(data);
    let mut events = Vec::new();
    while let Ok(Some(e)) = codec.decode(&mut buf) {
        events.push(e);
    }
    while let Ok(Some(e)) = codec.decode_eof(&mut buf) {
        events.push(e);
    }
    let t0 = Instant::now();
    let mut session = MedibusSession::new(SessionTimings::default());
    let mut device = MedibusDevice::new(DeviceIdentity {
        device_id: "0161".into(),
        name: "Fuzz".into(),
        revision: "01.00".into(),
    });
    let mut limits = MedibusLimits::default();
    for (i, event) in events.iter().enumerate() {
        let now = t0 + Duration::from_millis(i as u64 * 700);
        let _ = session.on_tick(now);
        if let MedibusEvent::Frame(frame) = event {
            let _ = device.on_frame(frame);
        }
        for action in session.on_event(event, now) {
            match action {
                Action::Data(MedibusData::LowLimits(v)) => limits.update_low(&v),
                Action::Data(MedibusData::HighLimits(v)) => limits.update_high(&v),
                Action::Data(MedibusData::Measured(v)) => {
                    let _ = medibus_to_observations(&v, &limits, None, 0, &terminology);
                }
                _ => {}
            }
        }
    }
}

/// MEDIBUS realtime data: the line (slow frames and realtime bytes mixed) through the codec
/// with its realtime decoder and a session with realtime on; the configuration parsers on the
/// raw input. Checks: a good frame has one bin per announced stream, a bad one none; every
/// sample of a curve is a 12-bit bin; the slow events are those of a codec without realtime.
pub fn medibus_realtime(data: &[u8]) {
    let order = if data.first().is_some_and(|b| b & 1 == 1) {
        SampleByteOrder::HighFirst
    } else {
        SampleByteOrder::LowFirst
    };
    let _ = parse_realtime_config(data, IntervalUnit::Microseconds);
    let _ = parse_configure_realtime(data);
    let mut codec = MedibusCodec::new(1024).with_realtime(order);
    let mut plain = MedibusCodec::new(1024);
    let mut session =
        MedibusSession::with_realtime(SessionTimings::default(), RealtimeSettings::ventilator());
    let t0 = Instant::now();
    let (a, b) = data.split_at(split(data));
    let (mut buf, mut plain_buf) = (BytesMut::new(), BytesMut::new());
    let mut i = 0u64;
    for part in [a, b] {
        buf.extend_from_slice(part);
        plain_buf.extend_from_slice(part);
        let mut events = Vec::new();
        while let Ok(Some(e)) = codec.decode(&mut buf) {
            events.push(e);
        }
        let mut plain_events = Vec::new();
        while let Ok(Some(e)) = plain.decode(&mut plain_buf) {
            plain_events.push(e);
        }
        assert_eq!(
            events, plain_events,
            "realtime decoding changed the slow events"
        );
        for e in &events {
            i += 1;
            let now = t0 + Duration::from_millis(i * 300);
            let _ = session.on_tick(now);
            let _ = session.on_event(e, now);
        }
        let frames = codec.take_realtime();
        for f in &frames {
            let announced = f.streams.count_ones() as usize;
            match f.fault {
                None => assert_eq!(f.bins.len(), announced),
                Some(_) => assert!(f.bins.is_empty()),
            }
        }
        let now = t0 + Duration::from_millis(i * 300);
        let mut actions = session.on_realtime(&frames, now);
        actions.extend(session.flush_realtime());
        for action in actions {
            if let Action::Realtime(RealtimeEvent::Waveform(run)) = action {
                assert!(run.samples.iter().flatten().all(|&s| s < 4096));
            }
        }
    }
    while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}
    let _ = codec.take_realtime();
}
