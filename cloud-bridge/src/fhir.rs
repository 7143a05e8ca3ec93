//! FHIR R4 mapping of canonical records. Observation bundles (the hot path of a replay) are
//! written as JSON directly (module `json`); alarms, ADT events and the readers use the fhir-sdk
//! R4B types with serde_json. The direct writer's output parses with the fhir-sdk types and
//! serializes back to the same bytes (tested over generated inputs in `roundtrip`), and is
//! pinned by a golden file.
//!
//! Owns: [`observation_bundle`] (one device's consecutive observations of one patient → one
//! `collection` Bundle of PoCD-style Observations), [`alarm_observation`] (one alarm state change
//! → one Observation, in `alarm`), [`adt_bundle`] (one ADT event → one `collection` Bundle of a
//! Patient and an Encounter, in `adt`), [`audit_event`] (one gateway audit-trail entry → one
//! AuditEvent, in `audit`), [`waveform_bundle`] (one device's consecutive waveform segments →
//! one Bundle of Observations with `valueSampledData`, in [`waveform`]), [`snippet_bundle`] (an
//! alarm's waveform snippet → a DiagnosticReport with its waveform Observations, in `snippet`),
//! and [`parse_bundle`], [`observations_of`], [`decode_value`] and [`snippet_of`] for readers.
//!
//! Guarantees:
//! - **Deterministic bytes.** The output depends only on the inputs: no wall clock, no random
//!   ids. The Bundle timestamp is the newest receive time, ids are derived from
//!   `(gateway, device, seq)`. A re-send of the same records produces identical bytes, so a
//!   duplicate downstream is byte-identical and carries the same signature.
//! - **Scoped ids.** Every id and identifier names the gateway: Observation
//!   `<gateway>-<device>-<seq>`, `Device/<gateway>-<device>`, alarm
//!   `<gateway>-<device>-alarm-<seq>` (a SHA-256 based `h...` id when that is no valid FHIR id,
//!   `[A-Za-z0-9\-.]{1,64}`), so two ICUs' `mon-01` never overwrite each other on a FHIR server.
//! - **Never a guessed patient.** The patient comes only from the record's `patient_id` (set by
//!   the gateway from the ADT census at the reading's time). When it is set, `subject` is
//!   `Patient/<id>` with `identifier.value` = the patient id; when it is empty, `subject` is the
//!   device (as the PoCD guide does) and `meta.tag` carries
//!   `urn:icu-gateway:association|unassociated`. A patient id the device itself reported
//!   (`reported_patient_id`) is never used.
//! - **Profiles and codes.** `meta.profile` always names the PoCD NumericObservation (or
//!   EnumerationObservation for a text value) and, for a vital sign of a patient with an
//!   effective time and an allowed unit, the FHIR R4 vital-signs profile (module `vitals`: SpO2
//!   carries 2708-6 and 59408-5, pulse rate 8867-4, ...). `category` follows the code
//!   (vital-signs, therapy or procedure). `code.coding` holds the MDC code
//!   (`urn:iso:std:iso:11073:10101`) and the LOINC codes. Units are UCUM. The systolic and
//!   diastolic (and mean) readings of one measurement also make an 85354-9 panel Observation
//!   with components (R4 `bp` profile) that names them in `derivedFrom`.
//! - **No fake values.** A value the device did not give (not available, invalid, NaN) is never a
//!   `valueQuantity`: it becomes `dataAbsentReason`, with the device text kept in an extension.
//!   OBX-11 C is `corrected` (HL7 v2-to-FHIR concept map). The device's alarm limits are a
//!   `referenceRange` typed `alarm-limits`, so nobody reads them as a normal range.
//! - **No fake times.** `effectiveDateTime` is the device's time only when the message gave one
//!   the gateway trusted; otherwise it is absent and the extension `device-time-status` says
//!   `missing` or `untrusted` (the raw device time in `untrusted-device-time`). The receive time
//!   is `issued`, never a stand-in for the effective time.
//! - **Traceability.** Extensions `<base>/StructureDefinition/<name>` (base from
//!   `[kafka] fhir_base`, definitions in `cloud-bridge/fhir/`) carry seq, bed, containment id,
//!   receive time, clock sync, equipment id, raw flags and the source message id/row.

use fhir_sdk::r4b::resources::{
    Observation as FhirObservation, ObservationEffective, ObservationValue, Resource,
};
use fhir_sdk::r4b::types::ExtensionValue;
use icu_protos::v1::Observation;

use crate::error::BridgeError;
use crate::Terminology;
use common::{fhir_id, instant_from_us};
pub use common::{
    identifier_system, parse_bundle, patient_fhir_id, profile, FhirContext, ASSOCIATION_SYSTEM,
    DEFAULT_FHIR_BASE, LOINC_SYSTEM, MDC_SYSTEM, UCUM_SYSTEM, UNASSOCIATED,
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
    cx: &FhirContext,
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

    let gateway_id = cx.gateway_id.as_str();
    let mut w = json::BundleWriter::new(cx, device_id);
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
        if !obs.derived_from.is_empty() {
            // A blood pressure panel: made of readings that are in the bundle themselves.
            continue;
        }
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
        if !e.url.ends_with("/StructureDefinition/seq") {
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
mod device;
mod json;
mod sampled_data;
mod snippet;
mod vitals;
pub mod waveform;
pub use adt::{adt_bundle, encounter_status};
pub use alarm::{alarm_bundle, alarm_identifier_system, alarm_observation};
pub use audit::{
    audit_entry_of, audit_event, is_audit_event, ParsedAuditEntry, AUDIT_ACTION_SYSTEM,
    AUDIT_EVENT_TYPE_SYSTEM, DCM_SYSTEM, RESTFUL_INTERACTION_SYSTEM, ROLE_SYSTEM,
};
pub use device::{device_metric_id, devices_bundle, DeviceDescription, MetricInfo, EUI64_SYSTEM};
pub use snippet::{snippet_bundle, snippet_of, DecodedSnippet};
pub use waveform::{decode_value, waveform_bundle, DecodedSegment};

#[cfg(test)]
mod golden;
#[cfg(test)]
mod roundtrip;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod waveform_tests;
