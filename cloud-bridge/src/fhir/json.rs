//! The direct JSON writer of observation bundles (see [`super::observation_bundle`]).
//!
//! It writes, field by field, what the fhir-sdk R4B `Bundle`/`Observation` values serialize
//! to with serde_json: the same field order (FHIR element order), no
//! empty or absent fields, strings escaped as serde_json escapes them (only `"`, `\` and control
//! characters; everything else raw UTF-8), numbers through serde_json itself (`97.0`, `1e-7`),
//! and times through the fhir-sdk `Instant`/`DateTime` serializers (cached per microsecond
//! value, since the observations of one message share their times). The golden file and the
//! fhir-sdk round trip over generated inputs (`roundtrip.rs`) hold it to that, byte for byte.

use std::collections::HashMap;
use std::io::Write as _;

use fhir_sdk::{DateTime, Instant};
use icu_protos::v1::{Observation, ObservationStatus};
use sha2::{Digest, Sha256};

use super::common::{
    fhir_id, identifier_system, instant_from_us, interpretation_codes, non_empty, patient_fhir_id,
    profile, untrusted_device_time, uuid_text, FhirContext, ACT_REASON_SYSTEM, ASSOCIATION_SYSTEM,
    CATEGORY_SYSTEM, DATA_ABSENT_SYSTEM, INTERPRETATION_SYSTEM, LOINC_SYSTEM, MDC_SYSTEM,
    UCUM_SYSTEM, UNASSOCIATED,
};
use super::device::device_metric_id;
use super::vitals::{self, Category, BP_PANEL, BP_PANEL_DISPLAY, DIASTOLIC, MEAN, SYSTOLIC};
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

/// Opens `,{"url":"<base>/StructureDefinition/<name>","value<kind>":` (the caller writes the
/// value and the closing brace); `prefix` is the escaped `<base>/StructureDefinition/`.
fn ext_start(out: &mut Vec<u8>, prefix: &[u8], name: &str, kind: &str) {
    raw(out, ",{\"url\":\"");
    out.extend_from_slice(prefix);
    raw(out, name);
    raw(out, "\",\"value");
    raw(out, kind);
    raw(out, "\":");
}

fn ext_string(out: &mut Vec<u8>, prefix: &[u8], name: &str, text: &str) {
    if let Some(text) = non_empty(text) {
        ext_start(out, prefix, name, "String");
        string(out, text);
        out.push(b'}');
    }
}

/// The FHIR Observation status of a reading: OBX-11 (HL7 table 0085) through the HL7
/// v2-to-FHIR concept map when the device sent it (C corrected; D, W entered-in-error; F, U
/// final; I, O registered; P, R, S preliminary; X cancelled), else from the gateway's status
/// (corrected, or final).
pub(super) fn fhir_status(obs: &Observation, status: ObservationStatus) -> &'static str {
    match obs.result_status.trim() {
        "C" => "corrected",
        "D" | "W" => "entered-in-error",
        "F" | "U" => "final",
        "I" | "O" => "registered",
        "P" | "R" | "S" => "preliminary",
        "X" => "cancelled",
        _ if status == ObservationStatus::Corrected => "corrected",
        _ => "final",
    }
}

/// `,"status":..,"category":[..]`.
fn status_and_category(out: &mut Vec<u8>, fhir_status: &str, category: Category) {
    raw(out, ",\"status\":\"");
    raw(out, fhir_status);
    out.push(b'"');
    raw(out, ",\"category\":[{\"coding\":[");
    coding(
        out,
        CATEGORY_SYSTEM,
        category.code(),
        Some(category.display()),
    );
    raw(out, "]}]");
}

/// `s` escaped as inside a JSON string, without the quotes.
fn escaped(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    string(&mut out, s);
    out[1..out.len() - 1].to_vec()
}

