use base64::Engine as _;
use icu_protos::v1::Observation;

use super::*;
use crate::fhir::observation_bundle;
use crate::signing::GatewayKey;
use crate::Terminology;

/// A record as the bridge would produce it for `device` seqs `first..=last`.
fn signed(key: &GatewayKey, device: &str, first: u64, last: u64, offset: i64) -> ConsumedRecord {
    let observations: Vec<Observation> = (first..=last)
        .map(|seq| Observation {
            device_id: device.into(),
            seq,
            mdc_code: 150456,
            value: Some(96.0),
            unit_ucum: "%".into(),
            receive_time_us: 1_700_000_000_000_000,
            ..Default::default()
        })
        .collect();
    let value = observation_bundle(
        &crate::fhir::FhirContext::with_default_base("gw1"),
        device,
        &observations,
        &Terminology::builtin(),
    )
    .unwrap();
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&value));
    let headers: BTreeMap<String, String> = [
        (headers::SIGNATURE, signature.as_str()),
        (headers::SIGNATURE_ALG, "ed25519"),
        (headers::KEY_ID, key.key_id()),
        (headers::GATEWAY_ID, "gw1"),
        (headers::DEVICE_ID, device),
        (headers::SEQ_FIRST, &first.to_string()),
        (headers::SEQ_LAST, &last.to_string()),
        (headers::CONTENT_TYPE, "application/fhir+json"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    ConsumedRecord::new(
        0,
        offset,
        Some(device.into()),
        headers,
        value,
        Some(&key.verifying_key()),
    )
}

#[test]
fn clean_stream_has_no_gaps_and_verifies() {
    let key = GatewayKey::generate();
    let records = vec![
        signed(&key, "mon-1", 1, 3, 0),
        signed(&key, "mon-2", 1, 1, 1),
        signed(&key, "mon-1", 4, 5, 2),
    ];
    assert!(records.iter().all(|r| r.signature_ok == Some(true)));
    let report = report_from_records(&records, Some(&key.verifying_key()));
    assert_eq!(
        (report.records, report.signatures_ok, report.signatures_bad),
        (3, 3, 0)
    );
    assert_eq!((report.unsigned, report.unparseable), (0, 0));
    let d = &report.devices["mon-1"];
    assert_eq!((d.records, d.observations, d.distinct_seqs), (2, 5, 5));
    assert_eq!((d.first_seq, d.last_seq), (Some(1), Some(5)));
    assert!(d.gaps.is_empty());
    assert_eq!(d.duplicate_seqs, 0);
    assert!(report.is_clean());
    let summary = render_summary("icu.observations", &report);
    assert!(
        summary.contains("device mon-1: 2 records, 5 observations, seq 1..=5, no gaps"),
        "{summary}"
    );
    assert!(summary.contains("result: ok"), "{summary}");
}

#[test]
fn gaps_and_duplicates_are_counted() {
    let key = GatewayKey::generate();
    let records = vec![
        signed(&key, "mon-1", 1, 3, 0),
        signed(&key, "mon-1", 3, 4, 1),   // seq 3 again: one duplicate
        signed(&key, "mon-1", 7, 7, 2),   // 5-6 missing
        signed(&key, "mon-1", 10, 12, 3), // 8-9 missing
        signed(&key, "mon-1", 10, 12, 4), // full re-send: three duplicates
    ];
    let report = report_from_records(&records, Some(&key.verifying_key()));
    let d = &report.devices["mon-1"];
    assert_eq!(d.gaps, [(5, 6), (8, 9)]);
    assert_eq!(d.duplicate_seqs, 4);
    assert_eq!(d.distinct_seqs, 8);
    assert_eq!((d.first_seq, d.last_seq), (Some(1), Some(12)));
    assert_eq!(d.observations, 12);
    assert!(!report.is_clean());
    let summary = render_summary("t", &report);
    assert!(
        summary.contains("2 gap(s): 5-6, 8-9") && summary.contains("FAILED"),
        "{summary}"
    );
}

#[test]
fn tampered_wrong_key_and_unsigned_records() {
    let key = GatewayKey::generate();
    let other = GatewayKey::generate();
    let mut tampered = signed(&key, "mon-1", 2, 2, 1);
    let pos = tampered.value.len() / 2;
    tampered.value[pos] ^= 0x01;
    let forged = signed(&other, "mon-1", 3, 3, 2);
    let mut unsigned = signed(&key, "mon-1", 4, 4, 3);
    unsigned.headers.remove(headers::SIGNATURE);
    let records = vec![signed(&key, "mon-1", 1, 1, 0), tampered, forged, unsigned];

    let report = report_from_records(&records, Some(&key.verifying_key()));
    assert_eq!(report.signatures_ok, 1);
    assert_eq!(report.signatures_bad, 2);
    assert_eq!(report.unsigned, 1);
    // Bad records never fill a gap: seqs 2 and 3 are missing.
    assert_eq!(report.devices["mon-1"].gaps, [(2, 3)]);
    assert!(!report.is_clean());
    // The forged record names a key we were not given: reported by key id, with its offset.
    assert_eq!(report.unknown_key_records, 1);
    assert_eq!(
        report.unknown_keys[other.key_id()].first_offsets,
        [(0, 2)],
        "{:?}",
        report.unknown_keys
    );
    // With both keys (a key directory after a rotation), the forged one verifies too.
    let mut ring = crate::signing::KeyRing::single(key.verifying_key());
    ring.insert(other.verifying_key());
    let report = crate::consume::report_with_keys(&records, Some(&ring));
    assert_eq!((report.signatures_ok, report.signatures_bad), (2, 1));
    assert_eq!(report.unknown_key_records, 0);

    // Without a key, signed records are neither ok nor bad.
    let report = report_from_records(&records, None);
    assert_eq!(
        (report.signatures_ok, report.signatures_bad, report.unsigned),
        (0, 0, 1)
    );
}

#[test]
fn wrong_algorithm_header_fails_and_unparseable_values_are_counted() {
    let key = GatewayKey::generate();
    let mut rec = signed(&key, "mon-1", 1, 1, 0);
    rec.headers
        .insert(headers::SIGNATURE_ALG.into(), "rsa".into());
    let garbage = ConsumedRecord::new(
        0,
        1,
        Some("mon-9".into()),
        BTreeMap::new(),
        b"not a bundle".to_vec(),
        Some(&key.verifying_key()),
    );
    assert_eq!(garbage.signature_ok, None);
    let report = report_from_records(&[rec, garbage], Some(&key.verifying_key()));
    assert_eq!(report.signatures_bad, 1);
    assert_eq!(report.unparseable, 1);
    assert_eq!(
        report.devices["mon-9"].records, 1,
        "device falls back to the record key"
    );
    assert_eq!(report.devices["mon-9"].distinct_seqs, 0);
}

#[test]
fn missing_seq_headers_fall_back_to_the_bundle_and_huge_ranges_are_ignored() {
    let key = GatewayKey::generate();
    let mut rec = signed(&key, "mon-1", 5, 6, 0);
    rec.seq_first = None;
    rec.seq_last = None;
    let mut huge = signed(&key, "mon-1", 7, 7, 1);
    huge.seq_last = Some(u64::MAX);
    let report = report_from_records(&[rec, huge], Some(&key.verifying_key()));
    let d = &report.devices["mon-1"];
    assert_eq!(
        (d.first_seq, d.last_seq, d.distinct_seqs),
        (Some(5), Some(7), 3)
    );
}

#[test]
fn json_lines_hold_only_verified_records() {
    let key = GatewayKey::generate();
    let mut bad = signed(&key, "mon-1", 2, 2, 1);
    bad.signature_ok = Some(false);
    let records = vec![signed(&key, "mon-1", 1, 1, 0), bad];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    assert_eq!(write_verified_json_lines(&path, &records).unwrap(), 1);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["offset"], 0);
    assert_eq!(lines[0]["headers"][headers::DEVICE_ID], "mon-1");
    assert_eq!(lines[0]["value"]["resourceType"], "Bundle");
}

