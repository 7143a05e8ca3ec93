use base64::Engine as _;
use icu_protos::v1::Observation;
use std::path::Path;

use super::*;
use crate::fhir::observation_bundle;
use crate::signing::GatewayKey;
use crate::Terminology;

/// A record as the bridge produces it for `gateway`/`device` seqs `first..=last`, each
/// observation with value `reading`.
fn record(
    key: &GatewayKey,
    gateway: &str,
    device: &str,
    (first, last): (u64, u64),
    reading: f64,
    offset: i64,
) -> ConsumedRecord {
    let observations: Vec<Observation> = (first..=last)
        .map(|seq| Observation {
            device_id: device.into(),
            seq,
            mdc_code: 150456,
            value: Some(reading),
            unit_ucum: "%".into(),
            receive_time_us: 1_700_000_000_000_000 + seq as i64,
            ..Default::default()
        })
        .collect();
    let value = observation_bundle(
        &crate::fhir::FhirContext::with_default_base(gateway),
        device,
        &observations,
        &Terminology::builtin(),
    )
    .unwrap();
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&value));
    let headers: BTreeMap<String, String> = [
        (headers::SIGNATURE, signature),
        (headers::SIGNATURE_ALG, "ed25519".into()),
        (headers::GATEWAY_ID, gateway.into()),
        (headers::DEVICE_ID, device.into()),
        (headers::SEQ_FIRST, first.to_string()),
        (headers::SEQ_LAST, last.to_string()),
        (
            headers::CONTENT_TYPE,
            headers::CONTENT_TYPE_FHIR_JSON.into(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
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

fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn two_gateways_with_the_same_device_id_are_kept_apart() {
    let key = GatewayKey::generate();
    let records = vec![
        record(&key, "gw-a", "mon-1", (1, 3), 96.0, 0),
        record(&key, "gw-b", "mon-1", (1, 2), 96.0, 1),
        record(&key, "gw-b", "mon-1", (5, 5), 96.0, 2),
        record(&key, "gw-a", "mon-2", (1, 1), 96.0, 3),
    ];
    let report = report_from_records(&records, Some(&key.verifying_key()));
    let a = report.stream("gw-a", "mon-1").unwrap();
    let b = report.stream("gw-b", "mon-1").unwrap();
    // Merged, seqs 1-2 of gw-b would look like duplicates of gw-a's and 4 like one gap.
    assert_eq!((a.records, a.distinct_seqs, a.duplicate_seqs), (1, 3, 0));
    assert!(a.gaps.is_empty());
    assert_eq!((b.records, b.distinct_seqs, b.duplicate_seqs), (2, 3, 0));
    assert_eq!((b.gaps.clone(), b.missing_seqs), (vec![(3, 4)], 2));
    assert_eq!((report.duplicate_seqs, report.conflicts), (0, 0));
    // The device-id view qualifies the shared id and keeps the unique one.
    assert_eq!(report.devices["gw-a/mon-1"], *a);
    assert_eq!(report.devices["gw-b/mon-1"], *b);
    assert_eq!(report.devices["mon-2"].distinct_seqs, 1);
    assert!(!report.devices.contains_key("mon-1"));
    let summary = render_summary("t", &report);
    assert!(
        summary
            .contains("gateway gw-a device mon-1: 1 records, 3 observations, seq 1..=3, no gaps")
            && summary.contains(
                "gateway gw-b device mon-1: 2 records, 3 observations, seq 1..=5, 1 gap(s): 3-4"
            )
            && summary.contains("result: FAILED (gaps in 1 stream(s))"),
        "{summary}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json["gateways"]["gw-b"]["mon-1"]["gaps"],
        serde_json::json!([[3, 4]])
    );
    assert_eq!(json["gateways"]["gw-a"]["mon-1"]["last_seq"], 3);
}

#[test]
fn identical_duplicates_are_fine_and_conflicting_ones_are_errors() {
    let key = GatewayKey::generate();
    let identical = vec![
        record(&key, "gw1", "mon-1", (1, 3), 96.0, 0),
        record(&key, "gw1", "mon-1", (1, 3), 96.0, 1), // same record again
        record(&key, "gw1", "mon-1", (3, 5), 96.0, 2), // re-batched: seq 3 again, same content
    ];
    let report = report_from_records(&identical, Some(&key.verifying_key()));
    let d = report.stream("gw1", "mon-1").unwrap();
    assert_eq!(
        (d.duplicate_seqs, d.identical_duplicate_seqs, d.conflicts),
        (4, 4, 0)
    );
    assert_eq!((d.duplicate_records, d.distinct_seqs), (1, 5));
    assert_eq!(report.duplicates.len(), 2);
    assert!(report.duplicates.iter().all(|x| x.identical));
    assert_eq!(
        (report.duplicates[1].seqs, report.duplicates[1].first_offset),
        ((3, 3), 0)
    );
    assert!(report.is_clean(), "{report:?}");

    let conflicting = vec![
        record(&key, "gw1", "mon-1", (1, 3), 96.0, 0),
        record(&key, "gw1", "mon-1", (1, 3), 91.0, 1), // same range, other bytes
        record(&key, "gw1", "mon-1", (3, 4), 91.0, 2), // seq 3 re-batched with other value
        record(&key, "gw1", "mon-1", (4, 4), 91.0, 3), // seq 4 re-batched, same value
    ];
    let report = report_from_records(&conflicting, Some(&key.verifying_key()));
    let d = report.stream("gw1", "mon-1").unwrap();
    assert_eq!(
        (d.duplicate_seqs, d.identical_duplicate_seqs, d.conflicts),
        (5, 1, 4)
    );
    assert_eq!(report.conflicts, 4);
    let conflicts: Vec<_> = report
        .conflicting()
        .map(|c| (c.seqs, c.offset, c.first_offset))
        .collect();
    assert_eq!(conflicts, [((1, 3), 1, 0), ((3, 3), 2, 0)]);
    assert!(!report.is_clean());
    let summary = render_summary("t", &report);
    assert!(
        summary.contains("5 duplicate seqs (1 identical, 4 conflicting)")
            && summary.contains(
                "CONFLICT gateway gw1 device mon-1 seq 1-3: partition 0 offset 1 differs \
                 from the first sighting at partition 0 offset 0"
            )
            && summary.contains("result: FAILED (4 duplicate seqs with conflicting content)"),
        "{summary}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["conflicts"], 4);
    assert_eq!(json["gateways"]["gw1"]["mon-1"]["conflicts"], 4);
    assert_eq!(json["duplicates"][0]["identical"], false);
}

#[test]
fn gaps_are_inclusive_ranges_and_bad_records_fill_none() {
    let key = GatewayKey::generate();
    let mut forged = record(&key, "gw1", "mon-1", (4, 6), 96.0, 1);
    forged.value[10] ^= 1;
    let records = vec![
        record(&key, "gw1", "mon-1", (1, 3), 96.0, 0),
        forged,
        record(&key, "gw1", "mon-1", (7, 7), 96.0, 2),
        record(&key, "gw1", "mon-1", (9, 12), 96.0, 3),
        record(&key, "gw1", "mon-1", (20, 20), 96.0, 4),
    ];
    let report = report_from_records(&records, Some(&key.verifying_key()));
    let d = report.stream("gw1", "mon-1").unwrap();
    assert_eq!(d.gaps, [(4, 6), (8, 8), (13, 19)]);
    assert_eq!((d.missing_seqs, d.distinct_seqs), (11, 9));
    assert_eq!((d.first_seq, d.last_seq), (Some(1), Some(20)));
    assert_eq!((d.signatures_bad, d.records), (1, 5));
    assert!(render_summary("t", &report)
        .contains("3 gap(s): 4-6, 8, 13-19, 0 duplicate seqs, 1 bad signatures"));
}

#[test]
fn sightings_split_overlaps_exactly() {
    let mut s = Sightings::default();
    assert_eq!(s.insert(5, 7, 0), (vec![], 3));
    assert_eq!(s.insert(10, 12, 1), (vec![], 3));
    assert_eq!(
        s.insert(1, 15, 2),
        (vec![(5, 7, 0), (10, 12, 1)], 9),
        "two earlier ranges inside"
    );
    assert_eq!(
        s.insert(6, 11, 3),
        (vec![(6, 7, 0), (8, 9, 2), (10, 11, 1)], 0)
    );
    assert_eq!(s.insert(u64::MAX - 1, u64::MAX, 4), (vec![], 2));
    assert_eq!(
        s.insert(u64::MAX, u64::MAX, 5),
        (vec![(u64::MAX, u64::MAX, 4)], 0)
    );
    let mut d = DeviceReport::default();
    s.finish(&mut d);
    assert_eq!(
        (d.first_seq, d.last_seq, d.distinct_seqs),
        (Some(1), Some(u64::MAX), 17)
    );
    assert_eq!(d.gaps, [(16, u64::MAX - 2)]);
}

#[test]
fn out_file_holds_each_key_once() {
    let key = GatewayKey::generate();
    let mut bad = record(&key, "gw1", "mon-1", (10, 10), 96.0, 5);
    bad.value[10] ^= 1;
    bad.signature_ok = Some(false);
    let records = vec![
        record(&key, "gw1", "mon-1", (1, 3), 96.0, 0),
        record(&key, "gw2", "mon-1", (1, 3), 96.0, 1), // other gateway: its own keys
        record(&key, "gw1", "mon-1", (1, 3), 96.0, 2), // re-delivery: left out
        record(&key, "gw1", "mon-1", (2, 2), 91.0, 3), // conflicting: left out
        record(&key, "gw1", "mon-1", (3, 5), 96.0, 4), // partly new: written, 3 noted
        bad,
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let w = write_deduplicated_json_lines(&path, &records).unwrap();
    assert_eq!(
        w,
        DedupWrite {
            written: 3,
            partial_overlaps: 1,
            skipped_duplicates: 2,
            skipped_unverified: 1
        }
    );
    let lines = read_lines(&path);
    let offsets: Vec<i64> = lines
        .iter()
        .map(|l| l["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [0, 1, 4]);
    assert_eq!(
        (lines[1]["gateway"].as_str(), lines[1]["device"].as_str()),
        (Some("gw2"), Some("mon-1"))
    );
    assert_eq!(lines[2]["already_written"], serde_json::json!([[3, 3]]));
    assert_eq!(lines[0]["already_written"], serde_json::json!([]));
    assert_eq!(
        (
            lines[2]["seq_first"].as_u64(),
            lines[2]["seq_last"].as_u64()
        ),
        (Some(3), Some(5))
    );
    assert_eq!(lines[0]["value"]["resourceType"], "Bundle");
    // Each (gateway, device, seq) once, once `already_written` seqs are dropped.
    let mut keys = BTreeSet::new();
    for line in &lines {
        let (first, last) = (
            line["seq_first"].as_u64().unwrap(),
            line["seq_last"].as_u64().unwrap(),
        );
        let noted: Vec<(u64, u64)> =
            serde_json::from_value(line["already_written"].clone()).unwrap();
        for seq in first..=last {
            if noted.iter().any(|&(a, b)| (a..=b).contains(&seq)) {
                continue;
            }
            let k = (line["gateway"].to_string(), line["device"].to_string(), seq);
            assert!(keys.insert(k), "{line}");
        }
    }
    assert_eq!(keys.len(), 8);
    // The exact signed bytes are there to check the signature again.
    let raw = base64::engine::general_purpose::STANDARD
        .decode(lines[2]["value_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw, records[4].value);
    let signature = lines[2]["headers"][headers::SIGNATURE].as_str().unwrap();
    assert!(verify_base64(&key.verifying_key(), &raw, signature));

    // The report written next to it.
    let report = report_from_records(&records, Some(&key.verifying_key()));
    let report_path = dir.path().join("report.json");
    write_report_json(&report_path, &report).unwrap();
    let archived: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert_eq!(archived, serde_json::to_value(&report).unwrap());
    assert_eq!(archived["gateways"]["gw1"]["mon-1"]["conflicts"], 1);
    assert_eq!(archived["gateways"]["gw1"]["mon-1"]["signatures_bad"], 1);
}
