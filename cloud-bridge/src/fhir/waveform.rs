//! FHIR R4 mapping of waveform segments (for `icu.waveforms`) and their reader.
//!
//! Owns: [`waveform_bundle`] (one device's consecutive segments → one `collection` Bundle of
//! Observations with `valueSampledData`, one per segment), [`segment_observation`] (the
//! Observation of one segment, also used by the alarm snippets) and [`decode_value`] (a record
//! value → the segments, samples and gaps in it, for consumers and tests).
//!
//! One Observation per segment (PoCD `SampleArrayObservation`):
//! - `valueSampledData`: `origin` = the segment's offset in its UCUM unit, `period` = the sample
//!   period in ms, `factor` = scale × 10^decimal_exponent, so a sample's physical value is
//!   `origin + factor × data[i]`; `lowerLimit`/`upperLimit` = the device's data range in
//!   physical units when known; `dimensions` 1; `data` = one token per timeline position (module
//!   `sampled_data`): the integer as written, `E` at a gap (never a zero or a repeat), `L`/`U`
//!   for a sample below/above the data range with its integer kept in the extension
//!   `sampled-data-limit-values` of the `valueSampledData` (so every sample comes back
//!   bit-exact). `L`/`U` are written only when that limit is known and the scale is positive;
//!   otherwise the value is written as it is.
//! - `code`: the channel's MDC code (display its reference id), plus LOINC when the
//!   terminology table has one for it; `category` procedure.
//! - `effectivePeriod`: the device time of the first sample to the end of the last sample's
//!   period (first + count × period), only when the device gave a time the gateway trusted;
//!   otherwise absent and `device-time-status` says `missing` or `untrusted` (the raw time in
//!   `untrusted-device-time`), as for numerics. `issued` is the receive time.
//! - `subject`: `Patient/<id>` of the census patient, or (PoCD) the device with the
//!   `unassociated` tag; `device`: the device; status from the segment's status (test and
//!   invalid data also carry `measurement-status`).
//! - ids scoped by the gateway: Observation `<gateway>-<device>-wave-<seq>`, identifier system
//!   `urn:icu-gateway:<gateway>:<device>:waveforms` with the seq; extensions seq, bed,
//!   containment id, equipment id, source message and row, receive time, clock sync.
//!
//! Deterministic bytes like every mapping: built from the segments only (fhir-sdk types,
//! serde_json), so a re-send is identical.

use fhir_sdk::r4b::codes::ObservationStatus as FhirStatus;
use fhir_sdk::r4b::resources::{
    Observation as FhirObservation, ObservationEffective, ObservationValue, Resource,
};
use fhir_sdk::r4b::types::{
    CodeableConcept, Coding, Extension, ExtensionValue, Identifier, Meta, Period, Quantity,
    SampledData,
};
use fhir_sdk::DateTime;
use icu_protos::v1::{ObservationStatus, SampleRun, WaveformSegment};

use super::common::{
    coding, device_bundle, fhir_id, instant_from_us, non_empty, patient_reference,
    procedure_category, untrusted_device_time, FhirContext, ASSOCIATION_SYSTEM, LOINC_SYSTEM,
    MDC_SYSTEM, UCUM_SYSTEM, UNASSOCIATED,
};
use super::sampled_data::{self, Markers};
use crate::error::BridgeError;
use crate::Terminology;

/// PoCD: an Observation of a real-time waveform or wave snippet.
pub const POCD_SAMPLE_ARRAY: &str =
    "http://hl7.org/fhir/uv/pocd/StructureDefinition/SampleArrayObservation";
/// The extension (on `valueSampledData`) with the integers of its `L`/`U` positions.
pub const LIMIT_VALUES_EXTENSION: &str = "sampled-data-limit-values";

