//! The bridge's settings ([`BridgeConfig`]) with their defaults and validation.

use std::time::Duration;

use crate::error::BridgeError;
use crate::outbox::Stream;

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
            fetch_limit: 5000,
            live_window: Duration::from_secs(10),
            backlog_rate: 100_000,
            max_per_bundle: 100,
            message_timeout_ms: 30_000,
            poll_interval: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            compression: "lz4".into(),
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
        }
    }

    /// Checks every field; reports the first problem with its field name.
    pub fn validate(&self) -> Result<(), BridgeError> {
        let bad = |field, reason: &str| {
            Err(BridgeError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.gateway_id.trim().is_empty() {
            return bad("gateway_id", "must not be empty");
        }
        if self.brokers.trim().is_empty() {
            return bad("brokers", "must list at least one host:port");
        }
        if self.topic_observations.trim().is_empty() {
            return bad("topic_observations", "must not be empty");
        }
        if self.topic_alarms.trim().is_empty() {
            return bad("topic_alarms", "must not be empty");
        }
        if self.topic_adt.trim().is_empty() {
            return bad("topic_adt", "must not be empty");
        }
        if self.topic_deadletter.trim().is_empty() {
            return bad("topic_deadletter", "must not be empty");
        }
        if self.fetch_limit == 0 {
            return bad("fetch_limit", "must be at least 1");
        }
        if self.max_per_bundle == 0 {
            return bad("max_per_bundle", "must be at least 1");
        }
        if self.live_window.is_zero() {
            return bad("live_window", "must be greater than zero");
        }
        if self.backlog_rate == 0 {
            return bad("backlog_rate", "must be at least 1 observation per second");
        }
        if self.message_timeout_ms == 0 || self.message_timeout_ms > i32::MAX as u64 {
            return bad("message_timeout_ms", "must be between 1 and 2147483647");
        }
        if self.poll_interval.is_zero() {
            return bad("poll_interval", "must be greater than zero");
        }
        if self.max_backoff.is_zero() {
            return bad("max_backoff", "must be greater than zero");
        }
        if !COMPRESSIONS.contains(&self.compression.as_str()) {
            return Err(BridgeError::Config {
                field: "compression",
                reason: format!(
                    "unknown codec {:?}; use one of {}",
                    self.compression,
                    COMPRESSIONS.join(", ")
                ),
            });
        }
        Ok(())
    }

    pub(super) fn metadata_timeout(&self) -> Duration {
        Duration::from_millis(self.message_timeout_ms)
            .clamp(Duration::from_secs(1), MAX_METADATA_TIMEOUT)
    }
}
