//! The direct JSON writer against the fhir-sdk R4B types, over generated inputs.

use icu_protos::v1::Observation;

use super::*;

/// The direct writer over generated inputs: every field drawn from a small pool of interesting
/// values (empty, blank, padded, escapes, unicode, odd numbers and times, known and unknown
/// codes, blood pressure parts that make panels), many bundles per run, deterministic seed.
/// Every bundle parses with the fhir-sdk R4B types and serializes back to the same bytes (so it
/// is well-formed FHIR JSON in that library's field order, with nothing it does not know), and
/// its readings read back with their seqs.
#[test]
fn direct_writer_output_round_trips_through_the_fhir_sdk_types() {
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<T: Clone>(&mut self, pool: &[T]) -> T {
            pool[(self.next() % pool.len() as u64) as usize].clone()
        }
    }
    let strings = [
        "",
        " ",
        "x",
        " padded ",
        "bed-3",
        "q\"uote\\back",
        "tab\there\nnl\r\u{1}\u{1f}",
        "ünï €😀 \u{2028}\u{7f}",
        "</script>",
        "MDC_PULS_OXIM_SAT_O2",
    ];
    let ids = [
        "mon-1",
        "MON.2",
        "",
        "has space",
        "ä",
        "mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm",
    ];
    let flags = ["", "H", "HH~A", "N^<,>", "X", " L ", "INV~QUES"];
    let loincs = ["", "", "", "8867-4", " 59408-5 ", "1234-5"];
    let units = ["", "%", "/min", "mm[Hg]", " % "];
    let mdcs = [
        150456u32, 147842, 150037, 150038, 150039, 150301, 150302, 0, 99_999_999, 188736, 150344,
    ];
    let unit_codes = [0u32, 262688, 264864, 1];
    let values = [
        None,
        Some(97.0),
        Some(0.1),
        Some(-0.0),
        Some(f64::NAN),
        Some(f64::INFINITY),
        Some(f64::NEG_INFINITY),
        Some(1e21),
        Some(1e-7),
        Some(36.6),
        Some(f64::MAX),
    ];
    let times = [
        1_700_000_000_000_000i64,
        1_700_000_000_123_456,
        1_700_000_000_100_000,
        0,
        -1,
        i64::MAX,
        i64::MIN,
        253_402_300_799_999_999,
        253_402_300_800_000_000,
    ];
    let statuses = [0i32, 1, 2, 3, 4, 5, 6, 7, 99, -1];
    let patients = ["", "P-1", " P-2 ", "bad id/ü", "  "];
    let t = Terminology::builtin();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut compared, mut errors, mut panels) = (0, 0, 0);
    for _ in 0..3000 {
        let gateway: &str = rng.pick(&["gw1", "gw \"x\"", ""]);
        let cx = FhirContext::with_default_base(gateway);
        let device: &str = rng.pick(&ids);
        let n = 1 + (rng.next() % 4) as usize;
        let first_seq = rng.pick(&[1u64, 99, u64::MAX - 4]);
        let patient: &str = rng.pick(&patients);
        let shared_time = rng.pick(&times);
        let mut observations: Vec<Observation> = (0..n)
            .map(|i| Observation {
                device_id: device.into(),
                seq: first_seq + i as u64,
                mdc_code: rng.pick(&mdcs),
                mdc_refid: rng.pick(&strings).into(),
                value: rng.pick(&values),
                value_text: rng.pick(&strings).into(),
                unit_ucum: rng.pick(&units).into(),
                unit_mdc_code: rng.pick(&unit_codes),
                containment_id: rng.pick(&strings).into(),
                device_time_us: {
                    let other = rng.pick(&times);
                    rng.pick(&[None, Some(shared_time), Some(other)])
                },
                receive_time_us: if rng.next().is_multiple_of(4) {
                    rng.pick(&times)
                } else {
                    1_700_000_000_123_456
                },
                clock_synced: rng.next().is_multiple_of(2),
                status: rng.pick(&statuses),
                limit_low: rng.pick(&values),
                limit_high: rng.pick(&values),
                abnormal_flags: rng.pick(&flags).into(),
                bed: rng.pick(&strings).into(),
                equipment_id: rng.pick(&strings).into(),
                reported_patient_id: rng.pick(&strings).into(),
                loinc: rng.pick(&loincs).into(),
                source_message_id: rng.pick(&strings).into(),
                source_row: rng.pick(&[0u32, 7, u32::MAX]),
                patient_id: patient.into(),
                device_time_untrusted: rng.next().is_multiple_of(4),
                result_status: rng.pick(&["", "F", "R", "C", "X", "W", "zz"]).into(),
            })
            .collect();
        // One bundle in four is a blood pressure measurement (systolic, diastolic, mean of one
        // message), so that panels are written too.
        if n >= 2 && rng.next().is_multiple_of(4) {
            for (o, (code, value)) in
                observations
                    .iter_mut()
                    .zip([(150301, 120.0), (150302, 80.0), (150303, 93.0)])
            {
                o.mdc_code = code;
                o.mdc_refid = String::new();
                o.loinc = String::new();
                o.value = Some(value);
                o.status = 0;
                o.device_time_us = Some(1_700_000_000_000_000);
                o.device_time_untrusted = false;
                o.source_message_id = "MSG-BP".into();
            }
        }
        match observation_bundle(&cx, device, &observations, &t) {
            Ok(bytes) => {
                let bundle = parse_bundle(&bytes)
                    .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
                assert_eq!(
                    String::from_utf8_lossy(&serde_json::to_vec(&bundle).unwrap()),
                    String::from_utf8_lossy(&bytes),
                    "input {observations:?}"
                );
                let seqs: Vec<u64> = observations_of(&bytes)
                    .unwrap()
                    .into_iter()
                    .map(|o| o.seq)
                    .collect();
                let want: Vec<u64> = observations.iter().map(|o| o.seq).collect();
                assert_eq!(seqs, want);
                panels += bundle.entry.len() - observations.len();
                compared += 1;
            }
            Err(e) => {
                assert!(e.to_string().contains("out of range"), "{e}");
                errors += 1;
            }
        }
    }
    assert!(
        compared > 1000 && errors > 10 && panels > 10,
        "{compared} compared, {errors} errors, {panels} panels"
    );
}
