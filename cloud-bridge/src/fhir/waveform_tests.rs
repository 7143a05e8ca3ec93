//! The waveform and alarm-snippet mappings: what a consumer finds in them, that every sample
//! comes back exactly, and their golden bytes (`golden_waveform_bundles.jsonl`: one waveform
//! bundle, then one snippet bundle; regenerate only on purpose with `ICU_BLESS_GOLDEN=1 cargo
//! test -p icu-cloud-bridge golden`).

use icu_protos::v1::{AlarmSnippet, ObservationStatus, SampleRun, WaveformSegment};
use serde_json::Value;

use super::snippet::{snippet_bundle, snippet_of};
use super::waveform::{decode_value, waveform_bundle, DecodedSegment};
use super::{observations_of, FhirContext};
use crate::Terminology;

const GOLDEN: &str = include_str!("golden_waveform_bundles.jsonl");
const GOLDEN_PATH: &str = "src/fhir/golden_waveform_bundles.jsonl";
const T0: i64 = 1_700_000_000_000_000;

/// ECG lead II at 500 Hz in mV with 3 decimals: 12 positions, a gap of two, one sample below
/// and one above the data range (-0.5..0.5 mV).
fn ecg(seq: u64) -> WaveformSegment {
    WaveformSegment {
        device_id: "mon-1".into(),
        seq,
        bed: "bed-01".into(),
        mdc_code: 131330,
        mdc_refid: "MDC_ECG_ELEC_POTL_II".into(),
        containment_id: "1.1.1.1002".into(),
        unit_ucum: "mV".into(),
        unit_mdc_code: 266418,
        sample_rate_hz: 500.0,
        sample_period_us: 2000.0,
        decimal_exponent: -3,
        scale: 1.0,
        offset: 0.0,
        range_low: Some(-0.5),
        range_high: Some(0.5),
        first_sample_time_us: Some(T0 + (seq as i64 - 1) * 24_000),
        receive_time_us: T0 + 250_000 + seq as i64,
        clock_synced: true,
        sample_count: 12,
        samples: vec![125, 130, -10, 0, -600, 7, 480, 620, 3, -2],
        gaps: vec![SampleRun { start: 2, count: 2 }],
        below_range: vec![SampleRun { start: 6, count: 1 }],
        above_range: vec![SampleRun { start: 9, count: 1 }],
        equipment_id: "0123456789ABCDEF".into(),
        patient_id: "P-0042".into(),
        source_message_id: "MSG-W1".into(),
        source_row: 3,
        status: ObservationStatus::Valid as i32,
        ..Default::default()
    }
}

/// Pleth at 125 Hz, scaled, with an offset and a device time the gateway did not trust.
fn pleth(seq: u64) -> WaveformSegment {
    WaveformSegment {
        mdc_code: 150452,
        mdc_refid: "MDC_PULS_OXIM_PLETH".into(),
        containment_id: "1.2.1.150452".into(),
        unit_ucum: "1".into(),
        sample_rate_hz: 125.0,
        sample_period_us: 8000.0,
        decimal_exponent: 0,
        scale: 0.25,
        offset: -8.0,
        range_low: None,
        range_high: Some(4000.0),
        first_sample_time_us: Some(T0 - 3_600_000_000),
        device_time_untrusted: true,
        sample_count: 5,
        samples: vec![2048, 2050, 4095, 2100, 1999],
        gaps: vec![],
        below_range: vec![],
        above_range: vec![SampleRun { start: 2, count: 1 }],
        status: ObservationStatus::Test as i32,
        ..ecg(seq)
    }
}

fn snippet(alarm_seq: u64, patient: &str) -> AlarmSnippet {
    let cut = |mut s: WaveformSegment| {
        s.seq = 0; // segments from the live ring may not carry their store seq
        s.patient_id = "someone-else".into(); // the snippet's patient wins
        s
    };
    AlarmSnippet {
        device_id: "mon-1".into(),
        seq: 42,
        bed: "bed-01".into(),
        alarm_id: "bed-01:spo2-low".into(),
        alarm_mdc_code: 196648,
        alarm_source: "limit".into(),
        alarm_text: "SpO2 low".into(),
        alarm_seq,
        alarm_start_us: T0 + 15_000_000,
        window_start_us: T0,
        window_end_us: T0 + 30_000_000,
        patient_id: patient.into(),
        segments: vec![cut(ecg(7)), cut(pleth(8))],
        built_time_us: T0 + 31_000_000,
    }
}

fn cx() -> FhirContext {
    FhirContext::with_default_base("gw1")
}

/// The extension `name` of resource or element `o` (panics when absent).
fn extension(o: &Value, name: &str) -> Value {
    o["extension"]
        .as_array()
        .and_then(|exts| {
            exts.iter()
                .find(|e| e["url"].as_str().unwrap().ends_with(&format!("/{name}")))
        })
        .cloned()
        .unwrap_or_else(|| panic!("no extension {name} in {o}"))
}

