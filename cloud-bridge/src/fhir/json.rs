//! The direct JSON writer of observation bundles (see [`super::observation_bundle`]).
//!
//! It writes, field by field, what the fhir-sdk R4B `Bundle`/`Observation` values of the
//! previous mapping serialized to with serde_json: the same field order (FHIR element order), no
//! empty or absent fields, strings escaped as serde_json escapes them (only `"`, `\` and control
//! characters; everything else raw UTF-8), numbers through serde_json itself (`97.0`, `1e-7`),
//! and times through the fhir-sdk `Instant`/`DateTime` serializers (cached per microsecond
//! value, since the observations of one message share their times). The golden file and the
//! comparison with `reference.rs` in the tests hold it to that, byte for byte.

use std::io::Write as _;

use fhir_sdk::{DateTime, Instant};
use icu_protos::v1::{Observation, ObservationStatus};
use sha2::{Digest, Sha256};

use super::common::{
    fhir_id, identifier_system, instant_from_us, interpretation_codes, non_empty, patient_fhir_id,
    untrusted_device_time, uuid_text, ACT_REASON_SYSTEM, ASSOCIATION_SYSTEM, CATEGORY_SYSTEM,
    DATA_ABSENT_SYSTEM, EXT_PREFIX, INTERPRETATION_SYSTEM, LOINC_SYSTEM, MDC_SYSTEM, UCUM_SYSTEM,
    UNASSOCIATED,
};
use crate::Terminology;

/// Writes a JSON string as serde_json does.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn raw(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

fn uint(out: &mut Vec<u8>, n: u64) {
    let _ = write!(out, "{n}");
}

fn number(out: &mut Vec<u8>, v: f64) {
    let _ = serde_json::to_writer(&mut *out, &v);
}

/// `{"system":..,"code":..[,"display":..]}`
fn coding(out: &mut Vec<u8>, system: &str, code: &str, display: Option<&str>) {
    raw(out, "{\"system\":");
    string(out, system);
    raw(out, ",\"code\":");
    string(out, code);
    if let Some(display) = display {
        raw(out, ",\"display\":");
        string(out, display);
    }
    out.push(b'}');
}

/// `{"value":v[,"unit":u,"system":UCUM,"code":u]}`
fn quantity(out: &mut Vec<u8>, value: f64, ucum: Option<&str>) {
    raw(out, "{\"value\":");
    number(out, value);
    if let Some(ucum) = ucum {
        raw(out, ",\"unit\":");
        string(out, ucum);
        raw(out, ",\"system\":");
        string(out, UCUM_SYSTEM);
        raw(out, ",\"code\":");
        string(out, ucum);
    }
    out.push(b'}');
}

/// Opens `{"url":"urn:icu-gateway:ext:<name>","value<kind>":` (the caller writes the value and
/// the closing brace).
fn ext_start(out: &mut Vec<u8>, name: &str, kind: &str) {
    raw(out, ",{\"url\":\"");
    raw(out, EXT_PREFIX);
    raw(out, name);
    raw(out, "\",\"value");
    raw(out, kind);
    raw(out, "\":");
}

fn ext_string(out: &mut Vec<u8>, name: &str, text: &str) {
    if let Some(text) = non_empty(text) {
        ext_start(out, name, "String");
        string(out, text);
        out.push(b'}');
    }
}

/// One serialized time, reused while the next observation has the same microsecond value.
#[derive(Default)]
struct CachedTime {
    us: Option<i64>,
    json: Vec<u8>,
}

impl CachedTime {
    fn get(&mut self, us: i64, serialize: impl FnOnce(&mut Vec<u8>)) -> &[u8] {
        if self.us != Some(us) {
            self.json.clear();
            serialize(&mut self.json);
            self.us = Some(us);
        }
        &self.json
    }
}