#[test]
fn report_serializes_for_json_output() {
    let key = GatewayKey::generate();
    let report = report_from_records(
        &[signed(&key, "mon-1", 1, 2, 0)],
        Some(&key.verifying_key()),
    );
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["devices"]["mon-1"]["last_seq"], 2);
    assert_eq!(v["devices"]["mon-1"]["gaps"], serde_json::json!([]));
}

#[test]
fn adt_and_alarm_records_are_accounted_by_their_seq_headers() {
    use icu_protos::v1::{AdtEvent, Alarm};

    let key = GatewayKey::generate();
    let with_value = |device: &str, seq: u64, key_str: &str, value: Vec<u8>| {
        let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&value));
        let headers: BTreeMap<String, String> = [
            (headers::SIGNATURE, signature.as_str()),
            (headers::SIGNATURE_ALG, "ed25519"),
            (headers::GATEWAY_ID, "gw1"),
            (headers::DEVICE_ID, device),
            (headers::SEQ_FIRST, &seq.to_string()),
            (headers::SEQ_LAST, &seq.to_string()),
            (headers::PATIENT_ID, key_str),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        ConsumedRecord::new(
            0,
            seq as i64,
            Some(key_str.into()),
            headers,
            value,
            Some(&key.verifying_key()),
        )
    };
    let adt = |seq: u64| {
        let event = AdtEvent {
            event: "A01".into(),
            patient_id: "MRN1".into(),
            event_time_us: 1_700_000_000_000_000,
            ..Default::default()
        };
        with_value(
            "adt",
            seq,
            "MRN1",
            crate::fhir::adt_bundle(
                &crate::fhir::FhirContext::with_default_base("gw1"),
                "adt",
                seq,
                &event,
            )
            .unwrap(),
        )
    };
    let alarm = Alarm {
        seq: 1,
        event_time_us: 1_700_000_000_000_000,
        patient_id: "MRN1".into(),
        ..Default::default()
    };
    let alarm_value = crate::fhir::alarm_observation(
        &crate::fhir::FhirContext::with_default_base("gw1"),
        "mon-1",
        &alarm,
    )
    .unwrap();
    let records = vec![
        adt(1),
        adt(2),
        adt(4),
        with_value("mon-1", 1, "MRN1", alarm_value),
    ];
    let report = report_from_records(&records, Some(&key.verifying_key()));
    assert_eq!((report.records, report.signatures_ok), (4, 4));
    let d = &report.devices["adt"];
    assert_eq!((d.records, d.observations, d.distinct_seqs), (3, 0, 3));
    assert_eq!(d.gaps, [(3, 3)], "the device header, not the patient key");
    assert_eq!(report.devices["mon-1"].distinct_seqs, 1);
    assert!(!report.devices.contains_key("MRN1"));
}

