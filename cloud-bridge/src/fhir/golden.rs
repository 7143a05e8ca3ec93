//! Golden bytes of `observation_bundle`: a set of bundles covering every branch of the mapping
//! (value, absent reasons, text values, test and corrected status, patient or not, flags,
//! limits, ids that need hashing, strings that need escaping, odd numbers and times), pinned
//! byte for byte in `golden_observation_bundles.jsonl` (one bundle per line). A re-send must be
//! byte-identical to the first send, also across gateway versions: a change here is a change of
//! the wire format. Regenerate only on purpose: `ICU_BLESS_GOLDEN=1 cargo test -p
//! icu-cloud-bridge golden`.

use icu_protos::v1::{Observation, ObservationStatus};

use super::{observation_bundle, FhirContext};
use crate::Terminology;

const GOLDEN: &str = include_str!("golden_observation_bundles.jsonl");
const GOLDEN_PATH: &str = "src/fhir/golden_observation_bundles.jsonl";

fn base(device: &str, seq: u64) -> Observation {
    Observation {
        device_id: device.into(),
        device_time_us: Some(1_700_000_000_000_000 + seq as i64 * 1_000_000),
        receive_time_us: 1_700_000_000_123_456 + seq as i64 * 1_000_000,
        ..super::tests::spo2(seq)
    }
}

