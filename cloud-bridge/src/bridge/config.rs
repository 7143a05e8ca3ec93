//! The bridge's settings: the runtime form ([`BridgeConfig`]) with its defaults and its one set
//! of rules ([`BridgeConfig::problems`]), and the `[kafka]` section of the gateway's config file
//! as written ([`KafkaSettings`]: the same fields under the file's names, `_ms` integers for
//! durations, its defaults taken from [`BridgeConfig::default`]), converted here.

use std::collections::BTreeMap;
use std::time::Duration;

use super::security::{properties_problems, KafkaSecurity};
use serde::Deserialize;

use crate::error::BridgeError;
use icu_outbox::Stream;

/// Compression codecs librdkafka accepts for `compression.type`.
const COMPRESSIONS: &[&str] = &["none", "gzip", "snappy", "lz4", "zstd"];
/// Signature schemes (`[kafka] signature`): `envelope` (the record's key, the headers that matter
/// and the SHA-256 of its value; header `icu-signature-alg: ed25519-envelope-v1`) or `value`
/// (ed25519 over the value bytes alone, `ed25519`: the older scheme, for consumers not yet
/// updated).
pub const SIGNATURES: &[&str] = &["envelope", "value"];
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
    /// Topic for the waveform segments, one FHIR Observation with `valueSampledData` per
    /// segment, bundled per device (default `icu.waveforms`). It must exist.
    pub topic_waveforms: String,
    /// Topic for the devices' FHIR Device and DeviceMetric resources (default `icu.devices`),
    /// sent when a device or one of its metrics first appears and when it changes. It must exist.
    pub topic_devices: String,
    /// Optional protobuf topic of the observations (`icu.v1.ObservationBatch` values keyed by
    /// `icu.v1.StreamKey`, governed by the broker's schema registry); `None`: not sent. When
    /// set, it must exist.
    pub topic_observations_pb: Option<String>,
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
    /// Most timeline one `icu.waveforms` record covers, ms (default 5000): a device's
    /// consecutive segments from the start of the first to the end of the last.
    pub waveform_bundle_ms: u64,
    /// Most waveform segments per `icu.waveforms` record (default 64).
    pub max_waveform_segments: usize,
    /// How long librdkafka keeps trying to deliver one record (default 30000 ms).
    pub message_timeout_ms: u64,
    /// Idle wait between cycles when there is nothing to send (default 200 ms).
    pub poll_interval: Duration,
    /// Upper bound of the retry backoff after a failure (default 10 s).
    pub max_backoff: Duration,
    /// `compression.type`: none, gzip, snappy, lz4 (default) or zstd.
    pub compression: String,
    /// What a record's signature covers: `envelope` (default) or `value` ([`SIGNATURES`]).
    pub signature: String,
    /// Canonical base of the gateway's FHIR extensions and code systems (`[kafka] fhir_base`,
    /// default [`crate::fhir::DEFAULT_FHIR_BASE`]): extension `x` is
    /// `<base>/StructureDefinition/x`.
    pub fhir_base: String,
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
            topic_waveforms: "icu.waveforms".into(),
            fetch_limit: 5000,
            live_window: Duration::from_secs(10),
            backlog_rate: 100_000,
            max_per_bundle: 100,
            waveform_bundle_ms: 5000,
            max_waveform_segments: 64,
            message_timeout_ms: 30_000,
            poll_interval: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            compression: "lz4".into(),
            signature: "envelope".into(),
            topic_observations_pb: None,
            topic_devices: "icu.devices".into(),
            fhir_base: crate::fhir::DEFAULT_FHIR_BASE.into(),
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
            Stream::Waveforms => &self.topic_waveforms,
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
            ("topic_waveforms", &self.topic_waveforms),
            ("topic_devices", &self.topic_devices),
        ] {
            if topic.trim().is_empty() {
                bad(field, "must not be empty");
            }
        }
        if let Some(pb) = &self.topic_observations_pb {
            if pb.trim().is_empty() {
                bad(
                    "topic_observations_pb",
                    "must not be empty (leave it out to send no protobuf)",
                );
            } else if Stream::ALL.iter().any(|s| self.topic(*s) == pb) {
                bad(
                    "topic_observations_pb",
                    "must differ from the FHIR and dead-letter topics",
                );
            }
        }
        if !(1..=100_000).contains(&self.fetch_limit) {
            bad("fetch_limit", "must be within 1..=100000");
        }
        if !(1..=10_000).contains(&self.max_per_bundle) {
            bad("max_per_bundle", "must be within 1..=10000");
        }
        if !(100..=60_000).contains(&self.waveform_bundle_ms) {
            bad("waveform_bundle_ms", "must be within 100..=60000");
        }
        if !(1..=1000).contains(&self.max_waveform_segments) {
            bad("max_waveform_segments", "must be within 1..=1000");
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
        if !SIGNATURES.contains(&self.signature.as_str()) {
            out.push((
                "signature",
                format!(
                    "unknown scheme {:?}; use envelope (signs the key, the headers and the value) \
                     or value (the value alone, for consumers that still verify that way)",
                    self.signature
                ),
            ));
        }
        if !valid_canonical_base(&self.fhir_base) {
            out.push((
                "fhir_base",
                format!(
                    "{:?} is no canonical base: use an absolute http(s) url without spaces, \
                     quotes, '?' or '#', e.g. {}",
                    self.fhir_base,
                    crate::fhir::DEFAULT_FHIR_BASE
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

/// The `[kafka]` section of the gateway's config file, as written (see
/// `gateway/gateway.example.toml`); [`KafkaSettings::bridge_config`] makes the bridge's
/// [`BridgeConfig`] and [`KafkaSettings::problems`] checks it by that type's rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub bootstrap: String,
    /// Topic for FHIR Bundles of Observations.
    #[serde(default = "defaults::topic_observations")]
    pub topic_observations: String,
    /// Topic for alarm state changes (one FHIR Observation each, PCD-04 attributes).
    #[serde(default = "defaults::topic_alarms")]
    pub topic_alarms: String,
    /// Topic for ADT events (FHIR Patient + Encounter).
    #[serde(default = "defaults::topic_adt")]
    pub topic_adt: String,
    /// Topic for rejected input (JSON: what, from where, at which offset, why).
    #[serde(default = "defaults::topic_deadletter")]
    pub topic_deadletter: String,
    /// Topic for the audit trail (one FHIR AuditEvent per entry, keyed by the gateway id).
    #[serde(default = "defaults::topic_audit")]
    pub topic_audit: String,
    /// Topic for the waveform segments (FHIR Observations with `valueSampledData`, bundled per
    /// device).
    #[serde(default = "defaults::topic_waveforms")]
    pub topic_waveforms: String,
    /// Topic for the FHIR Device and DeviceMetric resources of the devices (PoCD), sent when a
    /// device or one of its metrics first appears and when it changes.
    #[serde(default = "defaults::topic_devices")]
    pub topic_devices: String,
    /// Also send each observation bundle as protobuf (`icu.v1.ObservationBatch`, key
    /// `icu.v1.StreamKey`) to this topic, e.g. `icu.observations.pb`, for stream jobs that do
    /// not want FHIR; its schema for the broker's registry is
    /// `protos/schemas/icu.observations.pb.proto`. Not set: not sent.
    #[serde(default)]
    pub topic_observations_pb: Option<String>,
    /// How long the producer keeps trying one record before reporting it failed (it is then
    /// sent again from the store, never dropped).
    #[serde(default = "defaults::message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Most observations per Kafka record (one FHIR Bundle).
    #[serde(default = "defaults::max_per_bundle")]
    pub max_per_bundle: usize,
    /// Most timeline of curves one `icu.waveforms` record (one FHIR Bundle) covers, in ms
    /// (default 5000, 100..=60000): a device's consecutive waveform segments from the start of
    /// the first to the end of the last. A single longer segment goes alone.
    #[serde(default = "defaults::waveform_bundle_ms")]
    pub waveform_bundle_ms: u64,
    /// Most waveform segments (one Observation each) per `icu.waveforms` record (default 64,
    /// 1..=1000).
    #[serde(default = "defaults::max_waveform_segments")]
    pub max_waveform_segments: usize,
    /// Producer compression: none, gzip, snappy, lz4 or zstd.
    #[serde(default = "defaults::compression")]
    pub compression: String,
    /// What each record's signature covers: `envelope` (default: the record key, the headers a
    /// consumer accounts by and the value's SHA-256) or `value` (the value bytes alone, header
    /// `icu-signature-alg: ed25519`), for consumers that still verify the older way.
    #[serde(default = "defaults::signature")]
    pub signature: String,
    /// Canonical base url of the gateway's FHIR extensions and code systems (default
    /// `http://icu-gateway.org/fhir`); their StructureDefinitions are published in
    /// `cloud-bridge/fhir/`. A site that republishes them under its own url sets it here.
    #[serde(default = "defaults::fhir_base")]
    pub fhir_base: String,
    /// Most outbox records the bridge reads and forwards per cycle (default 5000, 1..=100000).
    /// A new alarm waits behind at most two such cycles (the one being delivered and the one
    /// prepared meanwhile).
    #[serde(default = "defaults::fetch_limit")]
    pub fetch_limit: usize,
    /// A device whose oldest unforwarded reading is younger than this is "live" and forwarded in
    /// full every cycle; older means "backlog" (default 10000 ms, 1000..=3600000).
    #[serde(default = "defaults::live_window_ms")]
    pub live_window_ms: u64,
    /// Backlog observations forwarded per second at most, all backlog devices together, shared
    /// fairly (default 100000, at least 1). Alarms, ADT events and live devices are never
    /// throttled. Must exceed the ingest rate for a backlog to catch up.
    #[serde(default = "defaults::backlog_rate")]
    pub backlog_rate: u64,
    /// `[kafka.security]`: TLS and SASL towards the brokers (default plain text).
    #[serde(default)]
    pub security: KafkaSecurity,
    /// `[kafka.properties]`: other librdkafka properties, passed through as they are.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// The bridge's settings for gateway `gateway_id` (the fields the file does not set, such
    /// as the poll interval, keep [`BridgeConfig::default`]).
    pub fn bridge_config(&self, gateway_id: &str) -> BridgeConfig {
        BridgeConfig {
            gateway_id: gateway_id.to_owned(),
            brokers: self.bootstrap.clone(),
            topic_observations: self.topic_observations.clone(),
            topic_alarms: self.topic_alarms.clone(),
            topic_adt: self.topic_adt.clone(),
            topic_deadletter: self.topic_deadletter.clone(),
            topic_audit: self.topic_audit.clone(),
            topic_waveforms: self.topic_waveforms.clone(),
            fetch_limit: self.fetch_limit,
            live_window: Duration::from_millis(self.live_window_ms),
            backlog_rate: self.backlog_rate,
            max_per_bundle: self.max_per_bundle,
            waveform_bundle_ms: self.waveform_bundle_ms,
            max_waveform_segments: self.max_waveform_segments,
            message_timeout_ms: self.message_timeout_ms,
            security: self.security.clone(),
            properties: self.properties.clone(),
            compression: self.compression.clone(),
            signature: self.signature.clone(),
            fhir_base: self.fhir_base.clone(),
            topic_observations_pb: self.topic_observations_pb.clone(),
            topic_devices: self.topic_devices.clone(),
            ..BridgeConfig::default()
        }
    }

    /// The problems [`BridgeConfig::problems`] finds in [`Self::bridge_config`], under the
    /// file's field names (`bootstrap`, `live_window_ms`, ...; without the `kafka.` prefix).
    /// The gateway id is not this section's: its problem is left to the top level.
    pub fn problems(&self, gateway_id: &str) -> Vec<(&'static str, String)> {
        self.bridge_config(gateway_id)
            .problems()
            .into_iter()
            .filter(|(field, _)| *field != "gateway_id")
            .map(|(field, reason)| {
                let field = match field {
                    "brokers" => "bootstrap",
                    "live_window" => "live_window_ms",
                    other => other,
                };
                (field, reason)
            })
            .collect()
    }
}

/// The file's defaults: [`BridgeConfig::default`]'s values.
mod defaults {
    use super::BridgeConfig;

    pub fn topic_observations() -> String {
        BridgeConfig::default().topic_observations
    }
    pub fn topic_alarms() -> String {
        BridgeConfig::default().topic_alarms
    }
    pub fn topic_adt() -> String {
        BridgeConfig::default().topic_adt
    }
    pub fn topic_audit() -> String {
        BridgeConfig::default().topic_audit
    }
    pub fn topic_waveforms() -> String {
        BridgeConfig::default().topic_waveforms
    }

    pub fn topic_deadletter() -> String {
        BridgeConfig::default().topic_deadletter
    }
    pub fn message_timeout_ms() -> u64 {
        BridgeConfig::default().message_timeout_ms
    }
    pub fn max_per_bundle() -> usize {
        BridgeConfig::default().max_per_bundle
    }
    pub fn waveform_bundle_ms() -> u64 {
        BridgeConfig::default().waveform_bundle_ms
    }
    pub fn max_waveform_segments() -> usize {
        BridgeConfig::default().max_waveform_segments
    }
    pub fn compression() -> String {
        BridgeConfig::default().compression
    }
    pub fn signature() -> String {
        BridgeConfig::default().signature
    }
    pub fn topic_devices() -> String {
        BridgeConfig::default().topic_devices
    }
    pub fn fhir_base() -> String {
        BridgeConfig::default().fhir_base
    }
    pub fn fetch_limit() -> usize {
        BridgeConfig::default().fetch_limit
    }
    pub fn live_window_ms() -> u64 {
        BridgeConfig::default().live_window.as_millis() as u64
    }
    pub fn backlog_rate() -> u64 {
        BridgeConfig::default().backlog_rate
    }
}

/// An absolute http(s) url that can prefix `/StructureDefinition/<name>`: no whitespace,
/// quotes, backslash, query or fragment.
fn valid_canonical_base(base: &str) -> bool {
    let rest = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"));
    rest.is_some_and(|rest| {
        !rest.is_empty()
            && !rest.starts_with('/')
            && rest
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '?' | '#' | '<' | '>'))
    })
}