/// Identifier system of one device's waveform stream:
/// `urn:icu-gateway:<gateway>:<device>:waveforms`.
pub fn waveform_identifier_system(gateway_id: &str, device_id: &str) -> String {
    format!("urn:icu-gateway:{gateway_id}:{device_id}:waveforms")
}

/// How one segment's Observation is named.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Naming<'a> {
    /// On `icu.waveforms`: by the segment's own device and seq (id, identifier, `seq`).
    Stream,
    /// Inside the alarm snippet `seq` of `device` (its `k`-th segment): the id names the
    /// snippet, the `seq` extension is the snippet's, and there is no identifier (a segment cut
    /// to the window is not the record of its seq on `icu.waveforms`).
    Snippet { device: &'a str, seq: u64, k: usize },
}

/// The Bundle (type `collection`, JSON bytes) of one device's consecutive waveform segments,
/// in seq order: the value of one `icu.waveforms` record.
pub fn waveform_bundle(
    cx: &FhirContext,
    device_id: &str,
    segments: &[WaveformSegment],
    terminology: &Terminology,
) -> Result<Vec<u8>, BridgeError> {
    let Some(last) = segments.last() else {
        return Err(mapping_error(
            device_id,
            0,
            "no waveform segments to put in a bundle".into(),
        ));
    };
    let newest = segments
        .iter()
        .map(|s| s.receive_time_us)
        .max()
        .unwrap_or(0);
    let timestamp = instant_from_us(newest).ok_or_else(|| {
        mapping_error(
            device_id,
            last.seq,
            format!("receive time {newest} us is out of range"),
        )
    })?;
    let resources = segments
        .iter()
        .map(|seg| {
            let obs = segment_observation(cx, device_id, seg, Naming::Stream, terminology)?;
            Ok((seg.seq, Resource::Observation(obs)))
        })
        .collect::<Result<Vec<_>, BridgeError>>()?;
    let system = waveform_identifier_system(&cx.gateway_id, device_id);
    device_bundle(cx, device_id, "waveform", system, timestamp, resources)
        .map_err(|(seq, reason)| mapping_error(device_id, seq, reason))
}

pub(crate) fn mapping_error(device_id: &str, seq: u64, reason: String) -> BridgeError {
    BridgeError::FhirMapping {
        device_id: device_id.to_owned(),
        seq,
        reason,
    }
}

fn build_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A finite number or the reason it is not.
fn finite(what: &str, v: f64) -> Result<f64, String> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{what} {v} is not a finite number"))
    }
}

/// The `valueSampledData` of a segment.
fn sampled_data(cx: &FhirContext, seg: &WaveformSegment) -> Result<SampledData, String> {
    let period_ms = finite("sample period", seg.sample_period_us)? / 1000.0;
    if period_ms <= 0.0 {
        return Err(format!(
            "sample period {} us is not positive",
            seg.sample_period_us
        ));
    }
    let factor = finite("scale", seg.scale)? * 10f64.powi(seg.decimal_exponent);
    let factor = finite("factor", factor)?;
    let offset = finite("offset", seg.offset)?;
    let physical = |written: Option<f64>| {
        written
            .map(|w| offset + seg.scale * w)
            .filter(|v| v.is_finite())
    };
    let (low, high) = (physical(seg.range_low), physical(seg.range_high));
    let positive = seg.scale > 0.0;
    let (lower_limit, upper_limit) = if positive { (low, high) } else { (high, low) };
    let markers = Markers {
        lower: positive && lower_limit.is_some(),
        upper: positive && upper_limit.is_some(),
    };
    let encoded = sampled_data::encode(seg, markers)?;
    let mut origin = Quantity::builder().value(offset);
    if let Some(unit) = non_empty(&seg.unit_ucum) {
        origin = origin
            .unit(unit.to_owned())
            .system(UCUM_SYSTEM.to_owned())
            .code(unit.to_owned());
    }
    let mut b = SampledData::builder()
        .origin(origin.build().map_err(build_err)?)
        .period(period_ms)
        .factor(factor)
        .dimensions(std::num::NonZeroU32::MIN);
    if let Some(l) = lower_limit {
        b = b.lower_limit(l);
    }
    if let Some(u) = upper_limit {
        b = b.upper_limit(u);
    }
    if !encoded.data.is_empty() {
        b = b.data(encoded.data);
    }
    if !encoded.limit_values.is_empty() {
        b = b.extension(vec![cx.ext(
            LIMIT_VALUES_EXTENSION,
            ExtensionValue::String(sampled_data::limit_values_text(&encoded.limit_values)),
        )?]);
    }
    b.build().map_err(build_err)
}