/// One reading that is part of a blood pressure measurement, kept to write the panel.
struct BpPart {
    /// The measurement: MDC reference id without the suffix, the patient, the effective time
    /// and the source message.
    family: String,
    patient: String,
    effective_us: i64,
    message: String,
    member: &'static str,
    seq: u64,
    /// The Observation's id.
    id: String,
    mdc_code: u32,
    refid: String,
    value: f64,
    unit: Option<String>,
    receive_us: i64,
    corrected: bool,
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
    gateway_id: &'a str,
    device_id: &'a str,
    /// `"urn:icu-gateway:<gateway>:<device>"`, escaped.
    system: Vec<u8>,
    /// `{"reference":"Device/<gateway>-<device>","display":"<device>"}`: `device`, and `subject`
    /// when no patient is associated.
    device: Vec<u8>,
    /// `<base>/StructureDefinition/`, escaped.
    ext_prefix: Vec<u8>,
    /// The `type` of a `referenceRange` that holds the device's alarm limits.
    range_type: Vec<u8>,
    /// `<gateway>-<device>-` when `<gateway>-<device>-<seq>` is a valid FHIR id whenever it is at
    /// most 64 characters.
    plain_id_prefix: Option<String>,
    /// SHA-256 of `observation\0<gateway>\0<device>\0`: the fullUrl hash before the seq.
    uuid_prefix: Sha256,
    issued: CachedTime,
    effective: CachedTime,
    /// The last patient and its `subject` object.
    subject: Option<(String, Vec<u8>)>,
    /// Blood pressure readings seen so far, for the panels written at the end.
    bp: Vec<BpPart>,
    /// `{"reference":"DeviceMetric/<id>","display":..}` per MDC code and containment id.
    metrics: HashMap<u32, Vec<(String, Vec<u8>)>>,
    cx: &'a FhirContext,
}

impl<'a> BundleWriter<'a> {
    pub(super) fn new(cx: &'a FhirContext, device_id: &'a str) -> Self {
        let gateway_id = cx.gateway_id.as_str();
        let mut system = Vec::new();
        string(&mut system, &identifier_system(gateway_id, device_id));
        let mut device = Vec::new();
        raw(&mut device, "{\"reference\":");
        string(&mut device, &cx.device_reference(device_id));
        raw(&mut device, ",\"display\":");
        string(&mut device, device_id);
        device.push(b'}');
        let mut range_type = Vec::new();
        raw(&mut range_type, ",\"type\":{\"coding\":[");
        coding(
            &mut range_type,
            &cx.code_system("reference-range-type"),
            "alarm-limits",
            Some("Alarm limits"),
        );
        raw(&mut range_type, "],\"text\":\"Device alarm limits\"}");
        let mut uuid_prefix = Sha256::new();
        for part in ["observation", gateway_id, device_id] {
            uuid_prefix.update(part.as_bytes());
            uuid_prefix.update([0u8]);
        }
        let plain = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        Self {
            out: Vec::new(),
            gateway_id,
            device_id,
            system,
            device,
            ext_prefix: escaped(&cx.extension_url("")),
            range_type,
            plain_id_prefix: (plain(gateway_id) && plain(device_id))
                .then(|| format!("{gateway_id}-{device_id}-")),
            uuid_prefix,
            issued: CachedTime::default(),
            effective: CachedTime::default(),
            subject: None,
            bp: Vec::new(),
            metrics: HashMap::new(),
            cx,
        }
    }

    /// `,"device":{"reference":"DeviceMetric/<id>","display":"<device>"}`: PoCD's link from a
    /// reading to the metric that measured it (sent on `icu.devices`).
    fn write_metric_ref(&mut self, mdc_code: u32, containment: &str) {
        let containment = containment.trim();
        let known = self.metrics.entry(mdc_code).or_default();
        let index = match known.iter().position(|(c, _)| c == containment) {
            Some(i) => i,
            None => {
                let mut json = Vec::new();
                raw(&mut json, ",\"device\":{\"reference\":");
                string(
                    &mut json,
                    &format!(
                        "DeviceMetric/{}",
                        device_metric_id(self.cx, self.device_id, containment, mdc_code)
                    ),
                );
                raw(&mut json, ",\"display\":");
                string(&mut json, self.device_id);
                json.push(b'}');
                known.push((containment.to_owned(), json));
                known.len() - 1
            }
        };
        self.out.extend_from_slice(&known[index].1);
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
        self.bp_panels();
        raw(&mut self.out, "]}");
        self.out
    }