#[test]
fn dead_letter_json_is_not_unparseable_and_counts_its_seqs() {
    let key = GatewayKey::generate();
    let dl = icu_protos::v1::DeadLetter {
        transport: "mllp".into(),
        reason: "bad segment".into(),
        raw: b"MSH|".to_vec(),
        raw_len: 4,
        ..Default::default()
    };
    let dead_letter = |seq: u64, offset: i64| {
        let value = crate::deadletter::dead_letter_json("gw1", "mon-1", seq, &dl).unwrap();
        let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&value));
        let headers: BTreeMap<String, String> = [
            (headers::SIGNATURE, signature.as_str()),
            (headers::SIGNATURE_ALG, "ed25519"),
            (headers::KEY_ID, key.key_id()),
            (headers::DEVICE_ID, "mon-1"),
            (headers::SEQ_FIRST, &seq.to_string()),
            (headers::SEQ_LAST, &seq.to_string()),
            (headers::CONTENT_TYPE, headers::CONTENT_TYPE_JSON),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        ConsumedRecord::new(
            0,
            offset,
            Some("mon-1".into()),
            headers,
            value,
            Some(&key.verifying_key()),
        )
    };
    let records = vec![dead_letter(1, 0), dead_letter(3, 1)];
    let report = report_from_records(&records, Some(&key.verifying_key()));
    assert_eq!((report.signatures_ok, report.unparseable), (2, 0));
    let dev = &report.devices["mon-1"];
    assert_eq!((dev.records, dev.observations), (2, 0));
    assert_eq!(dev.gaps, [(2, 2)]);
}