/// The Observation of one segment of `device_id` (see the module docs).
pub(crate) fn segment_observation(
    cx: &FhirContext,
    device_id: &str,
    seg: &WaveformSegment,
    naming: Naming<'_>,
    terminology: &Terminology,
) -> Result<FhirObservation, BridgeError> {
    let record_seq = match naming {
        Naming::Stream => seg.seq,
        Naming::Snippet { seq, .. } => seq,
    };
    let build = || -> Result<FhirObservation, String> {
        let gateway_id = cx.gateway_id.as_str();
        let seg_device = non_empty(&seg.device_id).unwrap_or(device_id);
        let seq = seg.seq.to_string();
        let value = sampled_data(cx, seg)?;
        let receive = instant_from_us(seg.receive_time_us)
            .ok_or_else(|| format!("receive time {} us is out of range", seg.receive_time_us))?;

        // The effective period, or why there is none.
        let trusted = seg
            .first_sample_time_us
            .filter(|_| !seg.device_time_untrusted);
        let effective = match trusted {
            Some(start) => {
                let span = (f64::from(seg.sample_count) * seg.sample_period_us).round() as i64;
                match (
                    instant_from_us(start),
                    instant_from_us(start.saturating_add(span)),
                ) {
                    (Some(s), Some(e)) => Some(
                        Period::builder()
                            .start(DateTime::DateTime(s))
                            .end(DateTime::DateTime(e))
                            .build()
                            .map_err(build_err)?,
                    ),
                    _ => None,
                }
            }
            None => None,
        };

        let mut extensions: Vec<Extension> = Vec::new();
        extensions.push(cx.ext("seq", ExtensionValue::String(record_seq.to_string()))?);
        cx.string_exts(
            &mut extensions,
            &[
                ("bed", &seg.bed),
                ("containment-id", &seg.containment_id),
                ("equipment-id", &seg.equipment_id),
                ("source-message-id", &seg.source_message_id),
            ],
        )?;
        if !seg.source_message_id.is_empty() {
            extensions.push(cx.ext("source-row", ExtensionValue::UnsignedInt(seg.source_row))?);
        }
        let status = ObservationStatus::try_from(seg.status).unwrap_or_default();
        match status {
            ObservationStatus::Invalid => extensions
                .push(cx.ext("measurement-status", ExtensionValue::Code("invalid".into()))?),
            ObservationStatus::Test => {
                extensions.push(cx.ext("measurement-status", ExtensionValue::Code("test".into()))?)
            }
            _ => {}
        }
        extensions.push(cx.ext("receive-time", ExtensionValue::Instant(receive.clone()))?);
        extensions.push(cx.ext("clock-synced", ExtensionValue::Boolean(seg.clock_synced))?);
        if effective.is_none() {
            let why = if seg.first_sample_time_us.is_some() {
                "untrusted"
            } else {
                "missing"
            };
            extensions.push(cx.ext("device-time-status", ExtensionValue::Code(why.into()))?);
            if seg.first_sample_time_us.is_some() {
                extensions.push(cx.ext(
                    "untrusted-device-time",
                    ExtensionValue::String(untrusted_device_time(seg.first_sample_time_us)),
                )?);
            }
        }

        let term = terminology.by_mdc(seg.mdc_code);
        let refid = non_empty(&seg.mdc_refid)
            .or_else(|| term.map(|t| t.refid.as_str()).and_then(non_empty));
        let mut codings = vec![Some(coding(MDC_SYSTEM, &seg.mdc_code.to_string(), refid)?)];
        if let Some(t) = term {
            if let Some(loinc) = t.loinc.as_deref().and_then(non_empty) {
                codings.push(Some(coding(
                    LOINC_SYSTEM,
                    loinc,
                    t.loinc_display.as_deref(),
                )?));
            }
        }
        let code = CodeableConcept::builder()
            .coding(codings)
            .build()
            .map_err(build_err)?;
        let device = cx.device_ref(seg_device)?;
        let fhir_status = if status == ObservationStatus::Corrected {
            FhirStatus::Corrected
        } else {
            FhirStatus::Final
        };
        let id = match naming {
            Naming::Stream => fhir_id(&[gateway_id, seg_device, "wave", &seq]),
            Naming::Snippet { device, seq, k } => fhir_id(&[
                gateway_id,
                device,
                "snippet",
                &seq.to_string(),
                &k.to_string(),
            ]),
        };
        let mut b = FhirObservation::builder()
            .id(id)
            .extension(extensions)
            .status(fhir_status)
            .category(vec![Some(procedure_category()?)])
            .code(code)
            .issued(receive)
            .value(ObservationValue::SampledData(value))
            .device(device.clone());
        if let Naming::Stream = naming {
            b = b.identifier(vec![Some(
                Identifier::builder()
                    .system(waveform_identifier_system(gateway_id, seg_device))
                    .value(seq)
                    .build()
                    .map_err(build_err)?,
            )]);
        }
        if let Some(period) = effective {
            b = b.effective(ObservationEffective::Period(period));
        }
        let meta = Meta::builder().profile(vec![Some(POCD_SAMPLE_ARRAY.to_owned())]);
        b = match non_empty(&seg.patient_id) {
            Some(patient) => b
                .subject(patient_reference(patient)?)
                .meta(meta.build().map_err(build_err)?),
            None => b.subject(device).meta(
                meta.tag(vec![Some(coding(ASSOCIATION_SYSTEM, UNASSOCIATED, None)?)])
                    .build()
                    .map_err(build_err)?,
            ),
        };
        b.build().map_err(build_err)
    };
    build().map_err(|reason| mapping_error(device_id, record_seq, reason))
}

