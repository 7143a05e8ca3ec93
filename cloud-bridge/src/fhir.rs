//! FHIR R4 mapping of canonical records (fhir-sdk R4B types, serialized with serde_json).
//!
//! Owns: [`observation_bundle`] (one device's consecutive observations of one patient → one
//! `collection` Bundle of PoCD-style Observations), [`alarm_observation`] (one alarm state change
//! → one Observation, in `alarm`), [`adt_bundle`] (one ADT event → one `collection` Bundle of a
//! Patient and an Encounter, in `adt`), and [`parse_bundle`] and [`observations_of`] for readers.
//!
//! Guarantees:
//! - **Deterministic bytes.** The output depends only on the inputs: no wall clock, no random
//!   ids. The Bundle timestamp is the newest receive time, ids are derived from
//!   `(gateway, device, seq)`. A re-send of the same records produces identical bytes, so a
//!   duplicate downstream is byte-identical and carries the same signature.
//! - **Never a guessed patient.** The patient comes only from the record's `patient_id` (set by
//!   the gateway from the ADT census at the reading's time). When it is set, `subject` is
//!   `Patient/<id>` with `identifier.value` = the patient id; when it is empty, `subject` is
//!   absent and `meta.tag` carries `urn:icu-gateway:association|unassociated`. A patient id the
//!   device itself reported (`reported_patient_id`) is never used.
//! - **Codes.** `code.coding` holds the MDC code (`urn:iso:std:iso:11073:10101`) and, when the
//!   observation or the terminology has one, the LOINC code. Units are UCUM.
//! - **No fake values.** A value the device did not give (not available, invalid, NaN) is never a
//!   `valueQuantity`: it becomes `dataAbsentReason`, with the device text kept in an extension.
//! - **Traceability.** Extensions `urn:icu-gateway:ext:<name>` carry seq, bed, containment id,
//!   receive time, clock sync, equipment id, raw flags and the source message id/row.

use fhir_sdk::r4b::codes::{BundleType, ObservationStatus as FhirStatus};
use fhir_sdk::r4b::resources::{
    Bundle, BundleEntry, Observation as FhirObservation, ObservationEffective,
    ObservationReferenceRange, ObservationValue, Resource,
};
use fhir_sdk::r4b::types::{
    CodeableConcept, Coding, Extension, ExtensionValue, Identifier, Meta, Quantity, Reference,
};
use fhir_sdk::{DateTime, Instant};
use icu_protos::v1::{Observation, ObservationStatus};
use sha2::{Digest, Sha256};

use crate::error::BridgeError;
use crate::Terminology;

/// Code system of IEEE 11073-10101 (MDC) codes.
pub const MDC_SYSTEM: &str = "urn:iso:std:iso:11073:10101";
/// Code system of LOINC.
pub const LOINC_SYSTEM: &str = "http://loinc.org";
/// Code system of UCUM units.
pub const UCUM_SYSTEM: &str = "http://unitsofmeasure.org";
/// `meta.tag` system for patient association.
pub const ASSOCIATION_SYSTEM: &str = "urn:icu-gateway:association";
/// `meta.tag` code when no patient is associated.
pub const UNASSOCIATED: &str = "unassociated";
/// Prefix of every gateway extension url.
pub const EXT_PREFIX: &str = "urn:icu-gateway:ext:";

const CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const DATA_ABSENT_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";
const INTERPRETATION_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const ACT_REASON_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// Identifier system of one device's observations: `urn:icu-gateway:<gateway>:<device>`.
pub fn identifier_system(gateway_id: &str, device_id: &str) -> String {
    format!("urn:icu-gateway:{gateway_id}:{device_id}")
}

/// Builds the FHIR Bundle (type `collection`) for one device's observations.
///
/// `observations` are expected to be one device's, in seq order (the bridge's grouping ensures
/// it); the Bundle id and identifier use the first and last seq.
pub fn observation_bundle(
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
        ObservationStatus::Corrected => FhirStatus::Amended,
        _ => FhirStatus::Final,
    };

    let receive = instant_from_us(obs.receive_time_us)
        .ok_or_else(|| format!("receive time {} us is out of range", obs.receive_time_us))?;
    let effective = obs
        .device_time_us
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

/// The FHIR id of a census patient's Patient resource (the same in every topic).
pub fn patient_fhir_id(patient_id: &str) -> String {
    fhir_id(&[patient_id])
}

/// `subject` of a record of a census patient: `Patient/<id>` plus the patient id itself.
fn patient_reference(patient_id: &str) -> Result<Reference, String> {
    Reference::builder()
        .reference(format!("Patient/{}", patient_fhir_id(patient_id)))
        .identifier(
            Identifier::builder()
                .value(patient_id.to_owned())
                .build()
                .map_err(|e| e.to_string())?,
        )
        .build()
        .map_err(|e| e.to_string())
}

/// The OBX-8 flags that are result interpretations (v3 ObservationInterpretation codes), in
/// input order without duplicates; measurement-status flags (NAV, INV, QUES, ...) are not.
fn interpretation_codes(flags: &str) -> Vec<&'static str> {
    const KNOWN: &[&str] = &["N", "A", "AA", "H", "HH", "L", "LL", "HU", "LU", "<", ">"];
    let mut out: Vec<&'static str> = Vec::new();
    for flag in flags.split(['~', '^', ',']).map(str::trim) {
        if let Some(code) = KNOWN.iter().find(|k| **k == flag) {
            if !out.contains(code) {
                out.push(code);
            }
        }
    }
    out
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

