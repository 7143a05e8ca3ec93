use icu_protos::v1::{Observation, ObservationStatus};
use serde_json::{json, Value};

use super::common::*;
use super::*;

const RECEIVE_US: i64 = 1_700_000_000_123_456;
const DEVICE_US: i64 = 1_700_000_000_000_000;

/// A full SpO2 reading of `mon-1` (every field set); also the base of the golden samples.
pub(super) fn spo2(seq: u64) -> Observation {
    Observation {
        device_id: "mon-1".into(),
        seq,
        mdc_code: 150456,
        mdc_refid: "MDC_PULS_OXIM_SAT_O2".into(),
        value: Some(97.0),
        value_text: "97".into(),
        unit_ucum: "%".into(),
        unit_mdc_code: 262688,
        containment_id: "1.2.1.1".into(),
        device_time_us: Some(DEVICE_US + seq as i64),
        receive_time_us: RECEIVE_US + seq as i64,
        clock_synced: true,
        status: ObservationStatus::Valid as i32,
        limit_low: Some(90.0),
        limit_high: Some(100.0),
        abnormal_flags: "H".into(),
        bed: "bed-3".into(),
        equipment_id: "0123456789ABCDEF".into(),
        reported_patient_id: "should-not-appear".into(),
        loinc: String::new(),
        source_message_id: "MSG0001".into(),
        source_row: 2,
        patient_id: String::new(),
        device_time_untrusted: false,
        // OBX-11 not sent (a serial or MQTT device); the golden cases set it.
        result_status: String::new(),
    }
}

fn bundle_json(observations: &[Observation]) -> Value {
    let bytes = observation_bundle(
        &FhirContext::with_default_base("gw1"),
        "mon-1",
        observations,
        &Terminology::builtin(),
    )
    .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn micros_of(rfc3339: &str) -> i64 {
    assert!(rfc3339.ends_with('Z'), "UTC: {rfc3339}");
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_micros()
}

fn extension<'a>(resource: &'a Value, name: &str) -> Option<&'a Value> {
    resource["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == format!("{DEFAULT_FHIR_BASE}/StructureDefinition/{name}"))
}

