//! FHIR R4 mapping of one audit-trail entry (for `icu.audit`): one AuditEvent per entry.
//!
//! - `type` / `subtype`: DICOM audit event types where one fits (110114 User Authentication with
//!   110122 Login / 110123 Logout; 110113 Security Alert with 110127 Emergency Override Started,
//!   110137 User Security Attributes Changed, 110129 Security Configuration; 110110 Patient Record;
//!   110100 Application Activity with 110120 Application Start / 110121 Application Stop), the
//!   FHIR `rest` type with a restful-interaction subtype (`update`, `read`) for clinical actions
//!   and patient reads, and always the gateway's own action code (`urn:icu-gateway:audit-action`).
//! - `action`: C/R/U/D/E; `recorded`: the entry's time; `outcome`: 0 success, 4 denied (minor
//!   failure), 8 failed (serious failure), `outcomeDesc` the reason when it is not a success;
//!   `purposeOfEvent` BTG (break the glass) for break-glass.
//! - `agent`: the account (`urn:icu-gateway:<gateway>:account`) with its role and network
//!   address, `requestor` true; an entry with no account has the gateway itself as agent.
//! - `source`: the gateway (`site` and `observer` = gateway id, type 4 Application Server).
//! - `entity`: the target (a census patient as `Patient/<id>`, anything else as an identifier
//!   `urn:icu-gateway:<gateway>:<kind>`), with details bed, old-value, new-value, reason; and the
//!   chain entry (`urn:icu-gateway:<gateway>:audit` | seq) with details seq, time-us,
//!   clock-synced, key-id (strings) and prev-hash, hash, signature (base64Binary), so a consumer
//!   can re-check the chain and the entry signature as the gateway's `audit verify` does.
//!
//! The JSON is built, then read back into the fhir-sdk R4B `AuditEvent` (which refuses a
//! missing required element or a code outside its value set) and written from it: element
//! order and formats are those of the other mappings, and the bytes are deterministic.

use base64::Engine as _;
use fhir_sdk::r4b::resources::AuditEvent;
use icu_protos::v1::AuditEntry;
use serde_json::{json, Map, Value};

use super::common::{
    fhir_id, instant_from_us, non_empty, patient_fhir_id, FhirContext, ACT_REASON_SYSTEM,
};
use crate::error::BridgeError;

/// DICOM controlled terminology (audit event types and subtypes).
pub const DCM_SYSTEM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// FHIR audit event types (`rest`).
pub const AUDIT_EVENT_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
/// FHIR restful interactions (`read`, `update`, ...).
pub const RESTFUL_INTERACTION_SYSTEM: &str = "http://hl7.org/fhir/restful-interaction";
/// The gateway's own action codes (`login`, `acknowledge`, ...).
pub const AUDIT_ACTION_SYSTEM: &str = "urn:icu-gateway:audit-action";
/// Roles of gateway accounts (`nurse`, `physician`, ...).
pub const ROLE_SYSTEM: &str = "urn:icu-gateway:role";
const SOURCE_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const ENTITY_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/object-role";

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

/// `type`, extra `subtype` codings and `action` of a gateway action code.
fn classify(action: &str) -> (Value, Vec<Value>, &'static str) {
    let dcm = |code, display| coding(DCM_SYSTEM, code, display);
    let rest = |code, display| coding(RESTFUL_INTERACTION_SYSTEM, code, display);
    let rest_type = || coding(AUDIT_EVENT_TYPE_SYSTEM, "rest", "RESTful Operation");
    let auth = || dcm("110114", "User Authentication");
    let alert = || dcm("110113", "Security Alert");
    let app = || dcm("110100", "Application Activity");
    let record = || dcm("110110", "Patient Record");
    let user_attrs = || dcm("110137", "User Security Attributes Changed");
    let sec_config = || dcm("110129", "Security Configuration");
    match action {
        "login" | "login_failed" | "unlock" => (auth(), vec![dcm("110122", "Login")], "E"),
        "logoff" => (auth(), vec![dcm("110123", "Logout")], "E"),
        "break_glass" => (
            alert(),
            vec![dcm("110127", "Emergency Override Started")],
            "E",
        ),
        "acknowledge" | "silence" | "limit_change" => {
            (rest_type(), vec![rest("update", "update")], "U")
        }
        "user_add" | "token_add" => (alert(), vec![user_attrs()], "C"),
        "user_passwd" | "user_disable" | "user_enable" | "user_pin" | "user_role" => {
            (alert(), vec![user_attrs()], "U")
        }
        "token_revoke" => (alert(), vec![user_attrs()], "D"),
        "gateway_start" => (app(), vec![dcm("110120", "Application Start")], "E"),
        "gateway_stop" => (app(), vec![dcm("110121", "Application Stop")], "E"),
        "key_created" => (alert(), vec![sec_config()], "C"),
        "key_rotated" => (alert(), vec![sec_config()], "U"),
        "adt_applied" => (record(), vec![rest("update", "update")], "U"),
        "patient_read" => (record(), vec![rest("read", "read")], "R"),
        // store_failure, budget_refusal, and actions of a later gateway version.
        _ => (app(), Vec::new(), "E"),
    }
}