fn coding(system: &str, code: &str, display: Option<&str>) -> Result<Coding, String> {
    let mut b = Coding::builder()
        .system(system.to_owned())
        .code(code.to_owned());
    if let Some(display) = display {
        b = b.display(display.to_owned());
    }
    b.build().map_err(|e| e.to_string())
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

fn ext(name: &str, value: ExtensionValue) -> Result<Extension, String> {
    Extension::builder()
        .url(format!("{EXT_PREFIX}{name}"))
        .value(value)
        .build()
        .map_err(|e| e.to_string())
}

/// Microseconds since the epoch → FHIR instant (UTC), for years 1..=9999 only (RFC 3339 range).
fn instant_from_us(us: i64) -> Option<Instant> {
    let dt =
        fhir_sdk::time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok()?;
    (1..=9999).contains(&dt.year()).then_some(Instant(dt))
}

/// A valid FHIR id (`[A-Za-z0-9\-.]{1,64}`) from parts joined with '-': the readable form when it
/// is valid, otherwise a SHA-256 based id. Deterministic either way.
fn fhir_id(parts: &[&str]) -> String {
    let joined = parts.join("-");
    let valid = !joined.is_empty()
        && joined.len() <= 64
        && joined
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        joined
    } else {
        let digest = Sha256::digest(parts.join("\u{0}").as_bytes());
        let hex: String = digest[..20].iter().map(|b| format!("{b:02x}")).collect();
        format!("h{hex}")
    }
}

/// A deterministic RFC 4122 (version 5 style, SHA-256 based) UUID from parts.
fn uuid_from(parts: &[&str]) -> String {
    let digest = Sha256::digest(parts.join("\u{0}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Deserializes a record value as a FHIR R4(B) Bundle with fhir-sdk types.
pub fn parse_bundle(value: &[u8]) -> Result<Bundle, BridgeError> {
    serde_json::from_slice(value).map_err(|e| BridgeError::FhirParse {
        reason: e.to_string(),
    })
}

/// The parts of one Observation that tests and the consumer look at.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedObservation {
    /// From the gateway identifier (or the `seq` extension).
    pub seq: u64,
    /// The MDC code (0 when the Observation has none).
    pub mdc_code: u32,
    pub loinc: Option<String>,
    pub value: Option<f64>,
    /// UCUM code (or unit text) of `valueQuantity`.
    pub unit: Option<String>,
    /// `effectiveDateTime` as written.
    pub effective: Option<String>,
}

/// Reads the Observations of a Bundle value.
///
/// Fails when the value is not a Bundle or an Observation has no readable seq.
pub fn observations_of(bundle_json: &[u8]) -> Result<Vec<ParsedObservation>, BridgeError> {
    let bundle = parse_bundle(bundle_json)?;
    let mut out = Vec::new();
    for entry in bundle.entry.iter().flatten() {
        let Some(Resource::Observation(obs)) = &entry.resource else {
            continue;
        };
        out.push(parse_observation(obs)?);
    }
    Ok(out)
}

fn parse_observation(obs: &FhirObservation) -> Result<ParsedObservation, BridgeError> {
    let from_identifier = obs
        .identifier
        .iter()
        .flatten()
        .filter(|i| {
            i.system
                .as_deref()
                .is_some_and(|s| s.starts_with("urn:icu-gateway:"))
        })
        .find_map(|i| i.value.as_deref()?.parse::<u64>().ok());
    let from_extension = obs.extension.iter().find_map(|e| {
        if e.url != format!("{EXT_PREFIX}seq") {
            return None;
        }
        match &e.value {
            Some(ExtensionValue::String(s)) => s.parse::<u64>().ok(),
            _ => None,
        }
    });
    let seq = from_identifier
        .or(from_extension)
        .ok_or_else(|| BridgeError::FhirParse {
            reason: format!(
                "observation {} has no gateway identifier with a numeric seq",
                obs.id.as_deref().unwrap_or("<no id>")
            ),
        })?;
    let code_of = |system: &str| {
        obs.code
            .coding
            .iter()
            .flatten()
            .find(|c| c.system.as_deref() == Some(system))
            .and_then(|c| c.code.clone())
    };
    let mdc_code = code_of(MDC_SYSTEM)
        .and_then(|c| c.parse::<u32>().ok())
        .unwrap_or(0);
    let (value, unit) = match &obs.value {
        Some(ObservationValue::Quantity(q)) => (q.value, q.code.clone().or_else(|| q.unit.clone())),
        _ => (None, None),
    };
    let effective = match &obs.effective {
        Some(ObservationEffective::DateTime(dt)) => serde_json::to_value(dt)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned)),
        Some(ObservationEffective::Instant(i)) => serde_json::to_value(i)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned)),
        _ => None,
    };
    Ok(ParsedObservation {
        seq,
        mdc_code,
        loinc: code_of(LOINC_SYSTEM),
        value,
        unit,
        effective,
    })
}

mod adt;
mod alarm;
pub use adt::{adt_bundle, encounter_status};
pub use alarm::{alarm_identifier_system, alarm_observation};

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;
