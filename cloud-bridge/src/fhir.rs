//! FHIR R4 mapping of canonical records. Observation bundles (the hot path of a replay) are
//! written as JSON directly (module `json`); alarms, ADT events and the readers use the fhir-sdk
//! R4B types with serde_json. The direct writer produces exactly the bytes the fhir-sdk types
//! serialize to (golden file, and a byte-for-byte comparison with the fhir-sdk mapping kept as a
//! test reference), so the wire format did not change with it.
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

use fhir_sdk::r4b::resources::{
    Bundle, Observation as FhirObservation, ObservationEffective, ObservationValue, Resource,
};
use fhir_sdk::r4b::types::{Coding, Extension, ExtensionValue, Identifier, Reference};
use fhir_sdk::Instant;
use icu_protos::v1::Observation;
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
///
/// The JSON is written directly into one pre-sized buffer (module [`json`]), without building
/// fhir-sdk values first: the bytes are exactly those the fhir-sdk R4B types serialize to with
/// serde_json (same field order, string escaping, number and time formats), pinned by a golden
/// file and compared with the fhir-sdk mapping over generated inputs in the tests. Parts that are
/// the same for every observation of the device (identifier system, device reference, the
/// fullUrl hash prefix) are prepared once per bundle.
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

    let mut w = json::BundleWriter::new(gateway_id, device_id);
    let range = format!("{}-{}", first.seq, last.seq);
    w.start_bundle(
        &fhir_id(&[gateway_id, device_id, &range]),
        &range,
        &timestamp,
    );
    for (i, obs) in observations.iter().enumerate() {
        let before = w.len();
        w.observation_entry(i == 0, obs, terminology)
            .map_err(fail(obs.seq))?;
        if i == 0 {
            // Room for the rest at the size of the first (one allocation, no copies).
            let each = w.len() - before + 1;
            w.reserve(
                each.saturating_mul(observations.len() - 1)
                    .saturating_add(64),
            );
        }
    }
    Ok(w.finish())
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
    String::from_utf8_lossy(&uuid_text(&digest)).into_owned()
}

/// The UUID text (`8-4-4-4-12` lowercase hex) of a SHA-256 digest's first 16 bytes, with the
/// version (5) and variant bits set.
fn uuid_text(digest: &[u8]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    out
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
mod json;
pub use adt::{adt_bundle, encounter_status};
pub use alarm::{alarm_identifier_system, alarm_observation};

#[cfg(test)]
mod golden;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
