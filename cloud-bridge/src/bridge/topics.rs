//! Creating the gateway's topics on the backbone (`icu-gateway topics create`), for a central
//! team that wants the gateway to provision them (the bridge itself never creates a topic: it
//! produces with `allow.auto.create.topics = false` and reports `topic_missing`).
//!
//! Owns: [`TopicSpec`] (partitions, replication, retention), the settings every topic gets
//! ([`TopicSpec::settings`]), [`create_topics`], and for `icu-gateway check-config --probe`
//! [`describe_topics`] (what the backbone says of each topic) and [`TopicSpec::problems_of`]
//! (what in it differs from what the gateway needs).
//! Guarantees: one CreateTopics request over the bridge's own connection settings (`[kafka]`
//! bootstrap and `[kafka.security]`: TLS, SASL); a topic that exists already is left exactly as it
//! is and reported so, never altered or deleted; every topic of the config is answered for.
//! [`describe_topics`] only reads: one metadata request for every topic (naming none, so no
//! broker auto-creates one) and one DescribeConfigs request; it produces nothing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, Producer};

use super::config::BridgeConfig;
use super::quiet::{FailureSlot, QuietContext};
use super::security::{self, SecurityFailure};
use crate::error::BridgeError;
use icu_outbox::Stream;

/// How the gateway's topics are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Partitions per topic (default 6: records of one key stay in one partition; more
    /// partitions spread many patients over more consumers).
    pub partitions: i32,
    /// Replicas per partition (default 3, the usual production minimum; a single test broker
    /// needs 1).
    pub replication: i32,
    /// How long the backbone keeps records (default 7 days, `retention.ms`).
    pub retention: Duration,
}

impl Default for TopicSpec {
    fn default() -> Self {
        Self {
            partitions: 6,
            replication: 3,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl TopicSpec {
    /// The topic settings: records are deleted after `retention` (never compacted: every record
    /// is a distinct seq range), and with more than one replica a write needs two in sync
    /// (`min.insync.replicas`; the producer uses `acks=all`).
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("cleanup.policy", "delete".to_owned()),
            ("retention.ms", self.retention.as_millis().to_string()),
        ];
        if self.replication > 1 {
            out.push(("min.insync.replicas", "2".to_owned()));
        }
        out
    }

    /// The settings of topic `name` of `config`: [`Self::settings`], and for the waveforms
    /// topic (`icu.waveforms`) log segments of [`WAVEFORM_SEGMENT_BYTES`]. That topic carries
    /// most of the bytes (30 beds of ECG, pleth and pressure are about 50,000 samples/s, some
    /// 20 GB of FHIR JSON a day before compression, against well under 1 GB of numerics): the
    /// broker deletes whole log segments, so with its default 1 GiB segments old curves would
    /// outlive `retention.ms` by up to a segment per partition; smaller segments keep the disk
    /// near retention × rate.
    pub fn settings_for(&self, config: &BridgeConfig, name: &str) -> Vec<(&'static str, String)> {
        let mut out = self.settings();
        if name == config.topic_waveforms {
            out.push(("segment.bytes", WAVEFORM_SEGMENT_BYTES.to_string()));
        }
        out
    }
}

/// `segment.bytes` of the waveforms topic: 256 MiB.
pub const WAVEFORM_SEGMENT_BYTES: u64 = 256 * 1024 * 1024;

/// What happened to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    /// It was there already; left as it is.
    Exists,
    Failed(String),
}