fn detail_string(kind: &str, value: &str) -> Value {
    json!({"type": kind, "valueString": value})
}

fn detail_bytes(kind: &str, bytes: &[u8]) -> Value {
    json!({
        "type": kind,
        "valueBase64Binary": base64::engine::general_purpose::STANDARD.encode(bytes),
    })
}

fn identifier_ref(system: String, value: &str, display: String) -> Value {
    json!({"identifier": {"system": system, "value": value}, "display": display})
}

/// The FHIR R4 AuditEvent (JSON bytes) of one audit-trail entry of gateway `gateway_id`.
pub fn audit_event(cx: &FhirContext, entry: &AuditEntry) -> Result<Vec<u8>, BridgeError> {
    let gateway_id = cx.gateway_id.as_str();
    let fail = |reason: String| BridgeError::FhirMapping {
        device_id: format!("{gateway_id}:audit"),
        seq: entry.seq,
        reason,
    };
    let recorded = instant_from_us(entry.time_us)
        .ok_or_else(|| fail(format!("audit time {} us is out of range", entry.time_us)))?;
    let recorded = serde_json::to_value(recorded).map_err(|e| fail(e.to_string()))?;
    let seq = entry.seq.to_string();
    let (kind, mut subtypes, action) = classify(&entry.action);
    subtypes.push(json!({"system": AUDIT_ACTION_SYSTEM, "code": entry.action}));

    let mut event = Map::new();
    event.insert("resourceType".into(), json!("AuditEvent"));
    event.insert("id".into(), json!(fhir_id(&["audit", gateway_id, &seq])));
    event.insert(
        "meta".into(),
        json!({"profile": ["http://hl7.org/fhir/StructureDefinition/AuditEvent"]}),
    );
    event.insert("type".into(), kind);
    event.insert("subtype".into(), Value::Array(subtypes));
    event.insert("action".into(), json!(action));
    event.insert("recorded".into(), recorded);
    let outcome = match entry.outcome.as_str() {
        "success" => "0",
        "denied" => "4",
        _ => "8",
    };
    event.insert("outcome".into(), json!(outcome));
    if outcome != "0" {
        let desc = entry
            .reason
            .as_deref()
            .and_then(non_empty)
            .unwrap_or(&entry.outcome);
        // FHIR has no empty strings: an entry without a reason or outcome text has none.
        if !desc.trim().is_empty() {
            event.insert("outcomeDesc".into(), json!(desc));
        }
    }
    if entry.action == "break_glass" {
        event.insert(
            "purposeOfEvent".into(),
            json!([{"coding": [coding(ACT_REASON_SYSTEM, "BTG", "break the glass")]}]),
        );
    }

    // Who: the account, or the gateway itself.
    let gateway_ref = || {
        identifier_ref(
            "urn:icu-gateway:gateway".into(),
            gateway_id,
            gateway_id.to_owned(),
        )
    };
    let mut agent = Map::new();
    if let Some(role) = non_empty(&entry.role) {
        agent.insert(
            "role".into(),
            json!([{"coding": [{"system": ROLE_SYSTEM, "code": role}], "text": role}]),
        );
    }
    match non_empty(&entry.account) {
        Some(account) => {
            agent.insert(
                "who".into(),
                identifier_ref(
                    format!("urn:icu-gateway:{gateway_id}:account"),
                    account,
                    account.to_owned(),
                ),
            );
            agent.insert("requestor".into(), json!(true));
        }
        None => {
            agent.insert("who".into(), gateway_ref());
            agent.insert("requestor".into(), json!(false));
        }
    }
    if let Some(source) = non_empty(&entry.source) {
        agent.insert("network".into(), json!({"address": source, "type": "2"}));
    }
    event.insert("agent".into(), json!([agent]));
    event.insert(
        "source".into(),
        json!({
            "site": gateway_id,
            "observer": gateway_ref(),
            "type": [coding(SOURCE_TYPE_SYSTEM, "4", "Application Server")],
        }),
    );

    // What: the target with the change, then the chain.
    let mut details = Vec::new();
    for (name, value) in [
        ("bed", &entry.bed),
        ("old-value", &entry.old_value),
        ("new-value", &entry.new_value),
        ("reason", &entry.reason),
    ] {
        if let Some(value) = value {
            details.push(detail_string(name, value));
        }
    }
    let mut entities = Vec::new();
    if entry.target_kind != "none" && !entry.target_kind.is_empty() {
        let (what, entity_type, role) = match entry.target_kind.as_str() {
            "patient" if entry.target_id != "*" && non_empty(&entry.target_id).is_some() => (
                json!({
                    "reference": format!("Patient/{}", patient_fhir_id(&entry.target_id)),
                    "identifier": {"value": entry.target_id},
                }),
                coding(ENTITY_TYPE_SYSTEM, "1", "Person"),
                Some(coding(OBJECT_ROLE_SYSTEM, "1", "Patient")),
            ),
            "user" => (
                identifier_ref(
                    format!("urn:icu-gateway:{gateway_id}:account"),
                    &entry.target_id,
                    format!("user {}", entry.target_id),
                ),
                coding(ENTITY_TYPE_SYSTEM, "1", "Person"),
                Some(coding(OBJECT_ROLE_SYSTEM, "6", "User")),
            ),
            kind => (
                identifier_ref(
                    format!("urn:icu-gateway:{gateway_id}:{kind}"),
                    &entry.target_id,
                    format!("{kind} {}", entry.target_id).trim_end().to_owned(),
                ),
                coding(ENTITY_TYPE_SYSTEM, "2", "System Object"),
                (kind == "patient").then(|| coding(OBJECT_ROLE_SYSTEM, "1", "Patient")),
            ),
        };
        let mut target = Map::new();
        target.insert("what".into(), what);
        target.insert("type".into(), entity_type);
        if let Some(role) = role {
            target.insert("role".into(), role);
        }
        target.insert("description".into(), json!(entry.target_kind));
        if !details.is_empty() {
            target.insert("detail".into(), Value::Array(std::mem::take(&mut details)));
        }
        entities.push(Value::Object(target));
    }
    details.extend([
        detail_string("seq", &seq),
        detail_string("time-us", &entry.time_us.to_string()),
        detail_string(
            "clock-synced",
            if entry.clock_synced { "true" } else { "false" },
        ),
        detail_string("key-id", &entry.key_id),
        detail_bytes("prev-hash", &entry.prev_hash),
        detail_bytes("hash", &entry.hash),
        detail_bytes("signature", &entry.signature),
    ]);
    // FHIR has no empty strings: a field the entry does not have is left out.
    details.retain(|d| d.get("valueString").is_none_or(|v| v != ""));
    entities.push(json!({
        "what": identifier_ref(
            format!("urn:icu-gateway:{gateway_id}:audit"),
            &seq,
            format!("audit trail entry {seq}"),
        ),
        "type": coding(ENTITY_TYPE_SYSTEM, "2", "System Object"),
        "description": "gateway audit trail entry (hash chain)",
        "detail": details,
    }));
    event.insert("entity".into(), Value::Array(entities));

    let typed: AuditEvent =
        serde_json::from_value(Value::Object(event)).map_err(|e| fail(e.to_string()))?;
    serde_json::to_vec(&typed).map_err(|e| fail(e.to_string()))
}