/// One bundle being written: the buffer and what is the same for every observation of the
/// device.
pub(super) struct BundleWriter<'a> {
    out: Vec<u8>,
    device_id: &'a str,
    /// `"urn:icu-gateway:<gateway>:<device>"`, escaped.
    system: Vec<u8>,
    /// `{"reference":"Device/<id>","display":"<device>"}`.
    device: Vec<u8>,
    /// Whether `<device>-<seq>` is a valid FHIR id whenever it is at most 64 characters.
    device_id_plain: bool,
    /// SHA-256 of `observation\0<gateway>\0<device>\0`: the fullUrl hash before the seq.
    uuid_prefix: Sha256,
    issued: CachedTime,
    effective: CachedTime,
    /// The last patient and its `subject` object.
    subject: Option<(String, Vec<u8>)>,
}

impl<'a> BundleWriter<'a> {
    pub(super) fn new(gateway_id: &str, device_id: &'a str) -> Self {
        let mut system = Vec::new();
        string(&mut system, &identifier_system(gateway_id, device_id));
        let mut device = Vec::new();
        raw(&mut device, "{\"reference\":");
        string(&mut device, &format!("Device/{}", fhir_id(&[device_id])));
        raw(&mut device, ",\"display\":");
        string(&mut device, device_id);
        device.push(b'}');
        let mut uuid_prefix = Sha256::new();
        for part in ["observation", gateway_id, device_id] {
            uuid_prefix.update(part.as_bytes());
            uuid_prefix.update([0u8]);
        }
        Self {
            out: Vec::new(),
            device_id,
            system,
            device,
            device_id_plain: device_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
            uuid_prefix,
            issued: CachedTime::default(),
            effective: CachedTime::default(),
            subject: None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.out.len()
    }

    pub(super) fn reserve(&mut self, additional: usize) {
        self.out.reserve(additional);
    }

    /// Everything of the Bundle before its first entry.
    pub(super) fn start_bundle(&mut self, id: &str, range: &str, timestamp: &Instant) {
        let out = &mut self.out;
        out.reserve(1024);
        raw(out, "{\"resourceType\":\"Bundle\",\"id\":");
        string(out, id);
        raw(out, ",\"identifier\":{\"system\":");
        out.extend_from_slice(&self.system);
        raw(out, ",\"value\":");
        string(out, range);
        raw(out, "},\"type\":\"collection\",\"timestamp\":");
        let _ = serde_json::to_writer(&mut *out, timestamp);
        raw(out, ",\"entry\":[");
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        raw(&mut self.out, "]}");
        self.out
    }

    /// One `{"fullUrl":..,"resource":{Observation}}` entry; fails only on a receive time out
    /// of range (as the fhir-sdk mapping did).
    pub(super) fn observation_entry(
        &mut self,
        first: bool,
        obs: &Observation,
        terminology: &Terminology,
    ) -> Result<(), String> {
        let term = terminology.by_mdc(obs.mdc_code);
        let status =
            ObservationStatus::try_from(obs.status).unwrap_or(ObservationStatus::Unspecified);
        let receive = instant_from_us(obs.receive_time_us)
            .ok_or_else(|| format!("receive time {} us is out of range", obs.receive_time_us))?;

        // Codes: MDC always, LOINC from the observation or else the terminology.
        let refid = non_empty(&obs.mdc_refid)
            .or_else(|| term.map(|t| t.refid.as_str()).and_then(non_empty));
        let loinc = non_empty(&obs.loinc)
            .or_else(|| term.and_then(|t| t.loinc.as_deref()).and_then(non_empty));
        let code_text = term
            .map(|t| t.display.as_str())
            .and_then(non_empty)
            .or(refid);
        let unit = non_empty(&obs.unit_ucum).or_else(|| {
            term.filter(|t| obs.unit_mdc_code == 0 || obs.unit_mdc_code == t.unit_mdc_code)
                .map(|t| t.ucum.as_str())
                .and_then(non_empty)
        });

        // Value or the reason it is absent; never both.
        enum Value<'v> {
            Quantity(f64),
            Text(&'v str),
        }
        let mut value = None;
        let mut absent = None;
        match (status, obs.value) {
            (ObservationStatus::NotAvailable, _) => absent = Some("unknown"),
            (ObservationStatus::Invalid, _) => absent = Some("error"),
            (_, Some(v)) if v.is_nan() => absent = Some("not-a-number"),
            (_, Some(v)) if v == f64::INFINITY => absent = Some("positive-infinity"),
            (_, Some(v)) if v == f64::NEG_INFINITY => absent = Some("negative-infinity"),
            (_, Some(v)) => value = Some(Value::Quantity(v)),
            (_, None) => match non_empty(&obs.value_text) {
                Some(text) => value = Some(Value::Text(text)),
                None => absent = Some("unknown"),
            },
        }
        let patient = non_empty(&obs.patient_id);
        let test = status == ObservationStatus::Test;

        let out = &mut self.out;
        // Entry and fullUrl.
        if !first {
            out.push(b',');
        }
        let mut seq_buf = [0u8; 20];
        let seq = {
            let mut cursor = std::io::Cursor::new(&mut seq_buf[..]);
            let _ = write!(cursor, "{}", obs.seq);
            let n = cursor.position() as usize;
            std::str::from_utf8(&seq_buf[..n]).unwrap_or_default()
        };
        raw(out, "{\"fullUrl\":\"urn:uuid:");
        let mut hasher = self.uuid_prefix.clone();
        hasher.update(seq.as_bytes());
        out.extend_from_slice(&uuid_text(&hasher.finalize()));
        raw(
            out,
            "\",\"resource\":{\"resourceType\":\"Observation\",\"id\":",
        );
        if self.device_id_plain && self.device_id.len() + 1 + seq.len() <= 64 {
            out.push(b'"');
            raw(out, self.device_id);
            out.push(b'-');
            raw(out, seq);
            out.push(b'"');
        } else {
            string(out, &fhir_id(&[self.device_id, seq]));
        }

        // An associated, non-test observation has nothing in meta: no empty `{}`.
        if patient.is_none() || test {
            raw(out, ",\"meta\":{");
            if test {
                raw(out, "\"security\":[");
                coding(out, ACT_REASON_SYSTEM, "HTEST", Some("test health data"));
                out.push(b']');
            }
            if patient.is_none() {
                if test {
                    out.push(b',');
                }
                raw(out, "\"tag\":[");
                coding(out, ASSOCIATION_SYSTEM, UNASSOCIATED, None);
                out.push(b']');
            }
            out.push(b'}');
        }

        // Extensions (the first without its leading comma).
        raw(out, ",\"extension\":[{\"url\":\"");
        raw(out, EXT_PREFIX);
        raw(out, "seq\",\"valueString\":\"");
        raw(out, seq);
        raw(out, "\"}");
        ext_string(out, "bed", &obs.bed);
        ext_string(out, "containment-id", &obs.containment_id);
        ext_string(out, "equipment-id", &obs.equipment_id);
        ext_string(out, "abnormal-flags", &obs.abnormal_flags);
        if absent.is_some() || value.is_none() {
            ext_string(out, "value-text", &obs.value_text);
        }
        ext_string(out, "source-message-id", &obs.source_message_id);
        if !obs.source_message_id.is_empty() {
            ext_start(out, "source-row", "UnsignedInt");
            uint(out, u64::from(obs.source_row));
            out.push(b'}');
        }
        if matches!(status, ObservationStatus::Invalid | ObservationStatus::Test) {
            ext_start(out, "measurement-status", "Code");
            raw(
                out,
                if status == ObservationStatus::Invalid {
                    "\"invalid\"}"
                } else {
                    "\"test\"}"
                },
            );
        }
        let issued = self.issued.get(obs.receive_time_us, |buf| {
            let _ = serde_json::to_writer(buf, &receive);
        });
        ext_start(out, "receive-time", "Instant");
        out.extend_from_slice(issued);
        out.push(b'}');
        ext_start(out, "clock-synced", "Boolean");
        raw(out, if obs.clock_synced { "true}" } else { "false}" });
        if obs.device_time_untrusted {
            ext_string(
                out,
                "untrusted-device-time",
                &untrusted_device_time(obs.device_time_us),
            );
        }
        out.push(b']');

        raw(out, ",\"identifier\":[{\"system\":");
        out.extend_from_slice(&self.system);
        raw(out, ",\"value\":\"");
        raw(out, seq);
        raw(out, "\"}],\"status\":");
        raw(
            out,
            // HL7 v2-to-FHIR concept map (OBX-11): C → corrected.
            if status == ObservationStatus::Corrected {
                "\"corrected\""
            } else {
                "\"final\""
            },
        );
        raw(out, ",\"category\":[{\"coding\":[");
        coding(out, CATEGORY_SYSTEM, "vital-signs", Some("Vital Signs"));
        raw(out, "]}],\"code\":{\"coding\":[");
        raw(out, "{\"system\":");
        string(out, MDC_SYSTEM);
        raw(out, ",\"code\":\"");
        uint(out, u64::from(obs.mdc_code));
        out.push(b'"');
        if let Some(refid) = refid {
            raw(out, ",\"display\":");
            string(out, refid);
        }
        out.push(b'}');
        if let Some(loinc) = loinc {
            let display = term
                .filter(|t| t.loinc.as_deref() == Some(loinc))
                .and_then(|t| t.loinc_display.as_deref());
            out.push(b',');
            coding(out, LOINC_SYSTEM, loinc, display);
        }
        out.push(b']');
        if let Some(text) = code_text {
            raw(out, ",\"text\":");
            string(out, text);
        }
        out.push(b'}');

        if let Some(patient) = patient {
            let cached = matches!(&self.subject, Some((p, _)) if p == patient);
            if !cached {
                let mut json = Vec::new();
                raw(&mut json, ",\"subject\":{\"reference\":");
                string(&mut json, &format!("Patient/{}", patient_fhir_id(patient)));
                raw(&mut json, ",\"identifier\":{\"value\":");
                string(&mut json, patient);
                raw(&mut json, "}}");
                self.subject = Some((patient.to_owned(), json));
            }
            if let Some((_, json)) = &self.subject {
                out.extend_from_slice(json);
            }
        }

        raw(out, ",\"effectiveDateTime\":");
        match obs
            .device_time_us
            .filter(|_| !obs.device_time_untrusted)
            .and_then(|us| Some((us, instant_from_us(us)?)))
        {
            Some((us, effective)) => {
                let json = self.effective.get(us, |buf| {
                    let _ = serde_json::to_writer(buf, &DateTime::DateTime(effective));
                });
                out.extend_from_slice(json);
            }
            None => {
                let json = self.effective.get(obs.receive_time_us, |buf| {
                    let _ = serde_json::to_writer(buf, &DateTime::DateTime(receive.clone()));
                });
                out.extend_from_slice(json);
            }
        }
        raw(out, ",\"issued\":");
        out.extend_from_slice(&self.issued.json);

        match value {
            Some(Value::Quantity(v)) => {
                raw(out, ",\"valueQuantity\":");
                quantity(out, v, unit);
            }
            Some(Value::Text(text)) => {
                raw(out, ",\"valueString\":");
                string(out, text);
            }
            None => {}
        }
        if let Some(reason) = absent {
            raw(out, ",\"dataAbsentReason\":{\"coding\":[");
            coding(out, DATA_ABSENT_SYSTEM, reason, None);
            raw(out, "]}");
        }
        let interpretation = interpretation_codes(&obs.abnormal_flags);
        if !interpretation.is_empty() {
            raw(out, ",\"interpretation\":[");
            for (i, code) in interpretation.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                raw(out, "{\"coding\":[");
                coding(out, INTERPRETATION_SYSTEM, code, None);
                raw(out, "]}");
            }
            out.push(b']');
        }
        raw(out, ",\"device\":");
        out.extend_from_slice(&self.device);
        let low = obs.limit_low.filter(|v| v.is_finite());
        let high = obs.limit_high.filter(|v| v.is_finite());
        if low.is_some() || high.is_some() {
            raw(out, ",\"referenceRange\":[{");
            if let Some(low) = low {
                raw(out, "\"low\":");
                quantity(out, low, unit);
            }
            if let Some(high) = high {
                if low.is_some() {
                    out.push(b',');
                }
                raw(out, "\"high\":");
                quantity(out, high, unit);
            }
            raw(out, "}]");
        }
        // Observation, entry.
        raw(out, "}}");
        Ok(())
    }
}
