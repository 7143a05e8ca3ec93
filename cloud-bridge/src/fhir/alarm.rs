//! FHIR R4 mapping of alarm state changes (for `icu.alarms`).
//!
//! One Observation per state change; a Kafka record carries one device's consecutive state
//! changes as a Bundle (type `collection`, [`alarm_bundle`]) with deterministic bytes like the
//! observation bundles. `code` is
//! the alarm's MDC event code, `valueString` its text, and the PCD-04 alert attributes are
//! components: event phase (68481), alarm state (68482), priority (68484) and alert type (68485).
//! The patient is never guessed: `subject` (`Patient/<id>` + the patient id) is set only when the
//! alarm carries a census patient; otherwise `meta.tag` says `unassociated`.

use fhir_sdk::r4b::codes::ObservationStatus as FhirStatus;
use fhir_sdk::r4b::resources::{
    Observation as FhirObservation, ObservationComponent, ObservationComponentValue,
    ObservationEffective, ObservationValue, Resource,
};
use fhir_sdk::r4b::types::{CodeableConcept, ExtensionValue, Identifier, Meta};
use fhir_sdk::DateTime;
use icu_protos::v1::Alarm;

use super::common::{
    coding, device_bundle, fhir_id, instant_from_us, non_empty, patient_reference,
    procedure_category, profile, FhirContext, ASSOCIATION_SYSTEM, MDC_SYSTEM, UNASSOCIATED,
};
use crate::error::BridgeError;

/// Identifier system of one device's alarm stream: `urn:icu-gateway:<gateway>:<device>:alarms`.
pub fn alarm_identifier_system(gateway_id: &str, device_id: &str) -> String {
    format!("urn:icu-gateway:{gateway_id}:{device_id}:alarms")
}

