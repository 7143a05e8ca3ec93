//! FHIR R4 mapping of alarm snippets (the ±15 s of a bed's curves around an alarm's start) for
//! `icu.alarms`, and their reader.
//!
//! Owns: [`snippet_bundle`] (one `AlarmSnippet` → one `collection` Bundle: a DiagnosticReport
//! and the waveform Observations it groups) and [`snippet_of`] (a record value → the snippet it
//! holds, checked).
//!
//! The Bundle is its own Kafka record on `icu.alarms`, never bundled with alarm state changes.
//! Its first entry is a DiagnosticReport:
//! - `code`: `<base>/CodeSystem/report-type|alarm-snippet`, `text` the alarm's text;
//! - `result`: every waveform Observation of the snippet, by the `fullUrl` of its entry in the
//!   same Bundle (each built as on `icu.waveforms`, see `waveform`, but with an id that names
//!   the snippet: a segment cut to the window is not the record of its seq);
//! - extension `alarm-observation`: the alarm Observation of the alarm's start,
//!   `Observation/<gateway>-<device>-alarm-<alarm_seq>` as `fhir/alarm.rs` names it; when the
//!   start's seq is unknown (0), a logical reference by the alarm's id (identifier system
//!   `urn:icu-gateway:<gateway>:<device>:alarm-id`, the `alarm-id` of its Observations);
//! - `effectivePeriod` = the window, `issued` = when the snippet was built;
//! - `subject`: the census patient at the alarm's start, or the device with the `unassociated`
//!   tag (the Observations of the snippet carry the same subject);
//! - identifier `urn:icu-gateway:<gateway>:<device>:alarms|<seq>` (the snippet's seq on the
//!   device's alarm stream) and the `seq`, `bed`, `alarm-id`, `alarm-source` extensions.

use fhir_sdk::r4b::codes::DiagnosticReportStatus;
use fhir_sdk::r4b::resources::{
    BundleEntry, DiagnosticReport, DiagnosticReportEffective, ObservationValue, Resource,
};
use fhir_sdk::r4b::types::{CodeableConcept, ExtensionValue, Identifier, Meta, Period, Reference};
use fhir_sdk::DateTime;
use icu_protos::v1::AlarmSnippet;

use super::alarm::alarm_identifier_system;
use super::common::{
    bundle_entry, coding, collection_bundle, fhir_id, instant_from_us, non_empty,
    patient_reference, uuid_from, FhirContext, ASSOCIATION_SYSTEM, UNASSOCIATED,
};
use super::waveform::{
    datetime_us, decode_value, mapping_error, segment_observation, DecodedSegment, Naming,
};
use crate::error::BridgeError;
use crate::Terminology;

/// `meta.profile` of the snippet's DiagnosticReport (the base R4 resource: no published
/// profile fits an alarm's waveform snippet).
pub const DIAGNOSTIC_REPORT_PROFILE: &str =
    "http://hl7.org/fhir/StructureDefinition/DiagnosticReport";
/// The code of a snippet's DiagnosticReport in the gateway's `report-type` code system.
pub const ALARM_SNIPPET_CODE: &str = "alarm-snippet";