/// `(gateway, device, observations)` of every golden bundle.
pub(super) fn golden_inputs() -> Vec<(&'static str, String, Vec<Observation>)> {
    let mut out = Vec::new();
    // A plain run of one device, unassociated.
    out.push((
        "gw1",
        "mon-1".to_owned(),
        (7..10).map(|s| base("mon-1", s)).collect(),
    ));
    // Associated, every status and value branch, one per observation.
    let dev = "mon-2";
    let mut v = Vec::new();
    let mut seq = 100;
    let mut next = |f: &dyn Fn(&mut Observation)| {
        let mut o = base(dev, seq);
        o.patient_id = "P-0042".into();
        f(&mut o);
        seq += 1;
        o
    };
    v.push(next(&|o| o.abnormal_flags = String::new()));
    v.push(next(&|o| o.status = ObservationStatus::NotAvailable as i32));
    v.push(next(&|o| {
        o.status = ObservationStatus::Invalid as i32;
        o.value_text = "INV?".into();
    }));
    v.push(next(&|o| o.value = Some(f64::NAN)));
    v.push(next(&|o| o.value = Some(f64::INFINITY)));
    v.push(next(&|o| o.value = Some(f64::NEG_INFINITY)));
    v.push(next(&|o| o.value = None));
    v.push(next(&|o| {
        o.value = None;
        o.value_text = "  ".into();
    }));
    v.push(next(&|o| o.status = ObservationStatus::Test as i32));
    v.push(next(&|o| o.status = ObservationStatus::Corrected as i32));
    v.push(next(&|o| o.status = 999));
    // OBX-11 as sent, through the v2-to-FHIR concept map.
    for code in ["F", "R", "P", "S", "U", "I", "D", "W", "X", "C", "?"] {
        v.push(next(&move |o| o.result_status = code.into()));
    }
    v.push(next(&|o| o.device_time_us = None));
    v.push(next(&|o| o.device_time_us = Some(i64::MAX)));
    v.push(next(&|o| {
        o.receive_time_us = 1_700_000_000_000_000;
        o.device_time_us = Some(1_700_000_000_100_000);
    }));
    v.push(next(&|o| o.device_time_us = Some(-1_000_001)));
    v.push(next(&|o| {
        o.mdc_code = 99_999_999;
        o.mdc_refid = String::new();
        o.unit_ucum = String::new();
        o.unit_mdc_code = 0;
    }));
    v.push(next(&|o| {
        o.mdc_code = 147842;
        o.mdc_refid = String::new();
        o.unit_ucum = String::new();
        o.unit_mdc_code = 0;
        o.loinc = "8867-4".into();
    }));
    v.push(next(&|o| {
        o.mdc_code = 147842;
        o.mdc_refid = " ".into();
        o.unit_ucum = String::new();
        o.unit_mdc_code = 1;
        o.loinc = "1234-5".into();
    }));
    v.push(next(&|o| {
        o.abnormal_flags = "HH~A,N^<~>~X~HH ,LL,HU,LU,AA,L".into()
    }));
    v.push(next(&|o| {
        o.limit_low = None;
        o.limit_high = Some(f64::INFINITY);
    }));
    v.push(next(&|o| {
        o.limit_low = Some(-0.5);
        o.limit_high = None;
    }));
    v.push(next(&|o| o.limit_low = Some(f64::NAN)));
    v.push(next(&|o| o.source_message_id = String::new()));
    v.push(next(&|o| {
        o.bed = "bed \"3\" \\ ü € 😀 \u{1}\u{1f}\t\n\r/".into();
        o.equipment_id = "</script>\u{7f}\u{2028}".into();
        o.containment_id = String::new();
        o.source_message_id = "ctl\u{0}id".into();
        o.source_row = u32::MAX;
        o.clock_synced = false;
    }));
    for (i, x) in [
        0.0,
        -0.0,
        0.1,
        1e21,
        1e-7,
        123456789.123,
        -42.0,
        f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        1.0 / 3.0,
        100.25,
    ]
    .into_iter()
    .enumerate()
    {
        v.push(next(&move |o| {
            o.value = Some(x);
            o.limit_low = Some(-x);
            o.source_row = i as u32;
        }));
    }
    out.push(("gw1", dev.to_owned(), v));
    // A device id that is no valid FHIR id (hashed ids), a test observation of an unassociated
    // device, and a gateway id that needs escaping.
    let odd = "MON 7/ä\"x".to_owned();
    let mut o = base(&odd, 1);
    o.status = ObservationStatus::Test as i32;
    out.push(("gw \"β\"", odd.clone(), vec![o]));
    let long = "m".repeat(70);
    out.push((
        "gw1",
        long.clone(),
        vec![base(&long, u64::MAX - 1), base(&long, u64::MAX)],
    ));
    // Newest receive time is not the last observation's.
    let mut a = base("mon-3", 5);
    a.receive_time_us += 10_000_000;
    out.push(("gw1", "mon-3".to_owned(), vec![a, base("mon-3", 6)]));
    // An admitted patient's vital signs and device settings from one message: each profile and
    // category, and the NIBP readings that make a blood pressure panel.
    let dev = "mon-4";
    let reading = |seq: u64, mdc: u32, value: f64, unit: &str| {
        let mut o = base(dev, seq);
        o.patient_id = "P-0042".into();
        o.device_time_us = Some(1_700_000_000_000_000);
        o.mdc_code = mdc;
        o.mdc_refid = String::new();
        o.loinc = String::new();
        o.unit_ucum = unit.into();
        o.unit_mdc_code = 0;
        o.value = Some(value);
        o.abnormal_flags = String::new();
        o.source_message_id = "MSG-VS".into();
        o
    };
    let mut text = reading(208, 184519, 0.0, "");
    text.value = None;
    text.value_text = "infusing".into();
    out.push((
        "gw1",
        dev.to_owned(),
        vec![
            reading(200, 147842, 72.0, "/min"),
            reading(201, 151562, 16.0, "/min"),
            reading(202, 150364, 37.2, "Cel"),
            reading(203, 150301, 120.0, "mm[Hg]"),
            reading(204, 150302, 80.0, "mm[Hg]"),
            reading(205, 150303, 93.0, "mm[Hg]"),
            reading(206, 157784, 12.5, "mL/h"),
            reading(207, 151976, 5.0, "cm[H2O]"),
            text,
            // A heart rate in a unit the profile does not allow: PoCD only.
            reading(209, 147842, 1.2, "Hz"),
        ],
    ));
    out
}

fn render() -> String {
    let t = Terminology::builtin();
    let mut s = String::new();
    for (gw, dev, obs) in golden_inputs() {
        let bytes = observation_bundle(&FhirContext::with_default_base(gw), &dev, &obs, &t)
            .expect("golden bundle maps");
        s.push_str(std::str::from_utf8(&bytes).expect("utf-8"));
        s.push('\n');
    }
    s
}

#[test]
fn observation_bundles_are_byte_identical_to_the_golden_file() {
    check_golden(&render(), GOLDEN, GOLDEN_PATH);
}

/// Asserts that `now` (one bundle per line) is `golden` byte for byte, or with
/// `ICU_BLESS_GOLDEN` set writes it to `path` (relative to the crate) instead.
pub(super) fn check_golden(now: &str, golden: &str, path: &str) {
    if std::env::var_os("ICU_BLESS_GOLDEN").is_some() {
        std::fs::write(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path),
            now,
        )
        .expect("write the golden file");
        return;
    }
    for (i, (want, got)) in golden.lines().zip(now.lines()).enumerate() {
        assert_eq!(got, want, "bundle {i} differs from the golden bytes");
    }
    assert_eq!(now, golden, "golden bundle count or line ends differ");
}