/// The `icu.audit` record of entry `seq` chained to `prev`, as the bridge produces it; the
/// entry's own signature is over its hash (here any 32 bytes, as the consumer cannot recompute it).
fn audit_record(
    key: &GatewayKey,
    seq: u64,
    prev_hash: [u8; 32],
    offset: i64,
) -> (ConsumedRecord, [u8; 32]) {
    let hash: [u8; 32] = Sha256::digest(format!("entry {seq}")).into();
    let entry = icu_protos::v1::AuditEntry {
        seq,
        time_us: 1_700_000_000_000_000 + seq as i64,
        account: "dr.test".into(),
        role: "physician".into(),
        action: "login".into(),
        target_kind: "none".into(),
        outcome: "success".into(),
        prev_hash: prev_hash.to_vec(),
        hash: hash.to_vec(),
        key_id: key.key_id().into(),
        signature: key.sign(&hash).to_vec(),
        ..Default::default()
    };
    let value =
        crate::fhir::audit_event(&crate::fhir::FhirContext::with_default_base("gw1"), &entry)
            .unwrap();
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&value));
    let headers: BTreeMap<String, String> = [
        (headers::SIGNATURE, signature.as_str()),
        (headers::SIGNATURE_ALG, "ed25519"),
        (headers::GATEWAY_ID, "gw1"),
        (headers::DEVICE_ID, "audit"),
        (headers::SEQ_FIRST, &seq.to_string()),
        (headers::SEQ_LAST, &seq.to_string()),
        (headers::CONTENT_TYPE, "application/fhir+json"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let record = ConsumedRecord::new(
        0,
        offset,
        Some("gw1".into()),
        headers,
        value,
        Some(&key.verifying_key()),
    );
    (record, hash)
}

#[test]
fn audit_entries_verify_chain_and_show_a_gap() {
    let key = GatewayKey::generate();
    let (r1, h1) = audit_record(&key, 1, [0; 32], 0);
    let (r2, h2) = audit_record(&key, 2, h1, 1);
    let (r3, _) = audit_record(&key, 3, h2, 2);
    let clean = report_from_records(
        &[r1.clone(), r2.clone(), r3.clone()],
        Some(&key.verifying_key()),
    );
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!((clean.audit_entries, clean.unparseable), (3, 0));
    let d = clean.stream("gw1", "audit").unwrap();
    assert_eq!(
        (d.first_seq, d.last_seq, d.audit_entries),
        (Some(1), Some(3), 3)
    );
    assert!(render_summary("icu.audit", &clean)
        .contains("3 audit entries (entry signatures and chain ok)"));

    // Entry 2 missing: a gap (3 follows nothing, so no chain break is claimed).
    let gap = report_from_records(&[r1.clone(), r3.clone()], Some(&key.verifying_key()));
    let d = gap.stream("gw1", "audit").unwrap();
    assert_eq!(d.gaps, [(2, 2)]);
    assert!(d.audit_chain_breaks.is_empty());
    assert!(!gap.is_clean());

    // Entry 3 chained to something else; entry 2 signed by another key (record re-signed).
    let other = GatewayKey::generate();
    let (bad3, _) = audit_record(&key, 3, [7; 32], 2);
    let (mut forged2, _) = audit_record(&other, 2, h1, 1);
    forged2.headers.insert(
        headers::SIGNATURE.into(),
        base64::engine::general_purpose::STANDARD.encode(key.sign(&forged2.value)),
    );
    let report = report_from_records(&[r1, forged2, bad3], Some(&key.verifying_key()));
    let d = report.stream("gw1", "audit").unwrap();
    assert_eq!(report.signatures_bad, 0, "the records themselves verify");
    assert_eq!(d.audit_entries_bad, [2]);
    assert_eq!(d.audit_chain_breaks, [3]);
    assert!(!report.is_clean());
    assert!(render_summary("icu.audit", &report).contains("audit chain broken before seq [3]"));
}

/// A signed `icu.waveforms` record of `device` whose only segment's data text is `data`.
fn waveform_record(key: &GatewayKey, seq: u64, data: &str) -> ConsumedRecord {
    let segment = icu_protos::v1::WaveformSegment {
        seq,
        mdc_code: 131330,
        unit_ucum: "mV".into(),
        sample_period_us: 2000.0,
        scale: 1.0,
        receive_time_us: 1_700_000_000_000_000,
        sample_count: 4,
        samples: vec![1, 2, 3],
        gaps: vec![icu_protos::v1::SampleRun { start: 1, count: 1 }],
        ..Default::default()
    };
    let value = crate::fhir::waveform_bundle(
        &crate::fhir::FhirContext::with_default_base("gw1"),
        "mon-1",
        &[segment],
        &Terminology::builtin(),
    )
    .unwrap();
    let value = String::from_utf8(value)
        .unwrap()
        .replace("\"1 E 2 3\"", &format!("{data:?}"))
        .into_bytes();
    // The headers of a signed record of the same seq, signed again over this value.
    let mut headers = signed(key, "mon-1", seq, seq, 0).headers;
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&value));
    headers.insert(headers::SIGNATURE.into(), signature);
    headers.insert(headers::STREAM.into(), "waveforms".into());
    ConsumedRecord::new(0, seq as i64, None, headers, value, None)
}

#[test]
fn waveform_records_are_counted_to_their_gaps_and_an_unreadable_one_fails_the_report() {
    let key = GatewayKey::generate();
    let good = vec![
        waveform_record(&key, 1, "1 E 2 3"),
        waveform_record(&key, 2, "1 E 2 3"),
    ];
    let report = report_from_records(&good, Some(&key.verifying_key()));
    assert!(report.is_clean(), "{report:?}");
    let d = report.stream("gw1", "mon-1").unwrap();
    assert_eq!(
        (
            d.waveform_records,
            d.waveform_segments,
            d.waveform_samples,
            d.waveform_gaps
        ),
        (2, 2, 8, 2)
    );
    let summary = render_summary("icu.waveforms", &report);
    assert!(
        summary.contains("2 waveform records (2 segments, 8 samples, 2 gaps)"),
        "{summary}"
    );

    // A sample that is no number: signed and gapless, but its curve cannot be read back.
    let mut bad = good.clone();
    bad.push(waveform_record(&key, 3, "1 E x 3"));
    let report = report_from_records(&bad, Some(&key.verifying_key()));
    assert!(!report.is_clean());
    assert_eq!(
        report.stream("gw1", "mon-1").unwrap().waveforms_bad,
        [(0, 3)]
    );
    assert!(render_summary("icu.waveforms", &report)
        .contains("waveforms or alarm snippets that cannot be read back"));
}