/// One waveform Observation as a consumer reads it back ([`decode_value`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedSegment {
    /// The device that measured (the `display` of `device`).
    pub device_id: String,
    /// The `seq` extension: the segment's seq on `icu.waveforms`, or in a snippet the snippet's
    /// seq on the alarm stream.
    pub seq: u64,
    pub mdc_code: u32,
    /// The MDC reference id (the display of the MDC coding), empty when none.
    pub mdc_refid: String,
    /// UCUM code of `origin`, empty when none.
    pub unit: String,
    /// `period`, milliseconds between samples.
    pub period_ms: f64,
    /// The start of `effectivePeriod` (the first sample's trusted device time), µs since the
    /// Unix epoch; `None` when the time is missing or untrusted.
    pub first_sample_time_us: Option<i64>,
    pub factor: f64,
    /// `origin.value`: the physical value of a written 0.
    pub origin: f64,
    pub lower_limit: Option<f64>,
    pub upper_limit: Option<f64>,
    /// One entry per timeline position: the integer as written, `None` at a gap (`E`).
    pub samples: Vec<Option<i32>>,
    /// Positions written `L` / `U` (their values are in `samples`).
    pub below_range: Vec<SampleRun>,
    pub above_range: Vec<SampleRun>,
    /// The census patient (`subject.identifier.value`), `None` when unassociated.
    pub patient_id: Option<String>,
}