/// The chain part of a forwarded audit entry, read back from its AuditEvent (the consumer's
/// view: enough to check the entry's signature and its link to the entry before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAuditEntry {
    pub seq: u64,
    pub action: String,
    pub account: String,
    pub key_id: String,
    /// 32 bytes: the previous entry's hash (zeros for seq 1).
    pub prev_hash: Vec<u8>,
    /// 32 bytes: SHA-256 of the entry's canonical encoding.
    pub hash: Vec<u8>,
    /// 64 bytes: ed25519 over `hash` with the gateway key.
    pub signature: Vec<u8>,
}

/// Whether a Kafka value is an AuditEvent (`icu.audit`), without parsing the whole resource.
pub fn is_audit_event(value: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(rename = "resourceType")]
        resource_type: Option<String>,
    }
    serde_json::from_slice::<Kind>(value)
        .ok()
        .and_then(|k| k.resource_type)
        .is_some_and(|t| t == "AuditEvent")
}

/// Reads the chain entity (`urn:icu-gateway:<gateway>:audit`) of an AuditEvent written by
/// [`audit_event`]: seq, key id, prev-hash, hash and signature.
pub fn audit_entry_of(value: &[u8]) -> Result<ParsedAuditEntry, BridgeError> {
    let bad = |reason: String| BridgeError::FhirParse { reason };
    let v: Value = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
    if v["resourceType"] != "AuditEvent" {
        return Err(bad(format!(
            "not an AuditEvent: resourceType {}",
            v["resourceType"]
        )));
    }
    let chain = v["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| {
            e["what"]["identifier"]["system"]
                .as_str()
                .is_some_and(|s| s.starts_with("urn:icu-gateway:") && s.ends_with(":audit"))
        })
        .ok_or_else(|| bad("AuditEvent has no audit-trail entity".into()))?;
    let detail = |kind: &str| {
        chain["detail"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["type"] == kind)
    };
    let string = |kind: &str| -> Result<String, BridgeError> {
        detail(kind)
            .and_then(|d| d["valueString"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| bad(format!("audit entity has no {kind}")))
    };
    let bytes = |kind: &str, len: usize| -> Result<Vec<u8>, BridgeError> {
        let text = detail(kind)
            .and_then(|d| d["valueBase64Binary"].as_str())
            .ok_or_else(|| bad(format!("audit entity has no {kind}")))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| bad(format!("{kind} is not base64: {e}")))?;
        if raw.len() != len {
            return Err(bad(format!("{kind} is {} bytes, not {len}", raw.len())));
        }
        Ok(raw)
    };
    let seq = string("seq")?
        .parse::<u64>()
        .map_err(|e| bad(format!("seq: {e}")))?;
    let action = v["subtype"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["system"] == AUDIT_ACTION_SYSTEM)
        .and_then(|c| c["code"].as_str())
        .unwrap_or_default()
        .to_owned();
    let account = v["agent"][0]["who"]["identifier"]["system"]
        .as_str()
        .filter(|s| s.ends_with(":account"))
        .and_then(|_| v["agent"][0]["who"]["identifier"]["value"].as_str())
        .unwrap_or_default()
        .to_owned();
    Ok(ParsedAuditEntry {
        seq,
        action,
        account,
        key_id: string("key-id")?,
        prev_hash: bytes("prev-hash", 32)?,
        hash: bytes("hash", 32)?,
        signature: bytes("signature", 64)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            seq: 42,
            time_us: 1_700_000_000_123_456,
            clock_synced: true,
            account: "nurse.jo".into(),
            role: "nurse".into(),
            source: "10.0.0.7:51234".into(),
            action: action.into(),
            target_kind: "alarm".into(),
            target_id: "spo2-01:low".into(),
            bed: Some("bed-01".into()),
            old_value: Some("active".into()),
            new_value: Some("acknowledged".into()),
            outcome: "success".into(),
            reason: None,
            prev_hash: vec![0x11; 32],
            hash: vec![0x22; 32],
            key_id: "0123456789abcdef".into(),
            signature: vec![0x33; 64],
        }
    }

    fn parse(bytes: &[u8]) -> Value {
        // Valid FHIR as far as the fhir-sdk R4B model goes: it reads back into an AuditEvent.
        let _: AuditEvent = serde_json::from_slice(bytes).expect("reads back as an AuditEvent");
        serde_json::from_slice(bytes).unwrap()
    }

    fn detail<'a>(entity: &'a Value, kind: &str) -> Option<&'a Value> {
        entity["detail"]
            .as_array()?
            .iter()
            .find(|d| d["type"] == kind)
    }

    #[test]
    fn acknowledge_maps_to_a_rest_update_by_the_nurse_with_the_chain() {
        let bytes = audit_event(
            &FhirContext::with_default_base("icu-a"),
            &entry("acknowledge"),
        )
        .unwrap();
        assert_eq!(
            bytes,
            audit_event(
                &FhirContext::with_default_base("icu-a"),
                &entry("acknowledge")
            )
            .unwrap(),
            "deterministic"
        );
        let v = parse(&bytes);
        assert_eq!(v["resourceType"], "AuditEvent");
        assert_eq!(v["id"], "audit-icu-a-42");
        assert_eq!(v["type"]["system"], AUDIT_EVENT_TYPE_SYSTEM);
        assert_eq!(v["type"]["code"], "rest");
        assert_eq!(v["subtype"][0]["code"], "update");
        assert_eq!(v["subtype"][1]["system"], AUDIT_ACTION_SYSTEM);
        assert_eq!(v["subtype"][1]["code"], "acknowledge");
        assert_eq!(v["action"], "U");
        assert_eq!(v["outcome"], "0");
        assert!(v.get("outcomeDesc").is_none());
        assert!(v["recorded"]
            .as_str()
            .unwrap()
            .starts_with("2023-11-14T22:13:20.123456"));

        let agent = &v["agent"][0];
        assert_eq!(agent["who"]["identifier"]["value"], "nurse.jo");
        assert_eq!(
            agent["who"]["identifier"]["system"],
            "urn:icu-gateway:icu-a:account"
        );
        assert_eq!(agent["role"][0]["coding"][0]["code"], "nurse");
        assert_eq!(agent["requestor"], true);
        assert_eq!(agent["network"]["address"], "10.0.0.7:51234");
        assert_eq!(agent["network"]["type"], "2");
        assert_eq!(v["source"]["observer"]["identifier"]["value"], "icu-a");
        assert_eq!(v["source"]["site"], "icu-a");

        let target = &v["entity"][0];
        assert_eq!(
            target["what"]["identifier"]["system"],
            "urn:icu-gateway:icu-a:alarm"
        );
        assert_eq!(target["what"]["identifier"]["value"], "spo2-01:low");
        assert_eq!(detail(target, "bed").unwrap()["valueString"], "bed-01");
        assert_eq!(
            detail(target, "old-value").unwrap()["valueString"],
            "active"
        );
        assert_eq!(
            detail(target, "new-value").unwrap()["valueString"],
            "acknowledged"
        );

        let chain = &v["entity"][1];
        assert_eq!(chain["what"]["identifier"]["value"], "42");
        assert_eq!(detail(chain, "seq").unwrap()["valueString"], "42");
        assert_eq!(
            detail(chain, "time-us").unwrap()["valueString"],
            "1700000000123456"
        );
        assert_eq!(
            detail(chain, "clock-synced").unwrap()["valueString"],
            "true"
        );
        assert_eq!(
            detail(chain, "key-id").unwrap()["valueString"],
            "0123456789abcdef"
        );
        let b64 = |d: &Value| {
            base64::engine::general_purpose::STANDARD
                .decode(d["valueBase64Binary"].as_str().unwrap())
                .unwrap()
        };
        assert_eq!(b64(detail(chain, "prev-hash").unwrap()), vec![0x11; 32]);
        assert_eq!(b64(detail(chain, "hash").unwrap()), vec![0x22; 32]);
        assert_eq!(b64(detail(chain, "signature").unwrap()), vec![0x33; 64]);
    }

    #[test]
    fn every_action_maps_to_valid_fhir_with_its_type_and_action_code() {
        let cases = [
            ("login", "110114", Some("110122"), "E"),
            ("login_failed", "110114", Some("110122"), "E"),
            ("logoff", "110114", Some("110123"), "E"),
            ("break_glass", "110113", Some("110127"), "E"),
            ("acknowledge", "rest", Some("update"), "U"),
            ("silence", "rest", Some("update"), "U"),
            ("limit_change", "rest", Some("update"), "U"),
            ("user_add", "110113", Some("110137"), "C"),
            ("user_passwd", "110113", Some("110137"), "U"),
            ("user_disable", "110113", Some("110137"), "U"),
            ("token_add", "110113", Some("110137"), "C"),
            ("token_revoke", "110113", Some("110137"), "D"),
            ("gateway_start", "110100", Some("110120"), "E"),
            ("gateway_stop", "110100", Some("110121"), "E"),
            ("key_created", "110113", Some("110129"), "C"),
            ("key_rotated", "110113", Some("110129"), "U"),
            ("adt_applied", "110110", Some("update"), "U"),
            ("patient_read", "110110", Some("read"), "R"),
            ("store_failure", "110100", None, "E"),
            ("budget_refusal", "110100", None, "E"),
            ("something_new", "110100", None, "E"),
        ];
        for (action, kind, subtype, code) in cases {
            let v = parse(
                &audit_event(&FhirContext::with_default_base("icu-a"), &entry(action)).unwrap(),
            );
            assert_eq!(v["type"]["code"], kind, "{action}");
            let subtypes = v["subtype"].as_array().unwrap();
            match subtype {
                Some(s) => assert_eq!(subtypes[0]["code"], s, "{action}"),
                None => assert_eq!(subtypes.len(), 1, "{action}"),
            }
            assert_eq!(subtypes.last().unwrap()["code"], action);
            assert_eq!(v["action"], code, "{action}");
            for required in ["type", "recorded", "agent", "source"] {
                assert!(v.get(required).is_some(), "{action}: {required}");
            }
        }
        let v = parse(
            &audit_event(
                &FhirContext::with_default_base("icu-a"),
                &entry("break_glass"),
            )
            .unwrap(),
        );
        assert_eq!(v["purposeOfEvent"][0]["coding"][0]["code"], "BTG");

        // The read-back is a real check: a code outside the value set or a missing required
        // element is refused.
        let mut wrong = v.clone();
        wrong["action"] = json!("X");
        assert!(serde_json::from_value::<AuditEvent>(wrong).is_err());
        let mut wrong = v.clone();
        wrong.as_object_mut().unwrap().remove("recorded");
        assert!(serde_json::from_value::<AuditEvent>(wrong).is_err());
    }

    #[test]
    fn refusals_system_entries_and_patient_reads() {
        let denied = AuditEntry {
            outcome: "denied".into(),
            reason: Some("silence longer than 120 s".into()),
            ..entry("silence")
        };
        let v = parse(&audit_event(&FhirContext::with_default_base("icu-a"), &denied).unwrap());
        assert_eq!(v["outcome"], "4");
        assert_eq!(v["outcomeDesc"], "silence longer than 120 s");
        let failed = AuditEntry {
            outcome: "failed".into(),
            ..entry("store_failure")
        };
        let v = parse(&audit_event(&FhirContext::with_default_base("icu-a"), &failed).unwrap());
        assert_eq!(
            (v["outcome"].as_str(), v["outcomeDesc"].as_str()),
            (Some("8"), Some("failed"))
        );

        // The gateway's own entry: the gateway is the agent, and no target entity.
        let start = AuditEntry {
            account: String::new(),
            role: String::new(),
            source: String::new(),
            target_kind: "none".into(),
            target_id: String::new(),
            bed: None,
            old_value: None,
            new_value: Some("sha256:abc".into()),
            ..entry("gateway_start")
        };
        let v = parse(&audit_event(&FhirContext::with_default_base("icu-a"), &start).unwrap());
        let agent = &v["agent"][0];
        assert_eq!(agent["who"]["identifier"]["value"], "icu-a");
        assert_eq!(agent["requestor"], false);
        assert!(agent.get("network").is_none() && agent.get("role").is_none());
        let entities = v["entity"].as_array().unwrap();
        assert_eq!(entities.len(), 1, "only the chain");
        assert_eq!(
            detail(&entities[0], "new-value").unwrap()["valueString"],
            "sha256:abc"
        );

        let read = AuditEntry {
            target_kind: "patient".into(),
            target_id: "P1".into(),
            new_value: Some("/api/beds".into()),
            ..entry("patient_read")
        };
        let v = parse(&audit_event(&FhirContext::with_default_base("icu-a"), &read).unwrap());
        assert_eq!(v["entity"][0]["what"]["reference"], "Patient/P1");
        assert_eq!(v["entity"][0]["role"]["code"], "1");
        assert_eq!(v["action"], "R");

        let bad_time = AuditEntry {
            time_us: i64::MAX,
            ..entry("login")
        };
        let err = audit_event(&FhirContext::with_default_base("icu-a"), &bad_time)
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of range"), "{err}");
    }

    #[test]
    fn the_chain_entity_reads_back() {
        let bytes = audit_event(
            &FhirContext::with_default_base("icu-a"),
            &entry("acknowledge"),
        )
        .unwrap();
        assert!(is_audit_event(&bytes));
        assert!(!is_audit_event(br#"{"resourceType":"Bundle"}"#));
        let parsed = audit_entry_of(&bytes).unwrap();
        assert_eq!(
            parsed,
            ParsedAuditEntry {
                seq: 42,
                action: "acknowledge".into(),
                account: "nurse.jo".into(),
                key_id: "0123456789abcdef".into(),
                prev_hash: vec![0x11; 32],
                hash: vec![0x22; 32],
                signature: vec![0x33; 64],
            }
        );
        assert!(audit_entry_of(br#"{"resourceType":"Bundle"}"#).is_err());
    }
}
