//! The fhir-sdk (builder + serde) mapping of an observation bundle, as the gateway wrote it
//! before [`super::observation_bundle`] wrote the JSON directly: the reference the direct writer
//! is compared against, byte for byte, over many generated inputs (`tests.rs`).

use fhir_sdk::r4b::codes::{BundleType, ObservationStatus as FhirStatus};
use fhir_sdk::r4b::resources::{
    Bundle, BundleEntry, Observation as FhirObservation, ObservationEffective,
    ObservationReferenceRange, ObservationValue, Resource,
};
use fhir_sdk::r4b::types::{
    CodeableConcept, ExtensionValue, Identifier, Meta, Quantity, Reference,
};
use fhir_sdk::DateTime;
use icu_protos::v1::{Observation, ObservationStatus};

use super::common::*;
use super::*;

/// Builds the FHIR Bundle (type `collection`) for one device's observations.
///
/// `observations` are expected to be one device's, in seq order (the bridge's grouping ensures
/// it); the Bundle id and identifier use the first and last seq.
pub fn observation_bundle_reference(
    gateway_id: &str,
    device_id: &str,
    observations: &[Observation],
    terminology: &Terminology,
) -> Result<Vec<u8>, BridgeError> {
    let (Some(first), Some(last)) = (observations.first(), observations.last()) else {
        return Err(BridgeError::FhirMapping {
            device_id: device_id.to_owned(),
            seq: 0,
            reason: "no observations to put in a bundle".into(),
        });
    };
    let fail = |seq: u64| {
        move |reason: String| BridgeError::FhirMapping {
            device_id: device_id.to_owned(),
            seq,
            reason,
        }
    };
    let newest_receive = observations
        .iter()
        .map(|o| o.receive_time_us)
        .max()
        .unwrap_or_default();
    let timestamp = instant_from_us(newest_receive)
        .ok_or_else(|| format!("receive time {newest_receive} us is out of range"))
        .map_err(fail(last.seq))?;

    let mut entries = Vec::with_capacity(observations.len());
    for obs in observations {
        let resource =
            map_observation(gateway_id, device_id, obs, terminology).map_err(fail(obs.seq))?;
        let full_url = format!(
            "urn:uuid:{}",
            uuid_from(&["observation", gateway_id, device_id, &obs.seq.to_string()])
        );
        let entry = BundleEntry::builder()
            .full_url(full_url)
            .resource(Resource::Observation(resource))
            .build()
            .map_err(|e| fail(obs.seq)(e.to_string()))?;
        entries.push(Some(entry));
    }

    let range = format!("{}-{}", first.seq, last.seq);
    let bundle = Bundle::builder()
        .id(fhir_id(&[gateway_id, device_id, &range]))
        .identifier(
            Identifier::builder()
                .system(identifier_system(gateway_id, device_id))
                .value(range)
                .build()
                .map_err(|e| fail(first.seq)(e.to_string()))?,
        )
        .r#type(BundleType::Collection)
        .timestamp(timestamp)
        .entry(entries)
        .build()
        .map_err(|e| fail(first.seq)(e.to_string()))?;
    serde_json::to_vec(&bundle).map_err(|e| fail(first.seq)(e.to_string()))
}