#[test]
fn bundle_envelope_is_a_deterministic_collection() {
    let b = bundle_json(&[spo2(7), spo2(8)]);
    assert_eq!(b["resourceType"], "Bundle");
    assert_eq!(b["type"], "collection");
    assert_eq!(b["id"], "gw1-mon-1-7-8");
    assert_eq!(
        b["identifier"],
        json!({"system": "urn:icu-gateway:gw1:mon-1", "value": "7-8"})
    );
    assert_eq!(
        micros_of(b["timestamp"].as_str().unwrap()),
        RECEIVE_US + 8,
        "newest receive time"
    );
    let entries = b["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let url = entries[0]["fullUrl"].as_str().unwrap();
    assert!(url.starts_with("urn:uuid:") && url.len() == 45, "{url}");
    // A SHA-256 name-based UUID is RFC 9562 version 8 (version 5 would claim SHA-1), variant 10.
    let uuid = &url["urn:uuid:".len()..];
    assert_eq!(&uuid[14..15], "8", "version nibble of {uuid}");
    assert!(
        matches!(&uuid[19..20], "8" | "9" | "a" | "b"),
        "variant of {uuid}"
    );
    assert_ne!(entries[0]["fullUrl"], entries[1]["fullUrl"]);

    let t = Terminology::builtin();
    let one = observation_bundle(
        &FhirContext::with_default_base("gw1"),
        "mon-1",
        &[spo2(7), spo2(8)],
        &t,
    )
    .unwrap();
    let two = observation_bundle(
        &FhirContext::with_default_base("gw1"),
        "mon-1",
        &[spo2(7), spo2(8)],
        &t,
    )
    .unwrap();
    assert_eq!(one, two, "a re-send produces identical bytes");
    let other_gateway = observation_bundle(
        &FhirContext::with_default_base("gw2"),
        "mon-1",
        &[spo2(7), spo2(8)],
        &t,
    )
    .unwrap();
    assert_ne!(one, other_gateway);
}

#[test]
fn observation_golden_fields() {
    let b = bundle_json(&[spo2(7)]);
    let o = &b["entry"][0]["resource"];
    assert_eq!(o["resourceType"], "Observation");
    // Ids are scoped by the gateway: two ICUs' mon-1 never share a resource id.
    assert_eq!(o["id"], "gw1-mon-1-7");
    assert_eq!(
        o["meta"]["profile"],
        json!([profile::POCD_NUMERIC]),
        "unassociated: PoCD only, not the vital-signs profile (which needs a patient)"
    );
    assert_eq!(
        o["subject"],
        json!({"reference": "Device/gw1-mon-1", "display": "mon-1"}),
        "PoCD: without a patient the subject is the device"
    );
    assert_eq!(o["status"], "final");
    assert_eq!(
        o["identifier"],
        json!([{"system": "urn:icu-gateway:gw1:mon-1", "value": "7"}])
    );
    assert_eq!(o["category"][0]["coding"][0]["code"], "vital-signs");
    assert_eq!(
        o["category"][0]["coding"][0]["system"],
        "http://terminology.hl7.org/CodeSystem/observation-category"
    );
    let coding = o["code"]["coding"].as_array().unwrap();
    assert_eq!(
        coding[0],
        json!({"system": MDC_SYSTEM, "code": "150456", "display": "MDC_PULS_OXIM_SAT_O2"})
    );
    // LOINC comes from the terminology when the observation has none.
    let expected_loinc = Terminology::builtin()
        .by_mdc(150456)
        .and_then(|t| t.loinc.clone());
    match expected_loinc {
        Some(loinc) => {
            assert_eq!(coding[1]["system"], LOINC_SYSTEM);
            assert_eq!(coding[1]["code"], loinc.as_str());
        }
        None => assert_eq!(coding.len(), 1),
    }
    assert_eq!(
        o["valueQuantity"],
        json!({"value": 97.0, "unit": "%", "system": UCUM_SYSTEM, "code": "%"})
    );
    assert!(o.get("dataAbsentReason").is_none());
    assert_eq!(
        micros_of(o["effectiveDateTime"].as_str().unwrap()),
        DEVICE_US + 7
    );
    assert_eq!(micros_of(o["issued"].as_str().unwrap()), RECEIVE_US + 7);
    // PoCD: the reading names the metric that measured it (a DeviceMetric on icu.devices).
    assert_eq!(
        o["device"]["reference"],
        "DeviceMetric/gw1-mon-1-metric-1.2.1.1-150456"
    );
    // The R4 oxygen saturation profile requires 2708-6 next to the pulse oximetry code.
    let loincs: Vec<&str> = coding
        .iter()
        .filter(|c| c["system"] == LOINC_SYSTEM)
        .filter_map(|c| c["code"].as_str())
        .collect();
    assert_eq!(loincs, ["59408-5", "2708-6"]);
    // The limits are the device's alarm limits and say so.
    assert_eq!(
        o["referenceRange"][0]["type"]["coding"][0]["code"],
        "alarm-limits"
    );
    assert_eq!(o["referenceRange"][0]["low"]["value"], 90.0);
    assert_eq!(o["referenceRange"][0]["high"]["value"], 100.0);
    assert_eq!(o["referenceRange"][0]["high"]["code"], "%");
    assert_eq!(o["interpretation"][0]["coding"][0]["code"], "H");

    // Never a guessed patient: the subject is the device.
    assert!(!o["subject"]["reference"]
        .as_str()
        .unwrap()
        .starts_with("Patient/"));
    assert_eq!(
        o["meta"]["tag"],
        json!([{"system": ASSOCIATION_SYSTEM, "code": UNASSOCIATED}])
    );
    assert!(!o.to_string().contains("should-not-appear"));

    assert_eq!(extension(o, "seq").unwrap()["valueString"], "7");
    assert_eq!(extension(o, "bed").unwrap()["valueString"], "bed-3");
    assert_eq!(
        extension(o, "containment-id").unwrap()["valueString"],
        "1.2.1.1"
    );
    assert_eq!(
        extension(o, "equipment-id").unwrap()["valueString"],
        "0123456789ABCDEF"
    );
    assert_eq!(extension(o, "clock-synced").unwrap()["valueBoolean"], true);
    assert_eq!(
        extension(o, "source-message-id").unwrap()["valueString"],
        "MSG0001"
    );
    assert_eq!(extension(o, "source-row").unwrap()["valueUnsignedInt"], 2);
    let receive = extension(o, "receive-time").unwrap()["valueInstant"]
        .as_str()
        .unwrap();
    assert_eq!(micros_of(receive), RECEIVE_US + 7);
}

#[test]
fn absent_text_and_corrected_values() {
    let not_available = Observation {
        value: None,
        value_text: "---".into(),
        status: ObservationStatus::NotAvailable as i32,
        ..spo2(1)
    };
    let text = Observation {
        value: None,
        value_text: "AUTO".into(),
        ..spo2(2)
    };
    let corrected = Observation {
        status: ObservationStatus::Corrected as i32,
        ..spo2(3)
    };
    let invalid = Observation {
        value: Some(12.0),
        value_text: "12".into(),
        status: ObservationStatus::Invalid as i32,
        ..spo2(4)
    };
    let nan = Observation {
        value: Some(f64::NAN),
        ..spo2(5)
    };
    let no_device_time = Observation {
        device_time_us: None,
        ..spo2(6)
    };
    let b = bundle_json(&[not_available, text, corrected, invalid, nan, no_device_time]);
    let o = |i: usize| b["entry"][i]["resource"].clone();
    let absent = |o: &Value| o["dataAbsentReason"]["coding"][0]["code"].clone();

    let na = o(0);
    assert_eq!(na["status"], "final");
    assert!(na.get("valueQuantity").is_none() && na.get("valueString").is_none());
    assert_eq!(absent(&na), "unknown");
    assert_eq!(extension(&na, "value-text").unwrap()["valueString"], "---");

    let t = o(1);
    assert_eq!(t["valueString"], "AUTO");
    assert!(t.get("dataAbsentReason").is_none());

    // OBX-11 C is "corrected" in the HL7 v2-to-FHIR concept map (not "amended").
    assert_eq!(o(2)["status"], "corrected");
    // OBX-11 as sent goes through that map (table 0085 → observation-status).
    for (code, want) in [
        ("F", "final"),
        ("R", "preliminary"),
        ("P", "preliminary"),
        ("C", "corrected"),
        ("X", "cancelled"),
        ("W", "entered-in-error"),
        ("D", "entered-in-error"),
        ("I", "registered"),
        ("", "final"),
    ] {
        let b = bundle_json(&[Observation {
            result_status: code.into(),
            ..spo2(9)
        }]);
        assert_eq!(b["entry"][0]["resource"]["status"], want, "OBX-11 {code:?}");
    }
    assert_eq!(o(2)["valueQuantity"]["value"], 97.0);

    let inv = o(3);
    assert!(
        inv.get("valueQuantity").is_none(),
        "an invalid value is not reported as a value"
    );
    assert_eq!(absent(&inv), "error");
    assert_eq!(extension(&inv, "value-text").unwrap()["valueString"], "12");
    assert_eq!(
        extension(&inv, "measurement-status").unwrap()["valueCode"],
        "invalid"
    );

    assert_eq!(absent(&o(4)), "not-a-number");
    assert!(o(4).get("valueQuantity").is_none());

    // A missing device time stays missing: no effective time, a flag, the receive time in
    // `issued`.
    let nd = o(5);
    assert!(nd.get("effectiveDateTime").is_none(), "{nd}");
    assert_eq!(
        extension(&nd, "device-time-status").unwrap()["valueCode"],
        "missing"
    );
    assert_eq!(micros_of(nd["issued"].as_str().unwrap()), RECEIVE_US + 6);
}

#[test]
fn terminology_fills_missing_refid_unit_and_loinc() {
    let t = Terminology::builtin();
    let term = t
        .by_mdc(147842)
        .expect("builtin has MDC_ECG_HEART_RATE")
        .clone();
    let bare = Observation {
        mdc_code: 147842,
        mdc_refid: String::new(),
        unit_ucum: String::new(),
        unit_mdc_code: 0,
        loinc: String::new(),
        value: Some(72.0),
        ..spo2(1)
    };
    let b = bundle_json(std::slice::from_ref(&bare));
    let o = &b["entry"][0]["resource"];
    assert_eq!(o["code"]["coding"][0]["display"], term.refid.as_str());
    assert_eq!(o["valueQuantity"]["code"], term.ucum.as_str());
    if let Some(loinc) = &term.loinc {
        assert_eq!(o["code"]["coding"][1]["code"], loinc.as_str());
    }
    // The observation's own LOINC wins over the terminology's.
    let own = Observation {
        loinc: "76282-3".into(),
        ..bare
    };
    let b = bundle_json(&[own]);
    assert_eq!(
        b["entry"][0]["resource"]["code"]["coding"][1]["code"],
        "76282-3"
    );
}

#[test]
fn unknown_code_without_unit_still_maps() {
    let unknown = Observation {
        mdc_code: 4_000_000_000,
        mdc_refid: String::new(),
        unit_ucum: String::new(),
        ..spo2(1)
    };
    let b = bundle_json(&[unknown]);
    let o = &b["entry"][0]["resource"];
    assert_eq!(o["code"]["coding"].as_array().unwrap().len(), 1);
    assert_eq!(o["valueQuantity"], json!({"value": 97.0}));
}

#[test]
fn ids_stay_valid_for_any_device_id() {
    let t = Terminology::builtin();
    let bytes = observation_bundle(
        &FhirContext::with_default_base("gw 1"),
        "mon_1/ä",
        &[spo2(1)],
        &t,
    )
    .unwrap();
    let b: Value = serde_json::from_slice(&bytes).unwrap();
    let valid = |id: &str| {
        !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
    };
    assert!(valid(b["id"].as_str().unwrap()), "{}", b["id"]);
    let o = &b["entry"][0]["resource"];
    assert!(valid(o["id"].as_str().unwrap()), "{}", o["id"]);
    assert_eq!(o["identifier"][0]["system"], "urn:icu-gateway:gw 1:mon_1/ä");
    assert_eq!(o["device"]["display"], "mon_1/ä");
}

#[test]
fn empty_input_and_out_of_range_times_are_errors() {
    let t = Terminology::builtin();
    let err =
        observation_bundle(&FhirContext::with_default_base("gw1"), "mon-1", &[], &t).unwrap_err();
    assert!(err.to_string().contains("mon-1"), "{err}");
    let bad = Observation {
        receive_time_us: i64::MAX,
        ..spo2(9)
    };
    let err = observation_bundle(&FhirContext::with_default_base("gw1"), "mon-1", &[bad], &t)
        .unwrap_err();
    assert!(
        matches!(err, BridgeError::FhirMapping { seq: 9, .. }),
        "{err}"
    );
}

#[test]
fn parses_back_with_fhir_sdk_types() {
    let t = Terminology::builtin();
    let not_available = Observation {
        value: None,
        status: ObservationStatus::NotAvailable as i32,
        ..spo2(8)
    };
    let bytes = observation_bundle(
        &FhirContext::with_default_base("gw1"),
        "mon-1",
        &[spo2(7), not_available],
        &t,
    )
    .unwrap();
    let bundle = parse_bundle(&bytes).unwrap();
    assert_eq!(bundle.id.as_deref(), Some("gw1-mon-1-7-8"));
    assert_eq!(bundle.entry.len(), 2);
    // Re-serializing the parsed bundle gives the same bytes: nothing was lost or reordered.
    assert_eq!(serde_json::to_vec(&bundle).unwrap(), bytes);

    let parsed = observations_of(&bytes).unwrap();
    assert_eq!(parsed.len(), 2);
    let p = &parsed[0];
    assert_eq!((p.seq, p.mdc_code), (7, 150456));
    assert_eq!(p.value, Some(97.0));
    assert_eq!(p.unit.as_deref(), Some("%"));
    assert_eq!(
        p.loinc,
        t.by_mdc(150456).and_then(|term| term.loinc.clone())
    );
    assert_eq!(micros_of(p.effective.as_deref().unwrap()), DEVICE_US + 7);
    assert_eq!((parsed[1].seq, parsed[1].value), (8, None));

    assert!(matches!(
        parse_bundle(b"{\"resourceType\":\"Patient\"}"),
        Err(BridgeError::FhirParse { .. })
    ));
    assert!(observations_of(b"not json").is_err());
}

#[test]
fn census_patient_becomes_the_subject_and_drops_the_unassociated_tag() {
    let associated = Observation {
        patient_id: "MRN123".into(),
        ..spo2(1)
    };
    let b = bundle_json(&[associated, spo2(2)]);
    let with = &b["entry"][0]["resource"];
    assert_eq!(
        with["subject"],
        json!({"reference": "Patient/MRN123", "identifier": {"value": "MRN123"}})
    );
    assert!(
        with["meta"].get("tag").is_none(),
        "no association tag: {with}"
    );
    assert_eq!(
        with["meta"]["profile"],
        json!([
            profile::POCD_NUMERIC,
            "http://hl7.org/fhir/StructureDefinition/oxygensat"
        ]),
        "with a patient and a time, SpO2 claims the R4 oxygensat profile"
    );
    assert!(!with.to_string().contains("should-not-appear"));

    let without = &b["entry"][1]["resource"];
    assert_eq!(without["subject"]["reference"], "Device/gw1-mon-1");
    assert_eq!(
        without["meta"]["tag"],
        json!([{"system": ASSOCIATION_SYSTEM, "code": UNASSOCIATED}])
    );

    // Whitespace is not a patient; a device-reported patient id alone is never used.
    for patient_id in ["", "  "] {
        let b = bundle_json(&[Observation {
            patient_id: patient_id.into(),
            ..spo2(3)
        }]);
        let o = &b["entry"][0]["resource"];
        assert_eq!(
            o["subject"]["reference"], "Device/gw1-mon-1",
            "{patient_id:?}"
        );
        assert_eq!(o["meta"]["tag"][0]["code"], UNASSOCIATED);
    }

    // A test observation of a patient keeps its security label, without the tag.
    let test = Observation {
        patient_id: "MRN123".into(),
        status: ObservationStatus::Test as i32,
        ..spo2(4)
    };
    let b = bundle_json(&[test]);
    let o = &b["entry"][0]["resource"];
    assert!(o["meta"].get("tag").is_none());
    assert_eq!(o["meta"]["security"][0]["code"], "HTEST");
    assert_eq!(o["subject"]["reference"], "Patient/MRN123");

    // Ids that are not valid FHIR ids are hashed, the same way as the ADT Patient's id.
    let odd = Observation {
        patient_id: "p 1/ä".into(),
        ..spo2(5)
    };
    let b = bundle_json(&[odd]);
    let o = &b["entry"][0]["resource"];
    assert_eq!(
        o["subject"]["reference"],
        format!("Patient/{}", patient_fhir_id("p 1/ä"))
    );
    assert_eq!(o["subject"]["identifier"]["value"], "p 1/ä");

    // Parses back with fhir-sdk.
    let bytes = observation_bundle(
        &FhirContext::with_default_base("gw1"),
        "mon-1",
        &[Observation {
            patient_id: "MRN123".into(),
            ..spo2(6)
        }],
        &Terminology::builtin(),
    )
    .unwrap();
    let bundle = parse_bundle(&bytes).unwrap();
    assert_eq!(serde_json::to_vec(&bundle).unwrap(), bytes);
}

#[test]
fn an_untrusted_device_time_is_not_the_effective_time() {
    let mut o = spo2(7);
    o.device_time_us = Some(4_070_908_800_000_000); // 2099-01-01
    o.device_time_untrusted = true;
    let mut far = spo2(8);
    far.device_time_us = Some(i64::MAX);
    far.device_time_untrusted = true;
    let b = bundle_json(&[o, far]);
    let first = &b["entry"][0]["resource"];
    assert!(
        first.get("effectiveDateTime").is_none(),
        "an untrusted device time is not effective, and the receive time is no stand-in"
    );
    assert_eq!(
        extension(first, "device-time-status").unwrap()["valueCode"],
        "untrusted"
    );
    assert_eq!(
        extension(first, "untrusted-device-time").unwrap()["valueString"],
        "2099-01-01T00:00:00Z"
    );
    let second = &b["entry"][1]["resource"];
    assert_eq!(
        extension(second, "untrusted-device-time").unwrap()["valueString"],
        format!("{} us", i64::MAX)
    );
    // A trusted reading has no such extension.
    let b = bundle_json(&[spo2(9)]);
    assert!(extension(&b["entry"][0]["resource"], "untrusted-device-time").is_none());
}