fn positions(seg: &WaveformSegment) -> Vec<Option<i32>> {
    let mut samples = seg.samples.iter().copied();
    (0..seg.sample_count)
        .map(|i| {
            let gap = seg
                .gaps
                .iter()
                .any(|r| (r.start..r.start + r.count).contains(&i));
            if gap {
                None
            } else {
                samples.next()
            }
        })
        .collect()
}

#[test]
fn each_segment_is_a_sampled_data_observation_a_consumer_reads_back_exactly() {
    let t = Terminology::builtin();
    let segs = [ecg(7), pleth(8)];
    let bytes = waveform_bundle(&cx(), "mon-1", &segs, &t).unwrap();
    assert_eq!(
        bytes,
        waveform_bundle(&cx(), "mon-1", &segs, &t).unwrap(),
        "deterministic bytes"
    );
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["type"], "collection");
    assert_eq!(v["id"], "gw1-mon-1-waveforms-7-8");
    assert_eq!(
        v["identifier"]["system"],
        "urn:icu-gateway:gw1:mon-1:waveforms"
    );
    assert_eq!(v["identifier"]["value"], "7-8");
    let ecg_obs = &v["entry"][0]["resource"];
    assert_eq!(ecg_obs["id"], "gw1-mon-1-wave-7");
    assert_eq!(
        ecg_obs["meta"]["profile"][0],
        "http://hl7.org/fhir/uv/pocd/StructureDefinition/SampleArrayObservation"
    );
    assert_eq!(ecg_obs["status"], "final");
    assert_eq!(ecg_obs["code"]["coding"][0]["code"], "131330");
    assert_eq!(
        ecg_obs["code"]["coding"][0]["display"],
        "MDC_ECG_ELEC_POTL_II"
    );
    assert_eq!(ecg_obs["subject"]["reference"], "Patient/P-0042");
    assert_eq!(ecg_obs["device"]["reference"], "Device/gw1-mon-1");
    assert_eq!(ecg_obs["identifier"][0]["value"], "7");
    assert_eq!(
        ecg_obs["effectivePeriod"],
        serde_json::json!({"start": "2023-11-14T22:13:20.144Z", "end": "2023-11-14T22:13:20.168Z"}),
        "first sample to the end of the last sample's period (12 x 2 ms)"
    );
    assert_eq!(ecg_obs["issued"], "2023-11-14T22:13:20.250007Z");
    let sd = &ecg_obs["valueSampledData"];
    assert_eq!(
        sd["origin"],
        serde_json::json!({"value": 0.0, "unit": "mV", "system": "http://unitsofmeasure.org", "code": "mV"})
    );
    assert_eq!(sd["period"], 2.0);
    assert_eq!(sd["factor"], 0.001);
    assert_eq!(sd["lowerLimit"], -0.5);
    assert_eq!(sd["upperLimit"], 0.5);
    assert_eq!(sd["dimensions"], 1);
    assert_eq!(sd["data"], "125 130 E E -10 0 L 7 480 U 3 -2");
    assert_eq!(
        sd["extension"][0]["url"],
        "http://icu-gateway.org/fhir/StructureDefinition/sampled-data-limit-values"
    );
    assert_eq!(sd["extension"][0]["valueString"], "-600 620");

    // Pleth: scale and offset, no lower limit (so no L), an untrusted device time, test data.
    let p = &v["entry"][1]["resource"];
    let sd = &p["valueSampledData"];
    assert_eq!(sd["origin"]["value"], -8.0);
    assert_eq!(sd["factor"], 0.25);
    assert_eq!(sd["upperLimit"], 992.0, "-8 + 0.25 x 4000");
    assert!(sd.get("lowerLimit").is_none());
    assert_eq!(sd["data"], "2048 2050 U 2100 1999");
    assert!(
        p.get("effectivePeriod").is_none(),
        "an untrusted time is no effective time"
    );
    assert_eq!(extension(p, "device-time-status")["valueCode"], "untrusted");
    assert_eq!(
        extension(p, "untrusted-device-time")["valueString"],
        "2023-11-14T21:13:20Z"
    );
    assert_eq!(extension(p, "measurement-status")["valueCode"], "test");
    assert_eq!(extension(p, "seq")["valueString"], "8");

    // The consumer: every sample back, E exactly at the gaps.
    let decoded = decode_value(&bytes).unwrap();
    assert_eq!(decoded.len(), 2);
    for (d, seg) in decoded.iter().zip(&segs) {
        assert_eq!(d.samples, positions(seg), "segment {}", seg.seq);
        assert_eq!(d.seq, seg.seq);
        assert_eq!(d.device_id, "mon-1");
        assert_eq!(d.mdc_code, seg.mdc_code);
        assert_eq!(d.mdc_refid, seg.mdc_refid);
        assert_eq!(d.patient_id.as_deref(), Some("P-0042"));
    }
    let d: &DecodedSegment = &decoded[0];
    assert_eq!((d.period_ms, d.factor, d.origin), (2.0, 0.001, 0.0));
    assert_eq!(d.first_sample_time_us, Some(T0 + 144_000));
    assert_eq!(d.gaps(), 2);
    assert_eq!(d.below_range, ecg(7).below_range);
    assert_eq!(d.above_range, ecg(7).above_range);
    assert_eq!(decoded[1].first_sample_time_us, None);
    // The generic reader sees the seqs too (what `icu-bridge consume` accounts by).
    let seqs: Vec<u64> = observations_of(&bytes)
        .unwrap()
        .iter()
        .map(|o| o.seq)
        .collect();
    assert_eq!(seqs, [7, 8]);
}

