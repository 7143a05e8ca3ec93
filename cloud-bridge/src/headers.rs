//! Kafka record header names.
//!
//! Owns: the names (and fixed values) of the headers on every record the bridge produces.
//! Guarantees: all header values are UTF-8 strings; [`SIGNATURE`] is the standard base64 of the
//! 64-byte ed25519 signature over what [`SIGNATURE_ALG`] names: the record's envelope (its key,
//! the headers that matter and the SHA-256 of its value; `crate::signing::envelope`) by default,
//! or the exact value bytes (the older scheme, `[kafka] signature = "value"`), so a consumer
//! verifies a record with the record as received and the gateway's public key alone.
//! `(GATEWAY_ID, DEVICE_ID, SEQ_FIRST..=SEQ_LAST)` is the dedup key downstream.

/// Standard base64 of the 64-byte ed25519 signature (over what [`SIGNATURE_ALG`] names).
pub const SIGNATURE: &str = "icu-signature";
/// Signature scheme: [`SIGNATURE_ALG_ENVELOPE_V1`] or [`SIGNATURE_ALG_ED25519`].
pub const SIGNATURE_ALG: &str = "icu-signature-alg";
/// Key id of the signing key (see `signing::key_id_of`).
pub const KEY_ID: &str = "icu-key-id";
/// Gateway id from config.
pub const GATEWAY_ID: &str = "icu-gateway-id";
/// Device id from config.
pub const DEVICE_ID: &str = "icu-device-id";
/// First per-device seq in the record (decimal).
pub const SEQ_FIRST: &str = "icu-seq-first";
/// Last per-device seq in the record (decimal, inclusive).
pub const SEQ_LAST: &str = "icu-seq-last";
/// Media type of the value; [`CONTENT_TYPE_FHIR_JSON`] for FHIR records, [`CONTENT_TYPE_JSON`]
/// for dead letters.
pub const CONTENT_TYPE: &str = "content-type";
/// Bed the device is assigned to.
pub const BED: &str = "icu-bed";
/// The census patient the record belongs to (also the record key); absent when unassociated.
pub const PATIENT_ID: &str = "icu-patient-id";

/// The stream the record belongs to (`observations`, `alarms`, `adt`, `audit`, `deadletter`).
pub const STREAM: &str = "icu-stream";

/// The version of the value's schema: what a consumer parses the value as. For the FHIR
/// streams [`SCHEMA_FHIR_V2`], for dead letters [`SCHEMA_DEADLETTER_V1`]. A change a consumer
/// must notice (a field renamed, a meaning changed) gets a new version; adding an optional
/// element does not.
pub const SCHEMA_VERSION: &str = "icu-schema-version";
/// FHIR R4 JSON as this gateway version writes it: ids scoped by gateway, PoCD and vital-signs
/// profiles, canonical extension urls (version 1 was the `urn:icu-gateway:ext:` form).
pub const SCHEMA_FHIR_V2: &str = "fhir-r4/icu-gateway-2";
/// The dead-letter JSON document.
pub const SCHEMA_DEADLETTER_V1: &str = "icu-deadletter-1";
/// A protobuf topic's value: `icu.v1.ObservationBatch` (`protos/proto/icu/v1/icu.proto`).
pub const SCHEMA_OBSERVATION_BATCH_V1: &str = "icu.v1.ObservationBatch";
/// `content-type` of a protobuf topic's records.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";

/// CloudEvents Kafka protocol binding (binary content mode; `content-type` is the event's
/// `datacontenttype`), so generic tools can route the records: spec version, always
/// [`CE_SPECVERSION_1_0`].
pub const CE_SPECVERSION: &str = "ce_specversion";
/// The event id: `<gateway>:<stream>:<device>:<first seq>-<last seq>`, the same for a re-send.
pub const CE_ID: &str = "ce_id";
/// The event source: `urn:icu-gateway:<gateway>:<device>`.
pub const CE_SOURCE: &str = "ce_source";
/// The event type: `org.icu-gateway.<stream>.v1`.
pub const CE_TYPE: &str = "ce_type";
/// The time of the first record the event carries (receive time of an observation or a dead
/// letter, event time of an alarm state change or ADT event, time of an audit entry), RFC 3339
/// in UTC; absent when the record has none.
pub const CE_TIME: &str = "ce_time";
/// Value of [`CE_SPECVERSION`].
pub const CE_SPECVERSION_1_0: &str = "1.0";

/// Value of [`SIGNATURE_ALG`]: ed25519 over the exact value bytes.
pub const SIGNATURE_ALG_ED25519: &str = "ed25519";
/// Value of [`SIGNATURE_ALG`]: ed25519 over the record's envelope (`crate::signing::envelope`).
pub const SIGNATURE_ALG_ENVELOPE_V1: &str = "ed25519-envelope-v1";
/// Value of [`CONTENT_TYPE`] for FHIR JSON.
pub const CONTENT_TYPE_FHIR_JSON: &str = "application/fhir+json";
/// Value of [`CONTENT_TYPE`] for plain JSON (dead letters, `icu.deadletter`).
pub const CONTENT_TYPE_JSON: &str = "application/json";