/// The Bundle (type `collection`, JSON bytes) of one alarm snippet of `device_id` (the device
/// whose alarm started; the record's device on the alarm stream).
pub fn snippet_bundle(
    cx: &FhirContext,
    device_id: &str,
    snippet: &AlarmSnippet,
    terminology: &Terminology,
) -> Result<Vec<u8>, BridgeError> {
    let gateway_id = cx.gateway_id.as_str();
    let seq = snippet.seq;
    let fail = |reason: String| mapping_error(device_id, seq, reason);
    let seq_text = seq.to_string();
    let patient = non_empty(&snippet.patient_id);

    let mut entries = Vec::with_capacity(snippet.segments.len() + 1);
    let mut results = Vec::with_capacity(snippet.segments.len());
    for (k, seg) in snippet.segments.iter().enumerate() {
        let mut seg = seg.clone();
        // One subject for the whole snippet: the patient at the alarm's start.
        seg.patient_id = patient.unwrap_or_default().to_owned();
        if seg.bed.is_empty() {
            seg.bed.clone_from(&snippet.bed);
        }
        let naming = Naming::Snippet {
            device: device_id,
            seq,
            k,
        };
        let obs = segment_observation(cx, device_id, &seg, naming, terminology)?;
        let uuid = uuid_from(&["snippet", gateway_id, device_id, &seq_text, &k.to_string()]);
        results.push(Some(
            Reference::builder()
                .reference(format!("urn:uuid:{uuid}"))
                .build()
                .map_err(|e| fail(e.to_string()))?,
        ));
        entries.push(Some(
            bundle_entry(&uuid, Resource::Observation(obs)).map_err(fail)?,
        ));
    }

    let build = || -> Result<DiagnosticReport, String> {
        let window = |us: i64| {
            instant_from_us(us)
                .map(DateTime::DateTime)
                .ok_or_else(|| format!("window time {us} us is out of range"))
        };
        let issued = instant_from_us(snippet.built_time_us)
            .ok_or_else(|| format!("built time {} us is out of range", snippet.built_time_us))?;
        let alarm = if snippet.alarm_seq > 0 {
            Reference::builder()
                .reference(format!(
                    "Observation/{}",
                    fhir_id(&[
                        gateway_id,
                        device_id,
                        "alarm",
                        &snippet.alarm_seq.to_string()
                    ])
                ))
                .display(snippet.alarm_text.clone())
                .build()
        } else {
            Reference::builder()
                .r#type("Observation".to_owned())
                .identifier(
                    Identifier::builder()
                        .system(format!("urn:icu-gateway:{gateway_id}:{device_id}:alarm-id"))
                        .value(snippet.alarm_id.clone())
                        .build()
                        .map_err(|e| e.to_string())?,
                )
                .display(snippet.alarm_text.clone())
                .build()
        }
        .map_err(|e| e.to_string())?;
        let mut extensions = vec![cx.ext("seq", ExtensionValue::String(seq_text.clone()))?];
        cx.string_exts(
            &mut extensions,
            &[
                ("bed", &snippet.bed),
                ("alarm-id", &snippet.alarm_id),
                ("alarm-source", &snippet.alarm_source),
            ],
        )?;
        extensions.push(cx.ext("alarm-observation", ExtensionValue::Reference(alarm))?);
        let code = CodeableConcept::builder()
            .coding(vec![Some(coding(
                &cx.code_system("report-type"),
                ALARM_SNIPPET_CODE,
                Some("Waveforms around an alarm's start"),
            )?)])
            .text(snippet.alarm_text.clone())
            .build()
            .map_err(|e| e.to_string())?;
        let device = cx.device_ref(device_id)?;
        let meta = Meta::builder().profile(vec![Some(DIAGNOSTIC_REPORT_PROFILE.to_owned())]);
        let b = DiagnosticReport::builder()
            .id(fhir_id(&[gateway_id, device_id, "snippet", &seq_text]))
            .extension(extensions)
            .identifier(vec![Some(
                Identifier::builder()
                    .system(alarm_identifier_system(gateway_id, device_id))
                    .value(seq_text.clone())
                    .build()
                    .map_err(|e| e.to_string())?,
            )])
            .status(DiagnosticReportStatus::Final)
            .code(code)
            .effective(DiagnosticReportEffective::Period(
                Period::builder()
                    .start(window(snippet.window_start_us)?)
                    .end(window(snippet.window_end_us)?)
                    .build()
                    .map_err(|e| e.to_string())?,
            ))
            .issued(issued)
            .result(results.clone());
        let b = match patient {
            Some(patient) => b
                .subject(patient_reference(patient)?)
                .meta(meta.build().map_err(|e| e.to_string())?),
            None => b.subject(device).meta(
                meta.tag(vec![Some(coding(ASSOCIATION_SYSTEM, UNASSOCIATED, None)?)])
                    .build()
                    .map_err(|e| e.to_string())?,
            ),
        };
        b.build().map_err(|e| e.to_string())
    };
    let report = build().map_err(fail)?;
    let uuid = uuid_from(&["snippet", gateway_id, device_id, &seq_text]);
    let report_entry = bundle_entry(&uuid, Resource::DiagnosticReport(report)).map_err(fail)?;
    entries.insert(0, Some(report_entry));
    let timestamp = instant_from_us(snippet.built_time_us).ok_or_else(|| {
        fail(format!(
            "built time {} us is out of range",
            snippet.built_time_us
        ))
    })?;
    let range = format!("{seq}-{seq}");
    collection_bundle(
        fhir_id(&[gateway_id, device_id, "alarms", &range]),
        (alarm_identifier_system(gateway_id, device_id), range),
        timestamp,
        entries,
    )
    .map_err(fail)
}

