//! What every FHIR mapping of the bridge shares: code systems, ids, references, codings,
//! extensions and times. Imports nothing else of `fhir`, so the mappings (observation bundles,
//! the direct JSON writer, alarms, ADT events) all depend on it and never on each other.

use fhir_sdk::r4b::codes::BundleType;
use fhir_sdk::r4b::resources::{Bundle, BundleEntry, Resource};
use fhir_sdk::r4b::types::{
    CodeableConcept, Coding, Extension, ExtensionValue, Identifier, Reference,
};
use fhir_sdk::Instant;
use sha2::{Digest, Sha256};

use crate::error::BridgeError;

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
/// The canonical base of the gateway's own FHIR artefacts (extensions, code systems) when the
/// config names none (`[kafka] fhir_base`). Extension `x` is `<base>/StructureDefinition/x`, and
/// its definition is published in `cloud-bridge/fhir/StructureDefinition-x.json`.
pub const DEFAULT_FHIR_BASE: &str = "http://icu-gateway.org/fhir";

/// What every mapping needs to know about the gateway it writes for: its id (which scopes every
/// resource id and identifier) and the canonical base of its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirContext {
    pub gateway_id: String,
    /// Without a trailing '/'.
    pub base: String,
}

impl FhirContext {
    /// The context of gateway `gateway_id` with the extensions under `base`.
    pub fn new(gateway_id: &str, base: &str) -> Self {
        Self {
            gateway_id: gateway_id.to_owned(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// The context of gateway `gateway_id` under [`DEFAULT_FHIR_BASE`].
    pub fn with_default_base(gateway_id: &str) -> Self {
        Self::new(gateway_id, DEFAULT_FHIR_BASE)
    }

    /// The canonical url of extension `name`.
    pub fn extension_url(&self, name: &str) -> String {
        format!("{}/StructureDefinition/{name}", self.base)
    }

    /// The canonical url of the gateway's code system `name`.
    pub fn code_system(&self, name: &str) -> String {
        format!("{}/CodeSystem/{name}", self.base)
    }

    /// `Device/<id>` of the gateway's device `device_id`: the id is scoped by the gateway, so
    /// two ICUs' `mon-01` are two Device resources.
    pub fn device_reference(&self, device_id: &str) -> String {
        format!("Device/{}", fhir_id(&[&self.gateway_id, device_id]))
    }

    /// `{"reference": "Device/<gateway>-<device>", "display": "<device>"}`: an Observation's
    /// `device`, and its `subject` when no patient is associated.
    pub(crate) fn device_ref(&self, device_id: &str) -> Result<Reference, String> {
        Reference::builder()
            .reference(self.device_reference(device_id))
            .display(device_id.to_owned())
            .build()
            .map_err(|e| e.to_string())
    }

    /// Appends a `value String` extension for each `(name, text)` whose text is not blank.
    pub(crate) fn string_exts(
        &self,
        out: &mut Vec<Extension>,
        pairs: &[(&str, &str)],
    ) -> Result<(), String> {
        for (name, text) in pairs {
            if let Some(text) = non_empty(text) {
                out.push(self.ext(name, ExtensionValue::String(text.to_owned()))?);
            }
        }
        Ok(())
    }

    pub(crate) fn ext(&self, name: &str, value: ExtensionValue) -> Result<Extension, String> {
        Extension::builder()
            .url(self.extension_url(name))
            .value(value)
            .build()
            .map_err(|e| e.to_string())
    }
}

/// Profiles claimed in `meta.profile`.
pub mod profile {
    /// PoCD: an Observation of a numeric measurement, calculation or setting.
    pub const POCD_NUMERIC: &str =
        "http://hl7.org/fhir/uv/pocd/StructureDefinition/NumericObservation";
    /// PoCD: an Observation of a coded or text status, annotation or setting.
    pub const POCD_ENUMERATION: &str =
        "http://hl7.org/fhir/uv/pocd/StructureDefinition/EnumerationObservation";
    /// FHIR R4 vital signs base profile.
    pub const VITAL_SIGNS: &str = "http://hl7.org/fhir/StructureDefinition/vitalsigns";
    /// FHIR R4 vital signs: the blood pressure panel.
    pub const BP: &str = "http://hl7.org/fhir/StructureDefinition/bp";
}

pub(crate) const CATEGORY_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/observation-category";
pub(crate) const DATA_ABSENT_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/data-absent-reason";
pub(crate) const INTERPRETATION_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
pub(crate) const ACT_REASON_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// Identifier system of one device's observations: `urn:icu-gateway:<gateway>:<device>`.
pub fn identifier_system(gateway_id: &str, device_id: &str) -> String {
    format!("urn:icu-gateway:{gateway_id}:{device_id}")
}

/// The FHIR id of a census patient's Patient resource (the same in every topic).
pub fn patient_fhir_id(patient_id: &str) -> String {
    fhir_id(&[patient_id])
}

/// `subject` of a record of a census patient: `Patient/<id>` plus the patient id itself.
pub(crate) fn patient_reference(patient_id: &str) -> Result<Reference, String> {
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

/// `category` procedure (observation-category): a device measurement that is no vital sign.
pub(crate) fn procedure_category() -> Result<CodeableConcept, String> {
    CodeableConcept::builder()
        .coding(vec![Some(coding(
            CATEGORY_SYSTEM,
            "procedure",
            Some("Procedure"),
        )?)])
        .build()
        .map_err(|e| e.to_string())
}

/// The OBX-8 flags that are result interpretations (v3 ObservationInterpretation codes), in
/// input order without duplicates; measurement-status flags (NAV, INV, QUES, ...) are not.
pub(crate) fn interpretation_codes(flags: &str) -> Vec<&'static str> {
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

pub(crate) fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

pub(crate) fn coding(system: &str, code: &str, display: Option<&str>) -> Result<Coding, String> {
    let mut b = Coding::builder()
        .system(system.to_owned())
        .code(code.to_owned());
    if let Some(display) = display {
        b = b.display(display.to_owned());
    }
    b.build().map_err(|e| e.to_string())
}

/// The device time of a reading whose device clock the gateway did not trust, as text: RFC 3339
/// when it is a valid instant, else the raw microseconds.
pub(crate) fn untrusted_device_time(us: Option<i64>) -> String {
    match us {
        Some(us) => chrono::DateTime::from_timestamp_micros(us)
            .filter(|t| (1..=9999).contains(&chrono::Datelike::year(t)))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            .unwrap_or_else(|| format!("{us} us")),
        None => String::new(),
    }
}

/// Microseconds since the epoch → FHIR instant (UTC), for years 1..=9999 only (RFC 3339 range).
pub(crate) fn instant_from_us(us: i64) -> Option<Instant> {
    let dt =
        fhir_sdk::time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).ok()?;
    (1..=9999).contains(&dt.year()).then_some(Instant(dt))
}

/// A valid FHIR id (`[A-Za-z0-9\-.]{1,64}`) from parts joined with '-': the readable form when it
/// is valid, otherwise a SHA-256 based id. Deterministic either way.
pub(crate) fn fhir_id(parts: &[&str]) -> String {
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

/// A deterministic name-based UUID from parts: SHA-256 of the parts (joined by NUL), as an
/// RFC 9562 version 8 UUID (version 5 is defined as SHA-1; a SHA-256 name-based UUID is the
/// version 8 example of RFC 9562, appendix B.2).
pub(crate) fn uuid_from(parts: &[&str]) -> String {
    let digest = Sha256::digest(parts.join("\u{0}").as_bytes());
    String::from_utf8_lossy(&uuid_text(&digest)).into_owned()
}

/// The UUID text (`8-4-4-4-12` lowercase hex) of a SHA-256 digest's first 16 bytes, with the
/// version (8, RFC 9562) and variant (`10`) bits set.
pub(crate) fn uuid_text(digest: &[u8]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
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

/// `{"fullUrl": "urn:uuid:<uuid>", "resource": ..}`.
pub(crate) fn bundle_entry(uuid: &str, resource: Resource) -> Result<BundleEntry, String> {
    BundleEntry::builder()
        .full_url(format!("urn:uuid:{uuid}"))
        .resource(resource)
        .build()
        .map_err(|e| e.to_string())
}

/// The JSON bytes of the `collection` Bundle of one device's consecutive records of one kind
/// (`alarm`, `waveform`), `(seq, resource)` in seq order: id `<gateway>-<device>-<kind>s-<first>-
/// <last>`, identifier `system|<first>-<last>`, each entry's fullUrl the name-based UUID of
/// `(kind, gateway, device, seq)`. An error names the seq it is about.
pub(crate) fn device_bundle(
    cx: &FhirContext,
    device_id: &str,
    kind: &str,
    system: String,
    timestamp: Instant,
    resources: Vec<(u64, Resource)>,
) -> Result<Vec<u8>, (u64, String)> {
    let gateway_id = cx.gateway_id.as_str();
    let (first, last) = match (resources.first(), resources.last()) {
        (Some(f), Some(l)) => (f.0, l.0),
        _ => return Err((0, format!("no {kind} records to put in a bundle"))),
    };
    let range = format!("{first}-{last}");
    let mut entries = Vec::with_capacity(resources.len());
    for (seq, resource) in resources {
        let uuid = uuid_from(&[kind, gateway_id, device_id, &seq.to_string()]);
        entries.push(Some(bundle_entry(&uuid, resource).map_err(|e| (seq, e))?));
    }
    collection_bundle(
        fhir_id(&[gateway_id, device_id, &format!("{kind}s"), &range]),
        (system, range),
        timestamp,
        entries,
    )
    .map_err(|e| (first, e))
}

/// The JSON bytes of a `collection` Bundle with id `id`, identifier `system|value` and
/// `timestamp`, holding `entries`.
pub(crate) fn collection_bundle(
    id: String,
    (system, value): (String, String),
    timestamp: Instant,
    entries: Vec<Option<BundleEntry>>,
) -> Result<Vec<u8>, String> {
    let bundle = Bundle::builder()
        .id(id)
        .identifier(
            Identifier::builder()
                .system(system)
                .value(value)
                .build()
                .map_err(|e| e.to_string())?,
        )
        .r#type(BundleType::Collection)
        .timestamp(timestamp)
        .entry(entries)
        .build()
        .map_err(|e| e.to_string())?;
    serde_json::to_vec(&bundle).map_err(|e| e.to_string())
}
