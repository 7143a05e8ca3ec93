//! FHIR R4 mapping of one ADT event (for `icu.adt`): a `collection` Bundle of a Patient and an
//! Encounter.
//!
//! Deterministic bytes like the other mappings: ids come from the gateway, the patient id, the
//! visit number (or admit time) and the record's seq; the Bundle timestamp is the event time.
//!
//! - **Patient**: id [`patient_fhir_id`] (the same id every Observation and alarm `subject` of
//!   that patient points to); identifier `{system, value: patient_id}` where the system is
//!   `urn:icu-gateway:assigning-authority:<PID-3.4>` when the feed names one, else
//!   `urn:icu-gateway:<gateway>:patient-id`; name (family, given); gender from PID-8 (M → male,
//!   F → female, O → other, anything else → unknown); birthDate from PID-7 (`YYYY[MM[DD]]`;
//!   anything unreadable is left out, never guessed).
//! - **Encounter**: id from the gateway and visit number, else from the patient and admit time,
//!   else from the patient and event time (one Encounter per event: nothing is merged by guess);
//!   status from [`encounter_status`]; class `IMP`; `subject` the Patient; `location` the bed
//!   (display and identifier `urn:icu-gateway:<gateway>:bed`), plus the prior bed as a completed
//!   location for A02; period start = admit time else event time, end = discharge time (else
//!   event time) for A03; extensions `urn:icu-gateway:ext:adt-event` (the trigger event),
//!   `urn:icu-gateway:ext:adt-message-id` (MSH-10) and `urn:icu-gateway:ext:adt-peer` (the
//!   address the message came from).
//!
//! An event without a patient id, or with a time out of range, is a mapping error: the gateway's
//! census must not store one.

use fhir_sdk::r4b::codes::{
    AdministrativeGender, BundleType, EncounterLocationStatus, EncounterStatus,
};
use fhir_sdk::r4b::resources::{
    Bundle, BundleEntry, Encounter, EncounterLocation, Patient, Resource,
};
use fhir_sdk::r4b::types::{ExtensionValue, HumanName, Identifier, Meta, Period, Reference};
use fhir_sdk::time::{Date as CalendarDate, Month};
use fhir_sdk::{Date, DateTime, Instant};
use icu_protos::v1::AdtEvent;

use super::common::{
    coding, fhir_id, identifier_system, instant_from_us, non_empty, patient_fhir_id,
    patient_reference, uuid_from, FhirContext,
};

/// `meta.profile` of the Patient and the Encounter: the FHIR R4 base definitions (no patient
/// profile is required by the PoCD guide; a site that needs a national one maps from these).
const PATIENT_PROFILE: &str = "http://hl7.org/fhir/StructureDefinition/Patient";
const ENCOUNTER_PROFILE: &str = "http://hl7.org/fhir/StructureDefinition/Encounter";
use crate::error::BridgeError;

/// Code system of the encounter class.
pub const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// The FHIR Encounter status an ADT trigger event implies.
///
/// A03 (discharge) → `finished`; A11 (cancel admit) → `entered-in-error` (the stay did not
/// happen); A05 (pre-admit) → `planned`; the other admitted-patient events (A01 admit, A02
/// transfer, A06/A07 class changes, A08 update, A12 cancel transfer, A13 cancel discharge, and
/// A04/A09/A10) → `in-progress`; an unknown event → `unknown`.
pub fn encounter_status(event: &str) -> EncounterStatus {
    match event.trim().to_ascii_uppercase().as_str() {
        "A03" => EncounterStatus::Finished,
        "A11" => EncounterStatus::EnteredInError,
        "A05" => EncounterStatus::Planned,
        "A01" | "A02" | "A04" | "A06" | "A07" | "A08" | "A09" | "A10" | "A12" | "A13" => {
            EncounterStatus::InProgress
        }
        _ => EncounterStatus::Unknown,
    }
}