/// Creates every topic of `config` (alarms, ADT, audit, observations, waveforms, dead letters,
/// devices, the optional protobuf topic) with `spec` ([`TopicSpec::settings_for`]);
/// one answer per topic, in drain order. Blocking (waits for the brokers' answer, at most 30 s).
pub fn create_topics(
    config: &BridgeConfig,
    spec: &TopicSpec,
) -> Result<Vec<(String, TopicOutcome)>, BridgeError> {
    let kafka_error = |operation, source| BridgeError::Kafka {
        operation,
        brokers: config.brokers.clone(),
        source,
    };
    let admin: AdminClient<DefaultClientContext> = client_config(config)?
        .create()
        .map_err(|e| kafka_error("create admin client", e))?;
    let names = topic_names(config);
    let settings: Vec<_> = names.iter().map(|n| spec.settings_for(config, n)).collect();
    let topics: Vec<NewTopic> = names
        .iter()
        .zip(&settings)
        .map(|(name, settings)| {
            settings.iter().fold(
                NewTopic::new(
                    name,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication),
                ),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let answers = futures::executor::block_on(admin.create_topics(&topics, &options))
        .map_err(|e| kafka_error("create topics", e))?;
    Ok(names
        .into_iter()
        .map(|name| {
            let outcome = match answers.iter().find(|a| match a {
                Ok(n) | Err((n, _)) => *n == name,
            }) {
                Some(Ok(_)) => TopicOutcome::Created,
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => TopicOutcome::Exists,
                Some(Err((_, code))) => TopicOutcome::Failed(code.to_string()),
                None => TopicOutcome::Failed("no answer from the brokers".into()),
            };
            (name, outcome)
        })
        .collect())
}

/// Every topic the gateway produces to: one per stream (observations, alarms, ADT, audit, dead
/// letters), the devices topic and the optional protobuf topic, in drain order.
pub fn topic_names(config: &BridgeConfig) -> Vec<String> {
    Stream::ALL
        .iter()
        .map(|s| config.topic(*s).to_owned())
        .chain([config.topic_devices.clone()])
        .chain(config.topic_observations_pb.clone())
        .collect()
}

/// The bridge's own connection settings (`[kafka]` bootstrap, `[kafka.security]`,
/// `[kafka.properties]`) for an admin or probing client. Reads the password.
fn client_config(config: &BridgeConfig) -> Result<ClientConfig, BridgeError> {
    let mut client = ClientConfig::new();
    for (k, v) in security::client_properties(&config.security, &config.properties)? {
        client.set(k, v);
    }
    client.set("bootstrap.servers", &config.brokers).set(
        "client.id",
        format!("icu-gateway-{}-admin", config.gateway_id),
    );
    Ok(client)
}

/// What the backbone says of one of the gateway's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicState {
    pub name: String,
    /// Whether the brokers know it (metadata).
    pub exists: bool,
    pub partitions: usize,
    /// Replicas of its first partition.
    pub replicas: usize,
    /// Its settings as DescribeConfigs reported them (empty when the broker reports none).
    pub settings: BTreeMap<String, String>,
}

/// Why the backbone could not be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackboneFailure {
    /// A setting or secret of `[kafka.security]` (the reason names it).
    Config(String),
    /// No broker answered (address, port, firewall, broker down).
    Unreachable(String),
    /// The brokers refused the SASL login, or the TLS handshake failed (what librdkafka said);
    /// `bridge::security_state` words it with the setting to fix.
    Security(SecurityFailure),
}