#[test]
fn an_unassociated_segment_has_the_device_as_subject_and_bad_segments_are_refused() {
    let t = Terminology::builtin();
    let mut seg = ecg(1);
    seg.patient_id = String::new();
    seg.first_sample_time_us = None;
    let v: Value =
        serde_json::from_slice(&waveform_bundle(&cx(), "mon-1", &[seg.clone()], &t).unwrap())
            .unwrap();
    let obs = &v["entry"][0]["resource"];
    assert_eq!(obs["subject"]["reference"], "Device/gw1-mon-1");
    assert_eq!(obs["meta"]["tag"][0]["code"], "unassociated");
    assert!(obs.get("effectivePeriod").is_none());
    let status = extension(obs, "device-time-status");
    assert_eq!(status["valueCode"], "missing");
    assert_eq!(
        decode_value(&serde_json::to_vec(&v).unwrap()).unwrap()[0].patient_id,
        None
    );

    let mut short = ecg(2);
    short.samples.pop();
    let err = waveform_bundle(&cx(), "mon-1", &[short], &t).unwrap_err();
    assert!(
        err.to_string().contains("9 samples for 12 positions"),
        "{err}"
    );
    let mut nan = ecg(3);
    nan.sample_period_us = f64::NAN;
    assert!(waveform_bundle(&cx(), "mon-1", &[nan], &t).is_err());
    assert!(waveform_bundle(&cx(), "mon-1", &[], &t).is_err());
}