impl DecodedSegment {
    /// Positions that are gaps (`E`).
    pub fn gaps(&self) -> usize {
        self.samples.iter().filter(|s| s.is_none()).count()
    }
}

/// Every waveform Observation (one with `valueSampledData`) of a record value, in entry order:
/// an `icu.waveforms` Bundle, or an alarm snippet's Bundle on `icu.alarms`. Other entries are
/// skipped; a value that is no Bundle, or a waveform Observation whose data cannot be read back
/// exactly, fails.
pub fn decode_value(value: &[u8]) -> Result<Vec<DecodedSegment>, BridgeError> {
    let bundle = super::common::parse_bundle(value)?;
    let mut out = Vec::new();
    for entry in bundle.entry.iter().flatten() {
        let Some(Resource::Observation(obs)) = &entry.resource else {
            continue;
        };
        if let Some(ObservationValue::SampledData(sd)) = &obs.value {
            out.push(
                decode_observation(obs, sd).map_err(|reason| BridgeError::FhirParse {
                    reason: format!(
                        "waveform observation {}: {reason}",
                        obs.id.as_deref().unwrap_or("<no id>")
                    ),
                })?,
            );
        }
    }
    Ok(out)
}

fn decode_observation(obs: &FhirObservation, sd: &SampledData) -> Result<DecodedSegment, String> {
    let ext_string = |exts: &[Extension], name: &str| {
        exts.iter()
            .find(|e| e.url.ends_with(&format!("/StructureDefinition/{name}")))
            .and_then(|e| match &e.value {
                Some(ExtensionValue::String(s)) => Some(s.clone()),
                _ => None,
            })
    };
    let seq = ext_string(&obs.extension, "seq")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or("no numeric seq extension")?;
    let mdc: Option<&Coding> = obs
        .code
        .coding
        .iter()
        .flatten()
        .find(|c| c.system.as_deref() == Some(MDC_SYSTEM));
    let mdc_code = mdc
        .and_then(|c| c.code.as_deref()?.parse::<u32>().ok())
        .ok_or("no MDC code")?;
    let limit_values = match ext_string(&sd.extension, LIMIT_VALUES_EXTENSION) {
        Some(text) => sampled_data::parse_limit_values(&text)?,
        None => Vec::new(),
    };
    let decoded = sampled_data::decode(sd.data.as_deref().unwrap_or(""), &limit_values)?;
    let first_sample_time_us = match &obs.effective {
        Some(ObservationEffective::Period(p)) => p.start.as_ref().and_then(datetime_us),
        _ => None,
    };
    let patient_id = obs
        .subject
        .as_ref()
        .filter(|s| {
            s.reference
                .as_deref()
                .is_some_and(|r| r.starts_with("Patient/"))
        })
        .and_then(|s| s.identifier.as_ref()?.value.clone());
    Ok(DecodedSegment {
        device_id: obs
            .device
            .as_ref()
            .and_then(|d| d.display.clone())
            .unwrap_or_default(),
        seq,
        mdc_code,
        mdc_refid: mdc.and_then(|c| c.display.clone()).unwrap_or_default(),
        unit: sd.origin.code.clone().unwrap_or_default(),
        period_ms: sd.period,
        first_sample_time_us,
        factor: sd.factor.unwrap_or(1.0),
        origin: sd.origin.value.unwrap_or(0.0),
        lower_limit: sd.lower_limit,
        upper_limit: sd.upper_limit,
        samples: decoded.samples,
        below_range: decoded.below_range,
        above_range: decoded.above_range,
        patient_id,
    })
}

/// A FHIR dateTime with a time → µs since the Unix epoch.
pub(crate) fn datetime_us(dt: &DateTime) -> Option<i64> {
    let text = serde_json::to_value(dt).ok()?;
    let parsed = chrono::DateTime::parse_from_rfc3339(text.as_str()?).ok()?;
    Some(parsed.timestamp_micros())
}