/// Asks the brokers of `config` about every topic the gateway produces to ([`topic_names`]):
/// whether it exists, its partitions and replicas (one metadata request for all topics, so no
/// broker auto-creates one) and its settings (one DescribeConfigs request). Blocking, each
/// request bounded by `timeout`. Reads only: nothing is created, altered or produced.
pub fn describe_topics(
    config: &BridgeConfig,
    timeout: Duration,
) -> Result<Vec<TopicState>, BackboneFailure> {
    let client = client_config(config).map_err(|e| BackboneFailure::Config(e.to_string()))?;
    let failure = FailureSlot::default();
    // A producer (it produces nothing) for the metadata: its polling thread hands librdkafka's
    // error events (a refused login, a failed handshake) to the context, as in the bridge.
    let probe: FutureProducer<QuietContext> = client
        .create_with_context(QuietContext::with_failure_slot(failure.clone()))
        .map_err(|e| BackboneFailure::Config(e.to_string()))?;
    let started = Instant::now();
    let metadata = probe.client().fetch_metadata(None, timeout).map_err(|e| {
        // The error event may trail the failed request a little.
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            let reported = failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .map(|(_, f)| f);
            match reported {
                Some(f) => return BackboneFailure::Security(f),
                None if Instant::now() >= deadline => {
                    return BackboneFailure::Unreachable(e.to_string())
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })?;
    drop(probe);
    let admin: AdminClient<DefaultClientContext> = client
        .create()
        .map_err(|e| BackboneFailure::Config(e.to_string()))?;
    let names = topic_names(config);
    let mut out: Vec<TopicState> = names
        .iter()
        .map(|name| {
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none());
            TopicState {
                name: name.clone(),
                exists: found.is_some(),
                partitions: found.map_or(0, |t| t.partitions().len()),
                replicas: found
                    .and_then(|t| t.partitions().first())
                    .map_or(0, |p| p.replicas().len()),
                settings: BTreeMap::new(),
            }
        })
        .collect();
    let existing: Vec<ResourceSpecifier<'_>> = out
        .iter()
        .filter(|t| t.exists)
        .map(|t| ResourceSpecifier::Topic(&t.name))
        .collect();
    if existing.is_empty() {
        return Ok(out);
    }
    let left = timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    let options = AdminOptions::new().request_timeout(Some(left));
    // A broker that does not answer DescribeConfigs leaves the settings unknown (empty): the
    // topics' existence is what the metadata said.
    let answers = futures::executor::block_on(admin.describe_configs(&existing, &options))
        .unwrap_or_default();
    let mut described: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for resource in answers.into_iter().flatten() {
        if let rdkafka::admin::OwnedResourceSpecifier::Topic(name) = &resource.specifier {
            let settings = resource
                .entries
                .iter()
                .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
                .collect();
            described.insert(name.clone(), settings);
        }
    }
    drop(existing);
    for t in &mut out {
        if let Some(settings) = described.remove(&t.name) {
            t.settings = settings;
        }
    }
    Ok(out)
}

impl TopicSpec {
    /// What in `topic`'s reported settings differs from what the gateway needs: records deleted
    /// after their retention, never compacted (`cleanup.policy` = `delete`: compaction keeps only
    /// the last record per patient), kept at least `retention` (`retention.ms`; -1 is forever),
    /// and with more than one replica a write needs two in sync (`min.insync.replicas`). A
    /// setting the broker does not report is not judged. Empty: nothing to fix.
    pub fn problems_of(&self, topic: &TopicState) -> Vec<String> {
        let mut out = Vec::new();
        let get = |k: &str| topic.settings.get(k).map(|v| v.trim());
        if let Some(policy) = get("cleanup.policy") {
            if policy != "delete" {
                out.push(format!(
                    "cleanup.policy is {policy:?}, not \"delete\" (compaction keeps only the \
                     last record per patient or device)"
                ));
            }
        }
        if let Some(ms) = get("retention.ms") {
            match ms.parse::<i64>() {
                Ok(ms) if ms < 0 => {}
                Ok(ms) if (ms as u128) < self.retention.as_millis() => out.push(format!(
                    "retention.ms is {ms} ({} h), shorter than the {} h expected",
                    ms / 3_600_000,
                    self.retention.as_secs() / 3600
                )),
                Ok(_) => {}
                Err(_) => out.push(format!("retention.ms is {ms:?}, not a number")),
            }
        }
        if topic.replicas > 1 {
            if let Some(n) = get("min.insync.replicas").and_then(|v| v.parse::<i64>().ok()) {
                if n < 2 {
                    out.push(format!(
                        "min.insync.replicas is {n} with {} replicas: an acknowledged write may \
                         live on one broker only (2 expected)",
                        topic.replicas
                    ));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_delete_after_retention_and_need_two_in_sync_replicas_when_replicated() {
        let spec = TopicSpec::default();
        assert_eq!((spec.partitions, spec.replication), (6, 3));
        assert_eq!(
            spec.settings(),
            [
                ("cleanup.policy", "delete".to_owned()),
                ("retention.ms", "604800000".to_owned()),
                ("min.insync.replicas", "2".to_owned()),
            ]
        );
        let single = TopicSpec {
            replication: 1,
            ..TopicSpec::default()
        };
        assert!(single
            .settings()
            .iter()
            .all(|(k, _)| *k != "min.insync.replicas"));
    }
    #[test]
    fn the_waveforms_topic_gets_smaller_log_segments() {
        let spec = TopicSpec::default();
        let config = BridgeConfig::default();
        assert!(topic_names(&config).contains(&"icu.waveforms".to_owned()));
        let waves = spec.settings_for(&config, "icu.waveforms");
        assert_eq!(waves[..3], spec.settings()[..]);
        assert_eq!(waves[3], ("segment.bytes", "268435456".to_owned()));
        assert_eq!(spec.settings_for(&config, "icu.alarms"), spec.settings());
    }

    #[test]
    fn problems_of_names_compaction_a_short_retention_and_one_in_sync_replica() {
        let spec = TopicSpec::default();
        let topic = |settings: &[(&str, &str)], replicas| TopicState {
            name: "icu.alarms".into(),
            exists: true,
            partitions: 6,
            replicas,
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(
            spec.problems_of(&topic(&[], 3)).is_empty(),
            "nothing reported, nothing judged"
        );
        let good = [
            ("cleanup.policy", "delete"),
            ("retention.ms", "604800000"),
            ("min.insync.replicas", "2"),
        ];
        assert!(spec.problems_of(&topic(&good, 3)).is_empty());
        assert!(spec
            .problems_of(&topic(&[("retention.ms", "-1")], 1))
            .is_empty());
        let bad = spec.problems_of(&topic(
            &[
                ("cleanup.policy", "compact"),
                ("retention.ms", "3600000"),
                ("min.insync.replicas", "1"),
            ],
            3,
        ));
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].contains("cleanup.policy is \"compact\""), "{bad:?}");
        assert!(bad[1].contains("1 h), shorter than the 168 h"), "{bad:?}");
        assert!(bad[2].contains("min.insync.replicas is 1"), "{bad:?}");
        // One replica: min.insync.replicas 1 is all there can be.
        assert!(spec
            .problems_of(&topic(&[("min.insync.replicas", "1")], 1))
            .is_empty());
    }
}
