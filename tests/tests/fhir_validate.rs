//! The FHIR the gateway sends, checked by an outside validator: `scripts/fhir_validate.py` runs
//! the `fhir.resources` 6.1.0 FHIR R4 models (a maintained library, not our code) over every
//! resource type the gateway emits, plus the profile rules of the PoCD guide and the R4
//! vital-signs profiles that the resources claim. The Python comes from `ICU_FHIR_PYTHON`
//! (`scripts/test` makes a venv with that library).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;

use icu_cloud_bridge::fhir::{
    adt_bundle, alarm_bundle, audit_event, devices_bundle, DeviceDescription, FhirContext,
};
use icu_protos::v1::{AdtEvent, Alarm, AuditEntry};

const GOLDEN: &str = include_str!("../../cloud-bridge/src/fhir/golden_observation_bundles.jsonl");
/// A waveform bundle (`icu.waveforms`) and an alarm snippet bundle (`icu.alarms`).
const GOLDEN_WAVEFORMS: &str =
    include_str!("../../cloud-bridge/src/fhir/golden_waveform_bundles.jsonl");

fn validator_python() -> Option<PathBuf> {
    icu_tests::tool_from_env("ICU_FHIR_PYTHON")
}

/// Runs the validator over `lines` (one JSON resource per line): exit code and output.
fn validate(py: &PathBuf, lines: &[String]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resources.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for line in lines {
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    let out = Command::new(py)
        .arg(icu_tests::script("fhir_validate.py"))
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Alarm bundles, ADT bundles and AuditEvents as the bridge writes them.
fn other_resources() -> Vec<String> {
    let cx = FhirContext::with_default_base("icu-north");
    let alarm = |seq: u64, patient: &str, phase: &str| Alarm {
        device_id: "mon-01".into(),
        seq,
        bed: "bed-01".into(),
        alarm_id: "mon-01:spo2-low".into(),
        mdc_code: 196616,
        text: "SpO2 low 85 < 90".into(),
        priority: "PH".into(),
        phase: phase.into(),
        state: "active".into(),
        event_time_us: 1_700_000_000_000_000 + seq as i64,
        alert_type: "SP".into(),
        source: "gateway:threshold".into(),
        patient_id: patient.into(),
        acknowledged_by: if phase == "end" {
            "nurse-a".into()
        } else {
            String::new()
        },
        ..Default::default()
    };
    let adt = |event: &str, visit: &str| AdtEvent {
        event: event.into(),
        patient_id: "123456".into(),
        bed: "bed-01".into(),
        prior_bed: "bed-02".into(),
        event_time_us: 1_700_000_000_000_000,
        family_name: "Doe".into(),
        given_name: "Jane".into(),
        visit_number: visit.into(),
        birth_date: "19700101".into(),
        sex: "F".into(),
        admit_time_us: Some(1_699_999_000_000_000),
        message_id: "ADT0001".into(),
        peer: "10.0.0.5:40000".into(),
        ..Default::default()
    };
    let audit = |seq: u64, action: &str, outcome: &str| AuditEntry {
        seq,
        time_us: 1_700_000_000_000_000,
        clock_synced: true,
        account: "nurse-a".into(),
        role: "nurse".into(),
        source: "10.0.0.9:5000".into(),
        action: action.into(),
        target_kind: "alarm".into(),
        target_id: "mon-01:spo2-low".into(),
        bed: Some("bed-01".into()),
        outcome: outcome.into(),
        key_id: "gw-key-1".into(),
        ..Default::default()
    };
    let mut out = vec![
        alarm_bundle(
            &cx,
            "mon-01",
            &[alarm(1, "", "start"), alarm(2, "123456", "end")],
        )
        .unwrap(),
        adt_bundle(&cx, "adt", 1, &adt("A01", "V1")).unwrap(),
        adt_bundle(&cx, "adt", 2, &adt("A02", "")).unwrap(),
        adt_bundle(&cx, "adt", 3, &adt("A03", "V1")).unwrap(),
    ];
    for (seq, action, outcome) in [
        (1, "acknowledge", "success"),
        (2, "login_failed", "denied"),
        (3, "limit_change", ""),
    ] {
        out.push(audit_event(&cx, &audit(seq, action, outcome)).unwrap());
    }
    // The devices of the golden readings, as icu.devices carries them.
    let terminology = icu_drivers::terminology::Terminology::builtin();
    let mut description = DeviceDescription::default();
    for o in [
        (150456, "1.2.1.1"),
        (147842, "1.1.1.1"),
        (150301, "1.3.1.1"),
    ] {
        description.observe(
            &icu_protos::v1::Observation {
                mdc_code: o.0,
                containment_id: o.1.into(),
                equipment_id: "0012AB0000000001".into(),
                limit_low: Some(90.0),
                limit_high: Some(100.0),
                ..Default::default()
            },
            &terminology,
        );
    }
    out.push(devices_bundle(&cx, "mon-01", &description, 1_700_000_000_000_000).unwrap());
    out.into_iter()
        .map(|v| String::from_utf8(v).unwrap())
        .collect()
}

#[test]
fn every_resource_type_the_gateway_sends_validates_against_r4_and_its_profiles() {
    let Some(py) = validator_python() else {
        return;
    };
    let mut lines: Vec<String> = GOLDEN.lines().map(str::to_owned).collect();
    lines.extend(GOLDEN_WAVEFORMS.lines().map(str::to_owned));
    lines.extend(other_resources());
    let (code, out) = validate(&py, &lines);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": 0 errors"), "{out}");
    // The golden file's vital signs do claim the vital-signs profiles that were checked.
    assert!(GOLDEN.contains("http://hl7.org/fhir/StructureDefinition/oxygensat"));
    assert!(GOLDEN.contains("http://hl7.org/fhir/StructureDefinition/bp"));
    println!("{out}");
}