#[test]
fn a_snippet_is_a_report_grouping_its_curves_and_naming_the_alarm_start() {
    let t = Terminology::builtin();
    let s = snippet(41, "P-0042");
    let bytes = snippet_bundle(&cx(), "mon-1", &s, &t).unwrap();
    assert_eq!(bytes, snippet_bundle(&cx(), "mon-1", &s, &t).unwrap());
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["id"], "gw1-mon-1-alarms-42-42");
    assert_eq!(
        v["identifier"]["system"],
        "urn:icu-gateway:gw1:mon-1:alarms"
    );
    let entries = v["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "the report and its two curves");
    let report = &entries[0]["resource"];
    assert_eq!(report["resourceType"], "DiagnosticReport");
    assert_eq!(report["id"], "gw1-mon-1-snippet-42");
    assert_eq!(report["code"]["coding"][0]["code"], "alarm-snippet");
    assert_eq!(report["code"]["text"], "SpO2 low");
    assert_eq!(report["subject"]["reference"], "Patient/P-0042");
    assert_eq!(
        report["effectivePeriod"],
        serde_json::json!({"start": "2023-11-14T22:13:20Z", "end": "2023-11-14T22:13:50Z"})
    );
    let results: Vec<&Value> = report["result"].as_array().unwrap().iter().collect();
    for (r, e) in results.iter().zip(&entries[1..]) {
        assert_eq!(
            r["reference"], e["fullUrl"],
            "each result is an entry of the bundle"
        );
        assert_eq!(e["resource"]["subject"]["reference"], "Patient/P-0042");
        assert!(e["resource"].get("identifier").is_none());
    }
    assert_eq!(entries[1]["resource"]["id"], "gw1-mon-1-snippet-42-0");
    let alarm = extension(report, "alarm-observation");
    assert_eq!(
        alarm["valueReference"]["reference"], "Observation/gw1-mon-1-alarm-41",
        "the id fhir/alarm.rs gives the alarm's start"
    );

    let read = snippet_of(&bytes).unwrap().expect("a snippet");
    assert_eq!(read.seq, 42);
    assert_eq!(read.alarm, "Observation/gw1-mon-1-alarm-41");
    assert_eq!(read.window_start_us, Some(T0));
    assert_eq!(read.window_end_us, Some(T0 + 30_000_000));
    assert_eq!(read.segments.len(), 2);
    assert_eq!(read.segments[0].samples, positions(&ecg(7)));
    assert_eq!(read.segments[1].samples, positions(&pleth(8)));
    assert!(read.segments.iter().all(|d| d.seq == 42));
    // The generic reader accounts it under the snippet's seq.
    assert!(observations_of(&bytes).unwrap().iter().all(|o| o.seq == 42));

    // Unknown start seq: referred to by the alarm's id; no patient: the device, tagged.
    let v: Value =
        serde_json::from_slice(&snippet_bundle(&cx(), "mon-1", &snippet(0, ""), &t).unwrap())
            .unwrap();
    let report = &v["entry"][0]["resource"];
    let alarm = extension(report, "alarm-observation");
    assert_eq!(
        alarm["valueReference"]["identifier"],
        serde_json::json!({"system": "urn:icu-gateway:gw1:mon-1:alarm-id", "value": "bed-01:spo2-low"})
    );
    assert_eq!(report["subject"]["reference"], "Device/gw1-mon-1");
    assert_eq!(report["meta"]["tag"][0]["code"], "unassociated");
    assert_eq!(
        v["entry"][1]["resource"]["meta"]["tag"][0]["code"], "unassociated",
        "its curves too"
    );
    let read = snippet_of(&serde_json::to_vec(&v).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(read.alarm, "alarm-id:bed-01:spo2-low");

    // A report whose results do not match its curves is refused; an alarm bundle has none.
    let mut broken = v.clone();
    broken["entry"][0]["resource"]["result"]
        .as_array_mut()
        .unwrap()
        .pop();
    assert!(snippet_of(&serde_json::to_vec(&broken).unwrap()).is_err());
    let alarms = super::alarm_bundle(
        &cx(),
        "mon-1",
        &[icu_protos::v1::Alarm {
            seq: 1,
            event_time_us: T0,
            ..Default::default()
        }],
    )
    .unwrap();
    assert_eq!(snippet_of(&alarms).unwrap(), None);
}

fn render() -> String {
    let t = Terminology::builtin();
    let mut s = String::new();
    for bytes in [
        waveform_bundle(&cx(), "mon-1", &[ecg(7), pleth(8)], &t).unwrap(),
        snippet_bundle(&cx(), "mon-1", &snippet(41, "P-0042"), &t).unwrap(),
    ] {
        s.push_str(std::str::from_utf8(&bytes).unwrap());
        s.push('\n');
    }
    s
}

#[test]
fn waveform_and_snippet_bundles_are_byte_identical_to_the_golden_file() {
    super::golden::check_golden(&render(), GOLDEN, GOLDEN_PATH);
}

mod through_fhir {
    use super::*;
    use proptest::prelude::*;

    /// Runs of the positions `i` where `pick(i)` holds.
    fn runs(n: u32, pick: impl Fn(u32) -> bool) -> Vec<SampleRun> {
        let mut out: Vec<SampleRun> = Vec::new();
        for i in (0..n).filter(|i| pick(*i)) {
            match out.last_mut() {
                Some(r) if r.start + r.count == i => r.count += 1,
                _ => out.push(SampleRun { start: i, count: 1 }),
            }
        }
        out
    }

    proptest! {
        /// Whatever the segment (any integers, gaps, out-of-range runs, scale sign, exponent),
        /// the consumer gets every sample back bit-exact from the FHIR JSON, `None` exactly at
        /// the gaps.
        #[test]
        fn every_sample_survives_the_fhir_round_trip(
            positions in prop::collection::vec(
                prop_oneof![4 => any::<i32>().prop_map(Some), 1 => Just(None)], 1..400),
            marks in prop::collection::vec(0u8..4, 400),
            negative in any::<bool>(),
            exponent in -9i32..3,
        ) {
            let n = positions.len() as u32;
            let present = |i: u32| positions[i as usize].is_some();
            let seg = WaveformSegment {
                sample_count: n,
                samples: positions.iter().flatten().copied().collect(),
                gaps: runs(n, |i| !present(i)),
                below_range: runs(n, |i| present(i) && marks[i as usize] == 1),
                above_range: runs(n, |i| present(i) && marks[i as usize] == 2),
                scale: if negative { -0.5 } else { 0.5 },
                decimal_exponent: exponent,
                ..ecg(9)
            };
            let bytes = waveform_bundle(&cx(), "mon-1", std::slice::from_ref(&seg), &Terminology::builtin())
                .unwrap();
            let decoded = decode_value(&bytes).unwrap();
            prop_assert_eq!(decoded.len(), 1);
            prop_assert_eq!(&decoded[0].samples, &positions);
            prop_assert_eq!(decoded[0].factor, seg.scale * 10f64.powi(exponent));
        }
    }
}
