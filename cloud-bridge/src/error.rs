//! The one error type of the cloud bridge.
//!
//! Owns: [`BridgeError`], every failure the library reports (keys, FHIR mapping, the outbox,
//! Kafka, configuration).
//! Guarantees: each message names the file, topic, broker or device involved and, where there is
//! one, the action that fixes it, so a biomedical engineer can act on a log line alone.

use std::path::PathBuf;

/// Errors of the cloud bridge.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A key file could not be read or written.
    #[error("cannot {action} key file {path}: {source}")]
    KeyIo {
        /// "read" or "write".
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `GatewayKey::write` never replaces an existing key.
    #[error("refusing to overwrite existing key file {path}: move it away or choose another path")]
    KeyExists { path: PathBuf },
    /// A key file is not the expected PEM document.
    #[error("key file {path} is not a valid {expected} PEM document: {reason}")]
    KeyFormat {
        path: PathBuf,
        /// "PKCS#8 ed25519 private key" or "SPKI ed25519 public key".
        expected: &'static str,
        reason: String,
    },
    /// A key rotation cannot be done as asked (one is already scheduled, a bad time).
    #[error("cannot rotate the signing key {path}: {reason}")]
    KeyRotation { path: PathBuf, reason: String },
    /// An observation could not be mapped to FHIR.
    #[error("cannot map observation seq {seq} of device {device_id} to FHIR: {reason}")]
    FhirMapping {
        device_id: String,
        seq: u64,
        reason: String,
    },
    /// A record value is not a FHIR R4 Bundle we can read.
    #[error("record value is not a readable FHIR R4 Bundle: {reason}")]
    FhirParse { reason: String },
    /// The outbox (the gateway's store) failed: an [`icu_outbox::OutboxError`], same message.
    #[error("outbox {operation} failed: {reason}")]
    Outbox {
        /// "fetch_unsent", "mark_sent" or "mark_sent_many".
        operation: &'static str,
        reason: String,
    },
    /// The Kafka client reported an error.
    #[error("kafka {operation} against brokers {brokers} failed: {source}")]
    Kafka {
        /// What was attempted, e.g. "create producer", "fetch metadata".
        operation: &'static str,
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The topic does not exist (brokers here do not auto-create topics).
    #[error("kafka topic {topic} does not exist on brokers {brokers}: create it (for example `kafka-topics --create --topic {topic}`); records stay in the outbox until it exists")]
    TopicMissing { topic: String, brokers: String },
    /// A configuration value is invalid.
    #[error("invalid bridge config: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// A secret file (SASL password, client private key) cannot be used.
    #[error("kafka secret {path}: {reason}")]
    Secret { path: PathBuf, reason: String },
    /// A local file (for example the `--out` file of the consumer) could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<icu_outbox::OutboxError> for BridgeError {
    fn from(e: icu_outbox::OutboxError) -> Self {
        BridgeError::Outbox {
            operation: e.operation,
            reason: e.reason,
        }
    }
}