/// One Observation resource.
fn map_observation(
    gateway_id: &str,
    device_id: &str,
    obs: &Observation,
    terminology: &Terminology,
) -> Result<FhirObservation, String> {
    let term = terminology.by_mdc(obs.mdc_code);
    let status = ObservationStatus::try_from(obs.status).unwrap_or(ObservationStatus::Unspecified);

    // Codes: MDC always, LOINC from the observation or else the terminology.
    let refid =
        non_empty(&obs.mdc_refid).or_else(|| term.map(|t| t.refid.as_str()).and_then(non_empty));
    let mut codings = vec![Some(coding(MDC_SYSTEM, &obs.mdc_code.to_string(), refid)?)];
    let loinc =
        non_empty(&obs.loinc).or_else(|| term.and_then(|t| t.loinc.as_deref()).and_then(non_empty));
    if let Some(loinc) = loinc {
        let display = term
            .filter(|t| t.loinc.as_deref() == Some(loinc))
            .and_then(|t| t.loinc_display.as_deref());
        codings.push(Some(coding(LOINC_SYSTEM, loinc, display)?));
    }
    let code_text = term
        .map(|t| t.display.as_str())
        .and_then(non_empty)
        .or(refid);
    let mut code = CodeableConcept::builder().coding(codings);
    if let Some(text) = code_text {
        code = code.text(text.to_owned());
    }
    let code = code.build().map_err(|e| e.to_string())?;

    let unit = non_empty(&obs.unit_ucum).or_else(|| {
        term.filter(|t| obs.unit_mdc_code == 0 || obs.unit_mdc_code == t.unit_mdc_code)
            .map(|t| t.ucum.as_str())
            .and_then(non_empty)
    });

    // Value or the reason it is absent; never both.
    let mut value = None;
    let mut absent = None;
    match (status, obs.value) {
        (ObservationStatus::NotAvailable, _) => absent = Some("unknown"),
        (ObservationStatus::Invalid, _) => absent = Some("error"),
        (_, Some(v)) if v.is_nan() => absent = Some("not-a-number"),
        (_, Some(v)) if v == f64::INFINITY => absent = Some("positive-infinity"),
        (_, Some(v)) if v == f64::NEG_INFINITY => absent = Some("negative-infinity"),
        (_, Some(v)) => value = Some(ObservationValue::Quantity(quantity(v, unit)?)),
        (_, None) => match non_empty(&obs.value_text) {
            Some(text) => value = Some(ObservationValue::String(text.to_owned())),
            None => absent = Some("unknown"),
        },
    }

    let fhir_status = match status {
        ObservationStatus::Corrected => FhirStatus::Corrected,
        _ => FhirStatus::Final,
    };

    let receive = instant_from_us(obs.receive_time_us)
        .ok_or_else(|| format!("receive time {} us is out of range", obs.receive_time_us))?;
    // A device time the gateway did not trust (`device_time_untrusted`) is not the effective
    // time: the receive time is, and the device time goes into an extension.
    let effective = obs
        .device_time_us
        .filter(|_| !obs.device_time_untrusted)
        .and_then(instant_from_us)
        .unwrap_or_else(|| receive.clone());

    let patient = non_empty(&obs.patient_id);
    let mut meta = Meta::builder();
    if patient.is_none() {
        meta = meta.tag(vec![Some(coding(ASSOCIATION_SYSTEM, UNASSOCIATED, None)?)]);
    }
    if status == ObservationStatus::Test {
        meta = meta.security(vec![Some(coding(
            ACT_REASON_SYSTEM,
            "HTEST",
            Some("test health data"),
        )?)]);
    }
    // An associated, non-test observation has nothing in meta: leave it out (no empty `{}`).
    let meta = if patient.is_none() || status == ObservationStatus::Test {
        Some(meta.build().map_err(|e| e.to_string())?)
    } else {
        None
    };

    let seq = obs.seq.to_string();
    let mut extensions = vec![ext("seq", ExtensionValue::String(seq.clone()))?];
    let mut ext_str = |name: &str, text: &str| -> Result<(), String> {
        if let Some(text) = non_empty(text) {
            extensions.push(ext(name, ExtensionValue::String(text.to_owned()))?);
        }
        Ok(())
    };
    ext_str("bed", &obs.bed)?;
    ext_str("containment-id", &obs.containment_id)?;
    ext_str("equipment-id", &obs.equipment_id)?;
    ext_str("abnormal-flags", &obs.abnormal_flags)?;
    if absent.is_some() || value.is_none() {
        ext_str("value-text", &obs.value_text)?;
    }
    ext_str("source-message-id", &obs.source_message_id)?;
    if !obs.source_message_id.is_empty() {
        extensions.push(ext(
            "source-row",
            ExtensionValue::UnsignedInt(obs.source_row),
        )?);
    }
    if matches!(status, ObservationStatus::Invalid | ObservationStatus::Test) {
        let name = if status == ObservationStatus::Invalid {
            "invalid"
        } else {
            "test"
        };
        extensions.push(ext(
            "measurement-status",
            ExtensionValue::Code(name.to_owned()),
        )?);
    }
    extensions.push(ext(
        "receive-time",
        ExtensionValue::Instant(receive.clone()),
    )?);
    extensions.push(ext(
        "clock-synced",
        ExtensionValue::Boolean(obs.clock_synced),
    )?);
    if obs.device_time_untrusted {
        let text = untrusted_device_time(obs.device_time_us);
        if !text.is_empty() {
            extensions.push(ext("untrusted-device-time", ExtensionValue::String(text))?);
        }
    }

    let mut builder = FhirObservation::builder()
        .id(fhir_id(&[device_id, &seq]))
        .extension(extensions)
        .identifier(vec![Some(
            Identifier::builder()
                .system(identifier_system(gateway_id, device_id))
                .value(seq)
                .build()
                .map_err(|e| e.to_string())?,
        )])
        .status(fhir_status)
        .category(vec![Some(
            CodeableConcept::builder()
                .coding(vec![Some(coding(
                    CATEGORY_SYSTEM,
                    "vital-signs",
                    Some("Vital Signs"),
                )?)])
                .build()
                .map_err(|e| e.to_string())?,
        )])
        .code(code)
        .effective(ObservationEffective::DateTime(DateTime::DateTime(
            effective,
        )))
        .issued(receive)
        .device(
            Reference::builder()
                .reference(format!("Device/{}", fhir_id(&[device_id])))
                .display(device_id.to_owned())
                .build()
                .map_err(|e| e.to_string())?,
        );
    if let Some(meta) = meta {
        builder = builder.meta(meta);
    }
    if let Some(patient) = patient {
        builder = builder.subject(patient_reference(patient)?);
    }
    if let Some(value) = value {
        builder = builder.value(value);
    }
    if let Some(reason) = absent {
        builder = builder.data_absent_reason(
            CodeableConcept::builder()
                .coding(vec![Some(coding(DATA_ABSENT_SYSTEM, reason, None)?)])
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    let interpretation = interpretation_codes(&obs.abnormal_flags)
        .into_iter()
        .map(|c| {
            let coding = coding(INTERPRETATION_SYSTEM, c, None)?;
            CodeableConcept::builder()
                .coding(vec![Some(coding)])
                .build()
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    if !interpretation.is_empty() {
        builder = builder.interpretation(interpretation);
    }
    let low = obs.limit_low.filter(|v| v.is_finite());
    let high = obs.limit_high.filter(|v| v.is_finite());
    if low.is_some() || high.is_some() {
        let mut range = ObservationReferenceRange::builder();
        if let Some(low) = low {
            range = range.low(quantity(low, unit)?);
        }
        if let Some(high) = high {
            range = range.high(quantity(high, unit)?);
        }
        builder = builder.reference_range(vec![Some(range.build().map_err(|e| e.to_string())?)]);
    }
    builder.build().map_err(|e| e.to_string())
}

fn quantity(value: f64, ucum: Option<&str>) -> Result<Quantity, String> {
    let mut b = Quantity::builder().value(value);
    if let Some(ucum) = ucum {
        b = b
            .unit(ucum.to_owned())
            .system(UCUM_SYSTEM.to_owned())
            .code(ucum.to_owned());
    }
    b.build().map_err(|e| e.to_string())
}

/// The direct writer against this reference over generated inputs: every field drawn from a
/// small pool of interesting values (empty, blank, padded, escapes, unicode, odd numbers and
/// times, known and unknown codes), many bundles per run, deterministic seed.
#[test]
fn direct_writer_matches_the_fhir_sdk_mapping_byte_for_byte() {
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
    let loincs = ["", "8867-4", " 59408-5 ", "1234-5"];
    let units = ["", "%", "/min", "mm[Hg]", " % "];
    let mdcs = [150456u32, 147842, 150037, 0, 99_999_999, 188736, 150344];
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
    let (mut compared, mut errors) = (0, 0);
    for _ in 0..3000 {
        let gateway: &str = rng.pick(&["gw1", "gw \"x\"", ""]);
        let device: &str = rng.pick(&ids);
        let n = 1 + (rng.next() % 4) as usize;
        let first_seq = rng.pick(&[1u64, 99, u64::MAX - 4]);
        let patient: &str = rng.pick(&patients);
        let shared_time = rng.pick(&times);
        let observations: Vec<Observation> = (0..n)
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
            })
            .collect();
        let want = observation_bundle_reference(gateway, device, &observations, &t);
        let got = observation_bundle(gateway, device, &observations, &t);
        match (want, got) {
            (Ok(want), Ok(got)) => {
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want),
                    "input {observations:?}"
                );
                compared += 1;
            }
            (Err(want), Err(got)) => {
                assert_eq!(got.to_string(), want.to_string());
                errors += 1;
            }
            (want, got) => panic!("reference {want:?}, direct {got:?} for {observations:?}"),
        }
    }
    assert!(
        compared > 1000 && errors > 10,
        "{compared} compared, {errors} errors"
    );
}