/// The Bundle (JSON bytes) for one ADT event, record `seq` of `source_id` (the gateway stores
/// ADT events under the source id `adt`).
pub fn adt_bundle(
    cx: &FhirContext,
    source_id: &str,
    seq: u64,
    adt: &AdtEvent,
) -> Result<Vec<u8>, BridgeError> {
    let fail = |reason: String| BridgeError::FhirMapping {
        device_id: source_id.to_owned(),
        seq,
        reason,
    };
    let bundle = build(cx, source_id, seq, adt).map_err(fail)?;
    serde_json::to_vec(&bundle).map_err(|e| fail(e.to_string()))
}

fn build(cx: &FhirContext, source_id: &str, seq: u64, adt: &AdtEvent) -> Result<Bundle, String> {
    let gateway_id = cx.gateway_id.as_str();
    let patient_id = non_empty(&adt.patient_id)
        .ok_or_else(|| format!("ADT event {} has no patient id", adt.event))?;
    let time = |what: &str, us: i64| {
        instant_from_us(us).ok_or_else(|| format!("{what} {us} us is out of range"))
    };
    let event_time = time("event time", adt.event_time_us)?;
    let admit = adt
        .admit_time_us
        .map(|us| time("admit time", us))
        .transpose()?;
    let discharge = adt
        .discharge_time_us
        .map(|us| time("discharge time", us))
        .transpose()?;

    let patient = map_patient(gateway_id, patient_id, adt)?;
    let encounter = map_encounter(
        cx,
        patient_id,
        adt,
        &event_time,
        admit.as_ref(),
        discharge.as_ref(),
    )?;
    let seq = seq.to_string();
    let entry = |kind: &str, resource: Resource, id: &str| {
        BundleEntry::builder()
            .full_url(format!(
                "urn:uuid:{}",
                uuid_from(&[kind, gateway_id, source_id, &seq, id])
            ))
            .resource(resource)
            .build()
            .map(Some)
            .map_err(|e| e.to_string())
    };
    let patient_entry = entry(
        "patient",
        Resource::Patient(patient),
        &patient_fhir_id(patient_id),
    )?;
    let encounter_id = encounter.id.clone().unwrap_or_default();
    let encounter_entry = entry("encounter", Resource::Encounter(encounter), &encounter_id)?;
    Bundle::builder()
        .id(fhir_id(&[gateway_id, source_id, &seq]))
        .identifier(
            Identifier::builder()
                .system(identifier_system(gateway_id, source_id))
                .value(seq)
                .build()
                .map_err(|e| e.to_string())?,
        )
        .r#type(BundleType::Collection)
        .timestamp(event_time)
        .entry(vec![patient_entry, encounter_entry])
        .build()
        .map_err(|e| e.to_string())
}

fn map_patient(gateway_id: &str, patient_id: &str, adt: &AdtEvent) -> Result<Patient, String> {
    let system = match non_empty(&adt.assigning_authority) {
        Some(aa) => format!("urn:icu-gateway:assigning-authority:{aa}"),
        None => format!("urn:icu-gateway:{gateway_id}:patient-id"),
    };
    let gender = match adt.sex.trim().to_ascii_uppercase().as_str() {
        "M" => AdministrativeGender::Male,
        "F" => AdministrativeGender::Female,
        "O" => AdministrativeGender::Other,
        _ => AdministrativeGender::Unknown,
    };
    let mut builder = Patient::builder()
        .id(patient_fhir_id(patient_id))
        .meta(
            Meta::builder()
                .profile(vec![Some(PATIENT_PROFILE.to_owned())])
                .build()
                .map_err(|e| e.to_string())?,
        )
        .identifier(vec![Some(
            Identifier::builder()
                .system(system)
                .value(patient_id.to_owned())
                .build()
                .map_err(|e| e.to_string())?,
        )])
        .gender(gender);
    let family = non_empty(&adt.family_name);
    let given = non_empty(&adt.given_name);
    if family.is_some() || given.is_some() {
        let mut name = HumanName::builder();
        if let Some(family) = family {
            name = name.family(family.to_owned());
        }
        if let Some(given) = given {
            name = name.given(vec![Some(given.to_owned())]);
        }
        builder = builder.name(vec![Some(name.build().map_err(|e| e.to_string())?)]);
    }
    if let Some(birth) = hl7_date(&adt.birth_date) {
        builder = builder.birth_date(birth);
    }
    builder.build().map_err(|e| e.to_string())
}

