//! FHIR R4 mapping of canonical records. Observation bundles (the hot path of a replay) are
//! written as JSON directly (module `json`); alarms, ADT events and the readers use the fhir-sdk
//! R4B types with serde_json. The direct writer produces exactly the bytes the fhir-sdk types
//! serialize to (golden file, and a byte-for-byte comparison with the fhir-sdk mapping kept as a
//! test reference), so the wire format did not change with it.
//!
//! Owns: [`observation_bundle`] (one device's consecutive observations of one patient → one
//! `collection` Bundle of PoCD-style Observations), [`alarm_observation`] (one alarm state change
//! → one Observation, in `alarm`), [`adt_bundle`] (one ADT event → one `collection` Bundle of a
//! Patient and an Encounter, in `adt`), [`audit_event`] (one gateway audit-trail entry → one
//! AuditEvent, in `audit`), and [`parse_bundle`] and [`observations_of`] for readers.
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
//!   receive time, clock sync, equipment id, raw flags and the source message id/row; a device
//!   time the gateway did not trust is not `effectiveDateTime` (the receive time is) but the
//!   `untrusted-device-time` extension.

use fhir_sdk::r4b::resources::{
    Bundle, Observation as FhirObservation, ObservationEffective, ObservationValue, Resource,
};
use fhir_sdk::r4b::types::ExtensionValue;
use icu_protos::v1::Observation;

use crate::error::BridgeError;
use crate::Terminology;
use common::{fhir_id, instant_from_us};
pub use common::{
    identifier_system, patient_fhir_id, ASSOCIATION_SYSTEM, EXT_PREFIX, LOINC_SYSTEM, MDC_SYSTEM,
    UCUM_SYSTEM, UNASSOCIATED,
};

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
mod audit;
mod common;
mod json;
pub use adt::{adt_bundle, encounter_status};
pub use alarm::{alarm_bundle, alarm_identifier_system, alarm_observation};
pub use audit::{
    audit_entry_of, audit_event, is_audit_event, ParsedAuditEntry, AUDIT_ACTION_SYSTEM,
    AUDIT_EVENT_TYPE_SYSTEM, DCM_SYSTEM, RESTFUL_INTERACTION_SYSTEM, ROLE_SYSTEM,
};

#[cfg(test)]
mod golden;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