/// An alarm snippet as a consumer reads it back ([`snippet_of`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedSnippet {
    /// The `seq` extension of the report: the snippet's seq on the alarm stream.
    pub seq: u64,
    /// `Observation/<id>` of the alarm's start, or `alarm-id:<id>` when referred to by the
    /// alarm's id.
    pub alarm: String,
    pub window_start_us: Option<i64>,
    pub window_end_us: Option<i64>,
    /// The waveform Observations, in entry order (each one a `result` of the report).
    pub segments: Vec<DecodedSegment>,
}

/// The snippet in a record value: `Ok(None)` when the value holds no snippet DiagnosticReport
/// (an alarm state change bundle); an error when it holds one that does not hold together: a
/// `result` that is no entry of the Bundle, an entry that is no `result`, no alarm reference,
/// or waveform data that cannot be read back.
pub fn snippet_of(value: &[u8]) -> Result<Option<DecodedSnippet>, BridgeError> {
    let bundle = super::common::parse_bundle(value)?;
    let entries: Vec<&BundleEntry> = bundle.entry.iter().flatten().collect();
    let Some(report) = entries.iter().find_map(|e| match &e.resource {
        Some(Resource::DiagnosticReport(r)) => Some(r),
        _ => None,
    }) else {
        return Ok(None);
    };
    let bad = |reason: String| BridgeError::FhirParse {
        reason: format!(
            "alarm snippet {}: {reason}",
            report.id.as_deref().unwrap_or("<no id>")
        ),
    };
    let ext = |name: &str| {
        report
            .extension
            .iter()
            .find(|e| e.url.ends_with(&format!("/StructureDefinition/{name}")))
            .and_then(|e| e.value.as_ref())
    };
    let seq = match ext("seq") {
        Some(ExtensionValue::String(s)) => s.parse::<u64>().ok(),
        _ => None,
    }
    .ok_or_else(|| bad("no numeric seq extension".into()))?;
    let alarm = match ext("alarm-observation") {
        Some(ExtensionValue::Reference(r)) => r
            .reference
            .clone()
            .or_else(|| {
                r.identifier
                    .as_ref()?
                    .value
                    .as_ref()
                    .map(|v| format!("alarm-id:{v}"))
            })
            .filter(|s| !s.is_empty()),
        _ => None,
    }
    .ok_or_else(|| bad("no alarm-observation reference".into()))?;
    let waveform_urls: Vec<&str> = entries
        .iter()
        .filter(|e| match &e.resource {
            Some(Resource::Observation(o)) => {
                matches!(o.value, Some(ObservationValue::SampledData(_)))
            }
            _ => false,
        })
        .filter_map(|e| e.full_url.as_deref())
        .collect();
    let results: Vec<&str> = report
        .result
        .iter()
        .flatten()
        .filter_map(|r| r.reference.as_deref())
        .collect();
    if results != waveform_urls {
        return Err(bad(format!(
            "its {} results are not its {} waveform entries in order",
            results.len(),
            waveform_urls.len()
        )));
    }
    let (window_start_us, window_end_us) = match &report.effective {
        Some(DiagnosticReportEffective::Period(p)) => (
            p.start.as_ref().and_then(datetime_us),
            p.end.as_ref().and_then(datetime_us),
        ),
        _ => (None, None),
    };
    Ok(Some(DecodedSnippet {
        seq,
        alarm,
        window_start_us,
        window_end_us,
        segments: decode_value(value)?,
    }))
}
