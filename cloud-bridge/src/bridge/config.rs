//! The bridge's settings ([`BridgeConfig`]) with their defaults and validation.

use std::collections::BTreeMap;
use std::time::Duration;

use super::security::{properties_problems, KafkaSecurity};

use crate::error::BridgeError;
use icu_outbox::Stream;

/// Compression codecs librdkafka accepts for `compression.type`.
const COMPRESSIONS: &[&str] = &["none", "gzip", "snappy", "lz4", "zstd"];
/// Longest wait for a metadata answer.
const MAX_METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Settings of the bridge (the gateway builds this from its validated config).
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConfig {
    /// This gateway's id (header `icu-gateway-id`, FHIR identifier systems).
    pub gateway_id: String,
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Topic for observation bundles (default `icu.observations`). It must exist.
    pub topic_observations: String,
    /// Topic for alarm state changes (default `icu.alarms`). It must exist.
    pub topic_alarms: String,
    /// Topic for ADT events as FHIR Patient + Encounter (default `icu.adt`). It must exist.
    pub topic_adt: String,
    /// Topic for dead letters as plain JSON (default `icu.deadletter`). It must exist.
    pub topic_deadletter: String,
    /// Topic for the audit trail, one FHIR AuditEvent per entry, keyed by the gateway id
    /// (default `icu.audit`). It must exist.
    pub topic_audit: String,
    /// Most outbox records read per cycle (default 5000: bigger cycles spread the fixed cost of
    /// a fetch and of the last delivery reports over more records). It also bounds how long a
    /// new alarm can wait behind the cycles already in flight (two).
    pub fetch_limit: usize,
    /// A device whose oldest unsent observation is younger than this is live and forwarded in
    /// full every cycle; older heads are backlog (default 10 s).
    pub live_window: Duration,
    /// Backlog observations forwarded per second at most, all backlog devices together, shared
    /// fairly (default 100000). Must exceed the ingest rate for a backlog to catch up.
    pub backlog_rate: u64,
    /// Most observations per Kafka record (default 100).
    pub max_per_bundle: usize,
    /// How long librdkafka keeps trying to deliver one record (default 30000 ms).
    pub message_timeout_ms: u64,
    /// Idle wait between cycles when there is nothing to send (default 200 ms).
    pub poll_interval: Duration,
    /// Upper bound of the retry backoff after a failure (default 10 s).
    pub max_backoff: Duration,
    /// `compression.type`: none, gzip, snappy, lz4 (default) or zstd.
    pub compression: String,
    /// `[kafka.security]`: TLS and SASL towards the brokers (default plain text).
    pub security: KafkaSecurity,
    /// `[kafka.properties]`: other librdkafka properties, passed through as they are (never one
    /// the bridge or `security` sets, never a secret).
    pub properties: BTreeMap<String, String>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            gateway_id: String::new(),
            brokers: String::new(),
            topic_observations: "icu.observations".into(),
            topic_alarms: "icu.alarms".into(),
            topic_adt: "icu.adt".into(),
            topic_deadletter: "icu.deadletter".into(),
            topic_audit: "icu.audit".into(),
            fetch_limit: 5000,
            live_window: Duration::from_secs(10),
            backlog_rate: 100_000,
            max_per_bundle: 100,
            message_timeout_ms: 30_000,
            poll_interval: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            compression: "lz4".into(),
            security: KafkaSecurity::default(),
            properties: BTreeMap::new(),
        }
    }
}

impl BridgeConfig {
    /// The topic a stream goes to.
    pub fn topic(&self, stream: Stream) -> &str {
        match stream {
            Stream::Observations => &self.topic_observations,
            Stream::Alarms => &self.topic_alarms,
            Stream::Adt => &self.topic_adt,
            Stream::DeadLetters => &self.topic_deadletter,
            Stream::Audit => &self.topic_audit,
        }
    }

    /// Every problem of this config, each with its field name: the one set of rules for these
    /// settings (the gateway's config check reports them under `kafka.*`).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = Vec::new();
        let mut bad = |field, reason: &str| out.push((field, reason.to_owned()));
        if self.gateway_id.trim().is_empty() {
            bad("gateway_id", "must not be empty");
        }
        if self.brokers.trim().is_empty() {
            bad("brokers", "must list at least one host:port");
        }
        for (field, topic) in [
            ("topic_observations", &self.topic_observations),
            ("topic_alarms", &self.topic_alarms),
            ("topic_adt", &self.topic_adt),
            ("topic_deadletter", &self.topic_deadletter),
            ("topic_audit", &self.topic_audit),
        ] {
            if topic.trim().is_empty() {
                bad(field, "must not be empty");
            }
        }
        if !(1..=100_000).contains(&self.fetch_limit) {
            bad("fetch_limit", "must be within 1..=100000");
        }
        if !(1..=10_000).contains(&self.max_per_bundle) {
            bad("max_per_bundle", "must be within 1..=10000");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.live_window) {
            bad(
                "live_window",
                "must be within 1 s..=1 h (1000..=3600000 ms)",
            );
        }
        if self.backlog_rate == 0 {
            bad("backlog_rate", "must be at least 1 observation per second");
        }
        if !(1000..=i32::MAX as u64).contains(&self.message_timeout_ms) {
            bad("message_timeout_ms", "must be between 1000 and 2147483647");
        }
        if self.poll_interval.is_zero() {
            bad("poll_interval", "must be greater than zero");
        }
        if self.max_backoff.is_zero() {
            bad("max_backoff", "must be greater than zero");
        }
        if !COMPRESSIONS.contains(&self.compression.as_str()) {
            out.push((
                "compression",
                format!(
                    "unknown codec {:?}; use one of {}",
                    self.compression,
                    COMPRESSIONS.join(", ")
                ),
            ));
        }
        out.extend(self.security.problems());
        out.extend(properties_problems(&self.properties));
        out
    }

    /// Checks every field; reports the first problem with its field name.
    pub fn validate(&self) -> Result<(), BridgeError> {
        match self.problems().into_iter().next() {
            None => Ok(()),
            Some((field, reason)) => Err(BridgeError::Config { field, reason }),
        }
    }

    pub(super) fn metadata_timeout(&self) -> Duration {
        Duration::from_millis(self.message_timeout_ms)
            .clamp(Duration::from_secs(1), MAX_METADATA_TIMEOUT)
    }
}
