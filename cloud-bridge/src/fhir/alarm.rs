//! FHIR R4 mapping of one alarm state change (for `icu.alarms`).
//!
//! One Observation per state change, deterministic bytes like the observation bundles. `code` is
//! the alarm's MDC event code, `valueString` its text, and the PCD-04 alert attributes are
//! components: event phase (68481), alarm state (68482), priority (68484) and alert type (68485).
//! The patient is never guessed: `subject` (`Patient/<id>` + the patient id) is set only when the
//! alarm carries a census patient; otherwise `meta.tag` says `unassociated`.

use fhir_sdk::r4b::codes::ObservationStatus as FhirStatus;
use fhir_sdk::r4b::resources::{
    Observation as FhirObservation, ObservationComponent, ObservationComponentValue,
    ObservationEffective, ObservationValue,
};
use fhir_sdk::r4b::types::{CodeableConcept, ExtensionValue, Identifier, Meta, Reference};
use fhir_sdk::DateTime;
use icu_protos::v1::Alarm;

use super::common::{
    coding, ext, fhir_id, instant_from_us, non_empty, patient_reference, ASSOCIATION_SYSTEM,
    MDC_SYSTEM, UNASSOCIATED,
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
    gateway_id: &str,
    device_id: &str,
    alarm: &Alarm,
) -> Result<Vec<u8>, BridgeError> {
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
        let mut extensions = vec![ext("seq", ExtensionValue::String(seq.clone()))?];
        for (name, value) in [
            ("bed", &alarm.bed),
            ("alarm-id", &alarm.alarm_id),
            ("alarm-source", &alarm.source),
            // The logged-in account that acted on it (the gateway's audit trail has the rest).
            ("acknowledged-by", &alarm.acknowledged_by),
            ("silenced-by", &alarm.silenced_by),
        ] {
            if let Some(v) = non_empty(value) {
                extensions.push(ext(name, ExtensionValue::String(v.to_owned()))?);
            }
        }
        let patient = non_empty(&alarm.patient_id);
        let mut builder = FhirObservation::builder()
            .id(fhir_id(&[device_id, "alarm", &seq]))
            .extension(extensions)
            .identifier(vec![Some(
                Identifier::builder()
                    .system(alarm_identifier_system(gateway_id, device_id))
                    .value(seq)
                    .build()
                    .map_err(|e| e.to_string())?,
            )])
            .status(FhirStatus::Final)
            .code(code)
            .effective(ObservationEffective::DateTime(DateTime::DateTime(
                time.clone(),
            )))
            .issued(time)
            .value(ObservationValue::String(alarm.text.clone()))
            .component(components)
            .device(
                Reference::builder()
                    .reference(format!("Device/{}", fhir_id(&[device_id])))
                    .display(device_id.to_owned())
                    .build()
                    .map_err(|e| e.to_string())?,
            );
        match patient {
            Some(patient) => builder = builder.subject(patient_reference(patient)?),
            None => {
                builder = builder.meta(
                    Meta::builder()
                        .tag(vec![Some(coding(ASSOCIATION_SYSTEM, UNASSOCIATED, None)?)])
                        .build()
                        .map_err(|e| e.to_string())?,
                )
            }
        }
        builder.build().map_err(|e| e.to_string())
    };
    let obs = build().map_err(fail)?;
    serde_json::to_vec(&obs).map_err(|e| fail(e.to_string()))
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
        let a = alarm_observation("gw", "spo2-01", &alarm).unwrap();
        assert_eq!(a, alarm_observation("gw", "spo2-01", &alarm).unwrap());
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
        assert!(v.get("subject").is_none());

        let associated = Alarm {
            patient_id: "P1".into(),
            ..alarm
        };
        let v: serde_json::Value =
            serde_json::from_slice(&alarm_observation("gw", "spo2-01", &associated).unwrap())
                .unwrap();
        assert_eq!(
            v["subject"],
            serde_json::json!({"reference": "Patient/P1", "identifier": {"value": "P1"}})
        );
        assert!(
            v.get("meta").is_none(),
            "no unassociated tag, no empty meta"
        );
    }
}