    /// The Observation id of reading `seq`: `<gateway>-<device>-<seq>`, or its hash when that is
    /// no valid FHIR id.
    fn observation_id(&self, seq: &str) -> String {
        match &self.plain_id_prefix {
            Some(prefix) if prefix.len() + seq.len() <= 64 => format!("{prefix}{seq}"),
            _ => fhir_id(&[self.gateway_id, self.device_id, seq]),
        }
    }

    /// One 85354-9 panel Observation per blood pressure measurement of which both the systolic
    /// and the diastolic reading are in this bundle, with a patient and an effective time: the
    /// R4 `bp` profile. The readings stay Observations of their own (their seqs are what
    /// consumers account by); the panel names them in `derivedFrom`.
    fn bp_panels(&mut self) {
        let parts = std::mem::take(&mut self.bp);
        let mut done = vec![false; parts.len()];
        for i in 0..parts.len() {
            if done[i] {
                continue;
            }
            let head = &parts[i];
            let same = |p: &BpPart| {
                p.family == head.family
                    && p.patient == head.patient
                    && p.effective_us == head.effective_us
                    && p.message == head.message
            };
            // The first reading of each member, in the order received.
            let mut group: Vec<usize> = Vec::new();
            for (j, p) in parts.iter().enumerate().skip(i) {
                if !done[j] && same(p) && !group.iter().any(|&k| parts[k].member == p.member) {
                    group.push(j);
                }
            }
            for &j in &group {
                done[j] = true;
            }
            let member = |code: &str| group.iter().map(|&j| &parts[j]).find(|p| p.member == code);
            let (Some(sys), Some(_)) = (member(SYSTOLIC), member(DIASTOLIC)) else {
                continue;
            };
            let mut ordered: Vec<&BpPart> = [SYSTOLIC, DIASTOLIC, MEAN]
                .iter()
                .filter_map(|c| member(c))
                .collect();
            ordered.retain(|p| p.effective_us == sys.effective_us);
            let Some(effective) = instant_from_us(sys.effective_us) else {
                continue;
            };
            let newest = ordered
                .iter()
                .map(|p| p.receive_us)
                .max()
                .unwrap_or(sys.receive_us);
            let Some(issued) = instant_from_us(newest) else {
                continue;
            };
            let seq = sys.seq.to_string();
            let out = &mut self.out;
            raw(out, ",{\"fullUrl\":\"urn:uuid:");
            let mut hasher = Sha256::new();
            for part in ["bp-panel", self.gateway_id, self.device_id, &seq] {
                hasher.update(part.as_bytes());
                hasher.update([0u8]);
            }
            out.extend_from_slice(&uuid_text(&hasher.finalize()));
            raw(
                out,
                "\",\"resource\":{\"resourceType\":\"Observation\",\"id\":",
            );
            string(
                out,
                &fhir_id(&[self.gateway_id, self.device_id, &seq, "bp"]),
            );
            raw(out, ",\"meta\":{\"profile\":[");
            string(out, profile::BP);
            raw(out, "]},\"identifier\":[{\"system\":");
            out.extend_from_slice(&self.system);
            raw(out, ",\"value\":");
            string(out, &format!("bp-{seq}"));
            raw(out, "}]");
            status_and_category(
                out,
                if ordered.iter().any(|p| p.corrected) {
                    "corrected"
                } else {
                    "final"
                },
                Category::VitalSigns,
            );
            raw(out, ",\"code\":{\"coding\":[");
            coding(out, LOINC_SYSTEM, BP_PANEL, Some(BP_PANEL_DISPLAY));
            if sys.mdc_code > 1 {
                // IEEE 11073-10101: the compound code is the systolic code minus one.
                out.push(b',');
                coding(
                    out,
                    MDC_SYSTEM,
                    &(sys.mdc_code - 1).to_string(),
                    Some(&sys.family),
                );
            }
            raw(out, "],\"text\":\"Blood pressure\"}");
            if let Some((_, json)) = self.subject.as_ref().filter(|(p, _)| *p == sys.patient) {
                out.extend_from_slice(json);
            } else {
                raw(out, ",\"subject\":{\"reference\":");
                string(out, &format!("Patient/{}", patient_fhir_id(&sys.patient)));
                raw(out, ",\"identifier\":{\"value\":");
                string(out, &sys.patient);
                raw(out, "}}");
            }
            raw(out, ",\"effectiveDateTime\":");
            let _ = serde_json::to_writer(&mut *out, &DateTime::DateTime(effective));
            raw(out, ",\"issued\":");
            let _ = serde_json::to_writer(&mut *out, &issued);
            raw(out, ",\"device\":");
            out.extend_from_slice(&self.device);
            raw(out, ",\"derivedFrom\":[");
            for (k, p) in ordered.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                raw(out, "{\"reference\":");
                string(out, &format!("Observation/{}", p.id));
                out.push(b'}');
            }
            raw(out, "],\"component\":[");
            for (k, p) in ordered.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                let display = match p.member {
                    SYSTOLIC => "Systolic blood pressure",
                    DIASTOLIC => "Diastolic blood pressure",
                    _ => "Mean blood pressure",
                };
                raw(out, "{\"code\":{\"coding\":[");
                coding(out, LOINC_SYSTEM, p.member, Some(display));
                out.push(b',');
                coding(out, MDC_SYSTEM, &p.mdc_code.to_string(), Some(&p.refid));
                raw(out, "]},\"valueQuantity\":");
                quantity(out, p.value, p.unit.as_deref());
                out.push(b'}');
            }
            raw(out, "]}}");
        }
    }

    /// One `{"fullUrl":..,"resource":{Observation}}` entry; fails only on a receive time out
    /// of range.
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

        // The effective time is the device's, only when the message gave one the gateway
        // trusts; otherwise it stays absent and `device-time-status` says why.
        let effective = obs
            .device_time_us
            .filter(|_| !obs.device_time_untrusted)
            .and_then(|us| Some((us, instant_from_us(us)?)));
        let time_status = match (effective.is_some(), obs.device_time_us) {
            (true, _) => None,
            (false, None) => Some("missing"),
            (false, Some(_)) => Some("untrusted"),
        };

        // What the code is: its category and, with a patient and a time, its vital-signs
        // profile (when the unit is one that profile allows).
        let category = vitals::category(loinc, refid);
        let vital = vitals::vital(loinc).filter(|v| {
            patient.is_some()
                && effective.is_some()
                && match &value {
                    Some(Value::Quantity(_)) => unit.is_some_and(|u| v.units.contains(&u)),
                    Some(Value::Text(_)) => false,
                    None => true,
                }
        });

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
        let id = match &self.plain_id_prefix {
            Some(prefix) if prefix.len() + seq.len() <= 64 => {
                out.push(b'"');
                raw(out, prefix);
                raw(out, seq);
                out.push(b'"');
                None
            }
            _ => {
                let id = fhir_id(&[self.gateway_id, self.device_id, seq]);
                string(out, &id);
                Some(id)
            }
        };

        // meta: the profiles always; security for test data; the tag when unassociated.
        raw(out, ",\"meta\":{\"profile\":[");
        string(
            out,
            if matches!(value, Some(Value::Text(_))) {
                profile::POCD_ENUMERATION
            } else {
                profile::POCD_NUMERIC
            },
        );
        if let Some(vital) = vital {
            out.push(b',');
            string(out, vital.profile);
        }
        out.push(b']');
        if test {
            raw(out, ",\"security\":[");
            coding(out, ACT_REASON_SYSTEM, "HTEST", Some("test health data"));
            out.push(b']');
        }
        if patient.is_none() {
            raw(out, ",\"tag\":[");
            coding(out, ASSOCIATION_SYSTEM, UNASSOCIATED, None);
            out.push(b']');
        }
        out.push(b'}');

        // Extensions (the first without its leading comma).
        let prefix = &self.ext_prefix;
        raw(out, ",\"extension\":[{\"url\":\"");
        out.extend_from_slice(prefix);
        raw(out, "seq\",\"valueString\":\"");
        raw(out, seq);
        raw(out, "\"}");
        ext_string(out, prefix, "bed", &obs.bed);
        ext_string(out, prefix, "containment-id", &obs.containment_id);
        ext_string(out, prefix, "equipment-id", &obs.equipment_id);
        ext_string(out, prefix, "abnormal-flags", &obs.abnormal_flags);
        if absent.is_some() || value.is_none() {
            ext_string(out, prefix, "value-text", &obs.value_text);
        }
        ext_string(out, prefix, "source-message-id", &obs.source_message_id);
        if !obs.source_message_id.is_empty() {
            ext_start(out, prefix, "source-row", "UnsignedInt");
            uint(out, u64::from(obs.source_row));
            out.push(b'}');
        }
        if matches!(status, ObservationStatus::Invalid | ObservationStatus::Test) {
            ext_start(out, prefix, "measurement-status", "Code");
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
        ext_start(out, prefix, "receive-time", "Instant");
        out.extend_from_slice(issued);
        out.push(b'}');
        ext_start(out, prefix, "clock-synced", "Boolean");
        raw(out, if obs.clock_synced { "true}" } else { "false}" });
        if let Some(time_status) = time_status {
            ext_start(out, prefix, "device-time-status", "Code");
            out.push(b'"');
            raw(out, time_status);
            raw(out, "\"}");
        }
        if obs.device_time_untrusted || (time_status.is_some() && obs.device_time_us.is_some()) {
            ext_string(
                out,
                prefix,
                "untrusted-device-time",
                &untrusted_device_time(obs.device_time_us),
            );
        }
        out.push(b']');

        raw(out, ",\"identifier\":[{\"system\":");
        out.extend_from_slice(&self.system);
        raw(out, ",\"value\":\"");
        raw(out, seq);
        raw(out, "\"}]");
        status_and_category(out, fhir_status(obs, status), category);
        raw(out, ",\"code\":{\"coding\":[");
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
        // The LOINC codings the vital-signs profile requires, when not already there.
        if let Some(v) = vitals::vital(loinc) {
            for (code, display) in v.loinc {
                if Some(*code) != loinc {
                    out.push(b',');
                    coding(out, LOINC_SYSTEM, code, Some(display));
                }
            }
        }
        out.push(b']');
        if let Some(text) = code_text {
            raw(out, ",\"text\":");
            string(out, text);
        }
        out.push(b'}');

        // subject: the census patient, or else (PoCD) the device itself.
        match patient {
            Some(patient) => {
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
            None => {
                raw(out, ",\"subject\":");
                out.extend_from_slice(&self.device);
            }
        }

        if let Some((us, effective)) = &effective {
            raw(out, ",\"effectiveDateTime\":");
            let json = self.effective.get(*us, |buf| {
                let _ = serde_json::to_writer(buf, &DateTime::DateTime(effective.clone()));
            });
            out.extend_from_slice(json);
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
        self.write_metric_ref(obs.mdc_code, &obs.containment_id);
        let out = &mut self.out;
        // The device's alarm limits, typed as such so that nobody reads them as normal ranges.
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
            out.extend_from_slice(&self.range_type);
            raw(out, "}]");
        }
        // Observation, entry.
        raw(out, "}}");

        // A blood pressure reading with a value, a patient and a time: kept for the panel.
        if let (
            Some((family, member)),
            Some(patient),
            Some((effective_us, _)),
            Some(Value::Quantity(v)),
        ) = (vitals::bp_part(loinc, refid), patient, effective, value)
        {
            let id = id.unwrap_or_else(|| self.observation_id(seq));
            self.bp.push(BpPart {
                family: family.to_owned(),
                patient: patient.to_owned(),
                effective_us,
                message: obs.source_message_id.clone(),
                member,
                seq: obs.seq,
                id,
                mdc_code: obs.mdc_code,
                refid: refid.unwrap_or_default().to_owned(),
                value: v,
                unit: unit.map(str::to_owned),
                receive_us: obs.receive_time_us,
                corrected: fhir_status(obs, status) == "corrected",
            });
        }
        Ok(())
    }
}