fn attribute(code: &str, refid: &str, value: &str) -> Result<Option<ObservationComponent>, String> {
    let Some(value) = non_empty(value) else {
        return Ok(None);
    };
    ObservationComponent::builder()
        .code(
            CodeableConcept::builder()
                .coding(vec![Some(coding(MDC_SYSTEM, code, Some(refid))?)])
                .build()
                .map_err(|e| e.to_string())?,
        )
        .value(ObservationComponentValue::String(value.to_owned()))
        .build()
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The FHIR Observation (JSON bytes) for one alarm state change of `device_id`.
pub fn alarm_observation(
    cx: &FhirContext,
    device_id: &str,
    alarm: &Alarm,
) -> Result<Vec<u8>, BridgeError> {
    let obs = alarm_resource(cx, device_id, alarm)?;
    serde_json::to_vec(&obs).map_err(|e| BridgeError::FhirMapping {
        device_id: device_id.to_owned(),
        seq: alarm.seq,
        reason: e.to_string(),
    })
}

/// The FHIR Bundle (type `collection`, JSON bytes) of one device's consecutive alarm state
/// changes, in seq order: the value of one `icu.alarms` record. Its id and identifier name the
/// seq range (`<first>-<last>`), like an observation bundle's; each entry is the Observation of
/// [`alarm_observation`].
pub fn alarm_bundle(
    cx: &FhirContext,
    device_id: &str,
    alarms: &[Alarm],
) -> Result<Vec<u8>, BridgeError> {
    let Some(last) = alarms.last() else {
        return Err(BridgeError::FhirMapping {
            device_id: device_id.to_owned(),
            seq: 0,
            reason: "no alarm state changes to put in a bundle".into(),
        });
    };
    let fail = |seq: u64| {
        move |reason: String| BridgeError::FhirMapping {
            device_id: device_id.to_owned(),
            seq,
            reason,
        }
    };
    let newest = alarms.iter().map(|a| a.event_time_us).max().unwrap_or(0);
    let timestamp = instant_from_us(newest)
        .ok_or_else(|| format!("event time {newest} us is out of range"))
        .map_err(fail(last.seq))?;
    let resources = alarms
        .iter()
        .map(|a| {
            Ok((
                a.seq,
                Resource::Observation(alarm_resource(cx, device_id, a)?),
            ))
        })
        .collect::<Result<Vec<_>, BridgeError>>()?;
    let system = alarm_identifier_system(&cx.gateway_id, device_id);
    device_bundle(cx, device_id, "alarm", system, timestamp, resources)
        .map_err(|(seq, reason)| fail(seq)(reason))
}

/// The FHIR Observation for one alarm state change of `device_id`.
fn alarm_resource(
    cx: &FhirContext,
    device_id: &str,
    alarm: &Alarm,
) -> Result<FhirObservation, BridgeError> {
    let gateway_id = cx.gateway_id.as_str();
    let fail = |reason: String| BridgeError::FhirMapping {
        device_id: device_id.to_owned(),
        seq: alarm.seq,
        reason,
    };
    let build = || -> Result<FhirObservation, String> {
        let time = instant_from_us(alarm.event_time_us)
            .ok_or_else(|| format!("event time {} us is out of range", alarm.event_time_us))?;
        let seq = alarm.seq.to_string();
        let code = CodeableConcept::builder()
            .coding(vec![Some(coding(
                MDC_SYSTEM,
                &alarm.mdc_code.to_string(),
                None,
            )?)])
            .text(alarm.text.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let components: Vec<Option<ObservationComponent>> = [
            attribute("68481", "MDC_ATTR_EVENT_PHASE", &alarm.phase)?,
            attribute("68482", "MDC_ATTR_ALARM_STATE", &alarm.state)?,
            attribute("68484", "MDC_ATTR_ALARM_PRIORITY", &alarm.priority)?,
            attribute("68485", "MDC_ATTR_ALERT_TYPE", &alarm.alert_type)?,
        ]
        .into_iter()
        .flatten()
        .map(Some)
        .collect();
        let mut extensions = vec![cx.ext("seq", ExtensionValue::String(seq.clone()))?];
        cx.string_exts(
            &mut extensions,
            &[
                ("bed", &alarm.bed),
                ("alarm-id", &alarm.alarm_id),
                ("alarm-source", &alarm.source),
                // The logged-in account that acted on it (the gateway's audit trail has the rest).
                ("acknowledged-by", &alarm.acknowledged_by),
                ("silenced-by", &alarm.silenced_by),
            ],
        )?;
        let patient = non_empty(&alarm.patient_id);
        let device = cx.device_ref(device_id)?;
        let mut builder = FhirObservation::builder()
            .id(fhir_id(&[gateway_id, device_id, "alarm", &seq]))
            .extension(extensions)
            .identifier(vec![Some(
                Identifier::builder()
                    .system(alarm_identifier_system(gateway_id, device_id))
                    .value(seq)
                    .build()
                    .map_err(|e| e.to_string())?,
            )])
            .status(FhirStatus::Final)
            .category(vec![Some(procedure_category()?)])
            .code(code)
            .effective(ObservationEffective::DateTime(DateTime::DateTime(
                time.clone(),
            )))
            .issued(time)
            .value(ObservationValue::String(alarm.text.clone()))
            .component(components)
            .device(device.clone());
        let meta = Meta::builder().profile(vec![Some(profile::POCD_ENUMERATION.to_owned())]);
        match patient {
            Some(patient) => {
                builder = builder
                    .subject(patient_reference(patient)?)
                    .meta(meta.build().map_err(|e| e.to_string())?)
            }
            None => {
                // PoCD: without a patient, the subject is the device.
                builder = builder.subject(device).meta(
                    meta.tag(vec![Some(coding(ASSOCIATION_SYSTEM, UNASSOCIATED, None)?)])
                        .build()
                        .map_err(|e| e.to_string())?,
                )
            }
        }
        builder.build().map_err(|e| e.to_string())
    };
    build().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn technical_alarm_maps_with_pcd04_attributes_and_is_deterministic() {
        let alarm = Alarm {
            device_id: "spo2-01".into(),
            seq: 3,
            bed: "bed-01".into(),
            alarm_id: "spo2-01:stale-feed".into(),
            mdc_code: 196616,
            text: "no data from spo2-01 for 5 s".into(),
            priority: "PM".into(),
            phase: "start".into(),
            state: "active".into(),
            event_time_us: 1_700_000_000_000_000,
            alert_type: "ST".into(),
            source: "gateway:stale-feed".into(),
            patient_id: String::new(),
            ..Default::default()
        };
        let a =
            alarm_observation(&FhirContext::with_default_base("gw"), "spo2-01", &alarm).unwrap();
        assert_eq!(
            a,
            alarm_observation(&FhirContext::with_default_base("gw"), "spo2-01", &alarm).unwrap()
        );
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["resourceType"], "Observation");
        assert_eq!(v["code"]["coding"][0]["code"], "196616");
        assert_eq!(v["valueString"], "no data from spo2-01 for 5 s");
        let comps = v["component"].as_array().unwrap();
        let find = |code: &str| {
            comps
                .iter()
                .find(|c| c["code"]["coding"][0]["code"] == code)
                .map(|c| c["valueString"].clone())
        };
        assert_eq!(find("68481"), Some("start".into()));
        assert_eq!(find("68482"), Some("active".into()));
        assert_eq!(find("68484"), Some("PM".into()));
        assert_eq!(find("68485"), Some("ST".into()));
        assert_eq!(v["meta"]["tag"][0]["code"], "unassociated");
        assert_eq!(
            v["identifier"][0]["system"],
            "urn:icu-gateway:gw:spo2-01:alarms"
        );
        assert_eq!(v["effectiveDateTime"], "2023-11-14T22:13:20Z");
        assert_eq!(v["id"], "gw-spo2-01-alarm-3");
        assert_eq!(
            v["subject"]["reference"], "Device/gw-spo2-01",
            "without a patient the subject is the device"
        );

        let associated = Alarm {
            patient_id: "P1".into(),
            ..alarm
        };
        let v: serde_json::Value = serde_json::from_slice(
            &alarm_observation(
                &FhirContext::with_default_base("gw"),
                "spo2-01",
                &associated,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            v["subject"],
            serde_json::json!({"reference": "Patient/P1", "identifier": {"value": "P1"}})
        );
        assert!(v["meta"].get("tag").is_none(), "no unassociated tag");
        assert_eq!(v["meta"]["profile"][0], profile::POCD_ENUMERATION);
    }

    #[test]
    fn a_bundle_carries_a_devices_state_changes_in_seq_order_and_parses_as_observations() {
        let change = |seq: u64, phase: &str| Alarm {
            device_id: "mon-01".into(),
            seq,
            bed: "bed-01".into(),
            alarm_id: "bed-01:news2:1".into(),
            mdc_code: 196616,
            text: format!("NEWS2 {}", 5 + seq),
            priority: "PM".into(),
            phase: phase.into(),
            state: "active".into(),
            event_time_us: 1_700_000_000_000_000 + seq as i64 * 1_000_000,
            alert_type: "SP".into(),
            source: "news2".into(),
            patient_id: "P1".into(),
            ..Default::default()
        };
        let alarms = [change(7, "start"), change(8, "update"), change(9, "end")];
        let bytes = alarm_bundle(&FhirContext::with_default_base("gw"), "mon-01", &alarms).unwrap();
        assert_eq!(
            bytes,
            alarm_bundle(&FhirContext::with_default_base("gw"), "mon-01", &alarms).unwrap()
        );
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["resourceType"], "Bundle");
        assert_eq!(v["type"], "collection");
        assert_eq!(v["identifier"]["value"], "7-9");
        assert_eq!(
            v["timestamp"], "2023-11-14T22:13:29Z",
            "the newest event time"
        );
        let entries = v["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        for (entry, alarm) in entries.iter().zip(&alarms) {
            let one: serde_json::Value = serde_json::from_slice(
                &alarm_observation(&FhirContext::with_default_base("gw"), "mon-01", alarm).unwrap(),
            )
            .unwrap();
            assert_eq!(
                entry["resource"], one,
                "each entry is the alarm's Observation"
            );
        }
        // The consumer's reader sees the seqs.
        let seqs: Vec<u64> = crate::fhir::observations_of(&bytes)
            .unwrap()
            .iter()
            .map(|o| o.seq)
            .collect();
        assert_eq!(seqs, [7, 8, 9]);
        assert!(alarm_bundle(&FhirContext::with_default_base("gw"), "mon-01", &[]).is_err());
    }
}