#[test]
fn a_broken_resource_fails_validation_with_the_reason() {
    let Some(py) = validator_python() else {
        return;
    };
    // The golden bundle of an admitted patient's vital signs (heart rate first, the BP panel).
    let vitals: serde_json::Value = serde_json::from_str(
        GOLDEN
            .lines()
            .find(|l| l.contains("\"gw1-mon-4-200-209\""))
            .expect("the vital-signs golden bundle"),
    )
    .unwrap();
    let (code, out) = validate(&py, &[vitals.to_string()]);
    assert_eq!(code, 0, "the unbroken bundle is valid: {out}");

    let broken = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = vitals.clone();
        f(&mut v);
        validate(&py, &[v.to_string()])
    };

    // No subject: the PoCD and heart-rate profile rules fail.
    let (code, out) = broken(&|v| {
        let hr = &mut v["entry"][0]["resource"];
        hr.as_object_mut().unwrap().remove("subject");
    });
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("[profile] PoCD: subject must be"), "{out}");
    assert!(
        out.contains("heartrate: subject must be a Patient"),
        "{out}"
    );

    // The heart rate's LOINC coding under a wrong code system.
    let (code, out) = broken(&|v| {
        let hr = &mut v["entry"][0]["resource"];
        for c in hr["code"]["coding"].as_array_mut().unwrap() {
            if c["system"] == "http://loinc.org" {
                c["system"] = "http://snomed.info/sct".into();
            }
        }
    });
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("heartrate: code must have LOINC 8867-4"),
        "{out}"
    );

    // A panel without its diastolic component.
    let (code, out) = broken(&|v| {
        let panel = v["entry"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .map(|e| &mut e["resource"])
            .find(|r| r["code"]["coding"][0]["code"] == "85354-9")
            .unwrap();
        panel["component"].as_array_mut().unwrap().remove(1);
    });
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bp: no component 8462-4"), "{out}");

    // What the library itself refuses: an id with '_', a value that is no decimal.
    let (code, out) = broken(&|v| {
        let hr = &mut v["entry"][0]["resource"];
        hr["id"] = "mon_1".into();
        hr["valueQuantity"]["value"] = "seventy".into();
    });
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("[validator]"), "{out}");
    assert!(out.contains("value is not a valid decimal"), "{out}");
}

#[test]
fn a_waveform_with_l_but_no_lower_limit_or_a_snippet_result_outside_its_bundle_fails() {
    let Some(py) = validator_python() else {
        return;
    };
    let mut lines = GOLDEN_WAVEFORMS.lines();
    let mut waves: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let mut snippet: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let (code, out) = validate(&py, &[waves.to_string(), snippet.to_string()]);
    assert_eq!(
        code, 0,
        "the golden waveform and snippet bundles are valid: {out}"
    );
    waves["entry"][0]["resource"]["valueSampledData"]
        .as_object_mut()
        .unwrap()
        .remove("lowerLimit");
    snippet["entry"][0]["resource"]["result"][0]["reference"] =
        "urn:uuid:00000000-0000-8000-8000-000000000000".into();
    let (code, out) = validate(&py, &[waves.to_string(), snippet.to_string()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("SampledData.data has L without lowerLimit"),
        "{out}"
    );
    assert!(out.contains("is no entry of the Bundle"), "{out}");
}