fn map_encounter(
    cx: &FhirContext,
    patient_id: &str,
    adt: &AdtEvent,
    event_time: &Instant,
    admit: Option<&Instant>,
    discharge: Option<&Instant>,
) -> Result<Encounter, String> {
    let gateway_id = cx.gateway_id.as_str();
    let event = adt.event.trim().to_ascii_uppercase();
    let status = encounter_status(&event);
    let visit = non_empty(&adt.visit_number);
    let id = match (visit, adt.admit_time_us) {
        (Some(visit), _) => fhir_id(&[gateway_id, "visit", visit]),
        (None, Some(admit_us)) => {
            fhir_id(&[gateway_id, patient_id, "admit", &admit_us.to_string()])
        }
        (None, None) => fhir_id(&[
            gateway_id,
            patient_id,
            "event",
            &adt.event_time_us.to_string(),
        ]),
    };
    let start = admit.unwrap_or(event_time).clone();
    let end = (event == "A03").then(|| discharge.unwrap_or(event_time).clone());
    let period = |start: Option<&Instant>, end: Option<&Instant>| {
        let mut p = Period::builder();
        if let Some(start) = start {
            p = p.start(DateTime::DateTime(start.clone()));
        }
        if let Some(end) = end {
            p = p.end(DateTime::DateTime(end.clone()));
        }
        p.build().map_err(|e| e.to_string())
    };

    let bed_reference = |bed: &str| {
        Reference::builder()
            .identifier(
                Identifier::builder()
                    .system(format!("urn:icu-gateway:{gateway_id}:bed"))
                    .value(bed.to_owned())
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .display(bed.to_owned())
            .build()
            .map_err(|e| e.to_string())
    };
    let mut locations = Vec::new();
    if let Some(bed) = non_empty(&adt.bed) {
        let (location_status, location_period) = match end.as_ref() {
            Some(end) => (EncounterLocationStatus::Completed, period(None, Some(end))?),
            None if event == "A02" => (
                EncounterLocationStatus::Active,
                period(Some(event_time), None)?,
            ),
            None => (EncounterLocationStatus::Active, period(Some(&start), None)?),
        };
        locations.push(Some(
            EncounterLocation::builder()
                .location(bed_reference(bed)?)
                .status(location_status)
                .period(location_period)
                .build()
                .map_err(|e| e.to_string())?,
        ));
    }
    if event == "A02" {
        if let Some(prior) = non_empty(&adt.prior_bed) {
            locations.push(Some(
                EncounterLocation::builder()
                    .location(bed_reference(prior)?)
                    .status(EncounterLocationStatus::Completed)
                    .period(period(None, Some(event_time))?)
                    .build()
                    .map_err(|e| e.to_string())?,
            ));
        }
    }

    let mut extensions = vec![cx.ext("adt-event", ExtensionValue::Code(event.clone()))?];
    if let Some(message_id) = non_empty(&adt.message_id) {
        extensions.push(cx.ext(
            "adt-message-id",
            ExtensionValue::String(message_id.to_owned()),
        )?);
    }
    if let Some(peer) = non_empty(&adt.peer) {
        extensions.push(cx.ext("adt-peer", ExtensionValue::String(peer.to_owned()))?);
    }

    let mut builder = Encounter::builder()
        .id(id)
        .meta(
            Meta::builder()
                .profile(vec![Some(ENCOUNTER_PROFILE.to_owned())])
                .build()
                .map_err(|e| e.to_string())?,
        )
        .extension(extensions)
        .status(status)
        .class(coding(ACT_CODE_SYSTEM, "IMP", Some("inpatient encounter"))?)
        .subject(patient_reference(patient_id)?)
        .period(period(Some(&start), end.as_ref())?);
    if let Some(visit) = visit {
        builder = builder.identifier(vec![Some(
            Identifier::builder()
                .system(format!("urn:icu-gateway:{gateway_id}:visit-number"))
                .value(visit.to_owned())
                .build()
                .map_err(|e| e.to_string())?,
        )]);
    }
    if !locations.is_empty() {
        builder = builder.location(locations);
    }
    builder.build().map_err(|e| e.to_string())
}

/// An HL7 v2 date (`YYYY`, `YYYYMM`, or `YYYYMMDD` optionally followed by a time) → FHIR date;
/// None when it is not a real date.
fn hl7_date(text: &str) -> Option<Date> {
    let text = text.trim();
    let all_digits = text.bytes().take_while(u8::is_ascii_digit).count();
    // A reduced-precision date stands alone; a full date may be followed by a time.
    if all_digits < 8 && all_digits != text.len() {
        return None;
    }
    let digits = &text[..all_digits.min(8)];
    let num = |range: std::ops::Range<usize>| digits.get(range)?.parse::<u16>().ok();
    let year = i32::from(num(0..4)?);
    if year == 0 {
        return None;
    }
    match digits.len() {
        4 => Some(Date::Year(year)),
        6 => Some(Date::YearMonth(
            year,
            Month::try_from(num(4..6)? as u8).ok()?,
        )),
        8 => {
            let month = Month::try_from(num(4..6)? as u8).ok()?;
            let day = num(6..8)? as u8;
            CalendarDate::from_calendar_date(year, month, day)
                .ok()
                .map(Date::Date)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::fhir::parse_bundle;

    const EVENT_US: i64 = 1_700_000_000_000_000; // 2023-11-14T22:13:20Z
    const ADMIT_US: i64 = 1_699_990_000_000_000; // 2023-11-14T19:26:40Z

    fn a01() -> AdtEvent {
        AdtEvent {
            event: "A01".into(),
            patient_id: "MRN123".into(),
            bed: "bed-03".into(),
            prior_bed: String::new(),
            event_time_us: EVENT_US,
            family_name: "Doe".into(),
            given_name: "Jane".into(),
            visit_number: "V42".into(),
            birth_date: "19700215".into(),
            sex: "F".into(),
            admit_time_us: Some(ADMIT_US),
            discharge_time_us: None,
            assigning_authority: "HOSP".into(),
            message_id: "MSG-1".into(),
            peer: "10.20.0.15:40001".into(),
        }
    }

    fn json_of(adt: &AdtEvent, seq: u64) -> Value {
        serde_json::from_slice(
            &adt_bundle(&FhirContext::with_default_base("gw1"), "adt", seq, adt).unwrap(),
        )
        .unwrap()
    }

    fn resource<'a>(bundle: &'a Value, kind: &str) -> &'a Value {
        bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["resource"])
            .find(|r| r["resourceType"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {bundle}"))
    }

    fn extension<'a>(resource: &'a Value, name: &str) -> Option<&'a Value> {
        resource["extension"]
            .as_array()?
            .iter()
            .find(|e| e["url"] == format!("http://icu-gateway.org/fhir/StructureDefinition/{name}"))
    }

    #[test]
    fn a01_maps_patient_and_in_progress_encounter() {
        let b = json_of(&a01(), 7);
        assert_eq!(b["resourceType"], "Bundle");
        assert_eq!(b["type"], "collection");
        assert_eq!(b["id"], "gw1-adt-7");
        assert_eq!(
            b["identifier"],
            json!({"system": "urn:icu-gateway:gw1:adt", "value": "7"})
        );
        assert_eq!(b["timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(b["entry"].as_array().unwrap().len(), 2);

        let p = resource(&b, "Patient");
        assert_eq!(p["id"], "MRN123");
        assert_eq!(
            p["identifier"],
            json!([{"system": "urn:icu-gateway:assigning-authority:HOSP", "value": "MRN123"}])
        );
        assert_eq!(p["name"], json!([{"family": "Doe", "given": ["Jane"]}]));
        assert_eq!(p["gender"], "female");
        assert_eq!(p["birthDate"], "1970-02-15");

        let e = resource(&b, "Encounter");
        assert_eq!(e["id"], "gw1-visit-V42");
        assert_eq!(e["status"], "in-progress");
        assert_eq!(
            e["class"],
            json!({"system": ACT_CODE_SYSTEM, "code": "IMP", "display": "inpatient encounter"})
        );
        assert_eq!(
            e["subject"],
            json!({"reference": "Patient/MRN123", "identifier": {"value": "MRN123"}})
        );
        assert_eq!(
            e["identifier"],
            json!([{"system": "urn:icu-gateway:gw1:visit-number", "value": "V42"}])
        );
        assert_eq!(e["period"], json!({"start": "2023-11-14T19:26:40Z"}));
        let locations = e["location"].as_array().unwrap();
        assert_eq!(locations.len(), 1);
        assert_eq!(locations[0]["location"]["display"], "bed-03");
        assert_eq!(
            locations[0]["location"]["identifier"],
            json!({"system": "urn:icu-gateway:gw1:bed", "value": "bed-03"})
        );
        assert_eq!(locations[0]["status"], "active");
        assert_eq!(extension(e, "adt-event").unwrap()["valueCode"], "A01");
        assert_eq!(
            extension(e, "adt-message-id").unwrap()["valueString"],
            "MSG-1"
        );
        assert_eq!(
            extension(e, "adt-peer").unwrap()["valueString"],
            "10.20.0.15:40001"
        );
    }

    #[test]
    fn a02_keeps_the_prior_bed_as_a_completed_location() {
        let transfer = AdtEvent {
            event: "A02".into(),
            bed: "bed-05".into(),
            prior_bed: "bed-03".into(),
            ..a01()
        };
        let b = json_of(&transfer, 8);
        let e = resource(&b, "Encounter");
        assert_eq!(e["status"], "in-progress");
        assert_eq!(e["id"], "gw1-visit-V42", "same encounter as the admission");
        let locations = e["location"].as_array().unwrap();
        assert_eq!(locations.len(), 2);
        assert_eq!(locations[0]["location"]["display"], "bed-05");
        assert_eq!(locations[0]["status"], "active");
        assert_eq!(
            locations[0]["period"],
            json!({"start": "2023-11-14T22:13:20Z"})
        );
        assert_eq!(locations[1]["location"]["display"], "bed-03");
        assert_eq!(locations[1]["status"], "completed");
        assert_eq!(
            locations[1]["period"],
            json!({"end": "2023-11-14T22:13:20Z"})
        );
        assert_eq!(extension(e, "adt-event").unwrap()["valueCode"], "A02");
        // A prior bed on anything but a transfer is not a location.
        let b = json_of(
            &AdtEvent {
                prior_bed: "bed-01".into(),
                ..a01()
            },
            9,
        );
        assert_eq!(
            resource(&b, "Encounter")["location"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a03_finishes_the_encounter() {
        const DISCHARGE_US: i64 = EVENT_US + 3_600_000_000;
        let discharge = AdtEvent {
            event: "A03".into(),
            discharge_time_us: Some(DISCHARGE_US),
            ..a01()
        };
        let b = json_of(&discharge, 9);
        let e = resource(&b, "Encounter");
        assert_eq!(e["status"], "finished");
        assert_eq!(
            e["period"],
            json!({"start": "2023-11-14T19:26:40Z", "end": "2023-11-14T23:13:20Z"})
        );
        assert_eq!(e["location"][0]["status"], "completed");
        assert_eq!(
            e["location"][0]["period"],
            json!({"end": "2023-11-14T23:13:20Z"})
        );
        // Without a discharge time the event time ends it.
        let b = json_of(
            &AdtEvent {
                discharge_time_us: None,
                ..discharge
            },
            10,
        );
        assert_eq!(
            resource(&b, "Encounter")["period"]["end"],
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn defaults_without_optional_fields() {
        let bare = AdtEvent {
            event: "A08".into(),
            patient_id: "p 1/ä".into(),
            event_time_us: EVENT_US,
            ..AdtEvent::default()
        };
        let b = json_of(&bare, 1);
        let p = resource(&b, "Patient");
        let id = p["id"].as_str().unwrap();
        assert!(id.starts_with('h') && id.len() == 41, "hashed id: {id}");
        assert_eq!(
            p["identifier"],
            json!([{"system": "urn:icu-gateway:gw1:patient-id", "value": "p 1/ä"}])
        );
        assert_eq!(p["gender"], "unknown");
        assert!(p.get("name").is_none() && p.get("birthDate").is_none());
        let e = resource(&b, "Encounter");
        assert_eq!(e["subject"]["reference"], format!("Patient/{id}"));
        assert_eq!(e["status"], "in-progress");
        assert_eq!(e["period"], json!({"start": "2023-11-14T22:13:20Z"}));
        assert!(e.get("location").is_none() && e.get("identifier").is_none());
        assert!(extension(e, "adt-message-id").is_none());
        assert!(extension(e, "adt-peer").is_none());

        let gender = |sex: &str| {
            let b = json_of(
                &AdtEvent {
                    sex: sex.into(),
                    ..bare.clone()
                },
                1,
            );
            resource(&b, "Patient")["gender"].clone()
        };
        assert_eq!(gender("m"), "male");
        assert_eq!(gender("O"), "other");
        assert_eq!(gender("U"), "unknown");
        assert_eq!(gender("A"), "unknown");

        assert_eq!(encounter_status("A11"), EncounterStatus::EnteredInError);
        assert_eq!(encounter_status("A13"), EncounterStatus::InProgress);
        assert_eq!(encounter_status("A12"), EncounterStatus::InProgress);
        assert_eq!(encounter_status("Z99"), EncounterStatus::Unknown);
    }

    #[test]
    fn birth_dates_are_read_or_left_out() {
        let d = |text: &str| hl7_date(text).map(|d| serde_json::to_value(d).unwrap());
        assert_eq!(d("19700215"), Some(json!("1970-02-15")));
        assert_eq!(d("197002151230"), Some(json!("1970-02-15")));
        assert_eq!(d("197002"), Some(json!("1970-02")));
        assert_eq!(d("1970"), Some(json!("1970")));
        for bad in [
            "",
            "19701315",
            "19700230",
            "1970-02-15",
            "70",
            "00000101",
            "1970021",
            "1970x",
        ] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn deterministic_and_parses_back_with_fhir_sdk() {
        let one = adt_bundle(&FhirContext::with_default_base("gw1"), "adt", 7, &a01()).unwrap();
        assert_eq!(
            one,
            adt_bundle(&FhirContext::with_default_base("gw1"), "adt", 7, &a01()).unwrap()
        );
        assert_ne!(
            one,
            adt_bundle(&FhirContext::with_default_base("gw1"), "adt", 8, &a01()).unwrap()
        );
        let bundle = parse_bundle(&one).unwrap();
        assert_eq!(bundle.id.as_deref(), Some("gw1-adt-7"));
        assert!(matches!(
            bundle.entry[0].as_ref().and_then(|e| e.resource.as_ref()),
            Some(Resource::Patient(_))
        ));
        let Some(Resource::Encounter(encounter)) =
            bundle.entry[1].as_ref().and_then(|e| e.resource.as_ref())
        else {
            panic!("second entry is the encounter");
        };
        assert_eq!(encounter.status, EncounterStatus::InProgress);
        assert_eq!(serde_json::to_vec(&bundle).unwrap(), one, "nothing lost");
        assert!(crate::fhir::observations_of(&one).unwrap().is_empty());
    }

    #[test]
    fn missing_patient_or_bad_times_are_errors() {
        let no_patient = AdtEvent {
            patient_id: " ".into(),
            ..a01()
        };
        let err = adt_bundle(
            &FhirContext::with_default_base("gw1"),
            "adt",
            3,
            &no_patient,
        )
        .unwrap_err();
        assert!(
            matches!(err, BridgeError::FhirMapping { seq: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("patient"), "{err}");
        let bad_time = AdtEvent {
            admit_time_us: Some(i64::MAX),
            ..a01()
        };
        assert!(adt_bundle(&FhirContext::with_default_base("gw1"), "adt", 4, &bad_time).is_err());
    }
}
