//! Creating the gateway's topics on the backbone (`icu-gateway topics create`), for a central
//! team that wants the gateway to provision them (the bridge itself never creates a topic: it
//! produces with `allow.auto.create.topics = false` and reports `topic_missing`).
//!
//! Owns: [`TopicSpec`] (partitions, replication, retention), the settings every topic gets
//! ([`TopicSpec::settings`]) and [`create_topics`].
//! Guarantees: one CreateTopics request over the bridge's own connection settings (`[kafka]`
//! bootstrap and `[kafka.security]`: TLS, SASL); a topic that exists already is left exactly as it
//! is and reported so, never altered or deleted; every topic of the config is answered for.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;

use super::config::BridgeConfig;
use super::security;
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
}

/// What happened to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    /// It was there already; left as it is.
    Exists,
    Failed(String),
}

/// Creates every topic of `config` (observations, alarms, ADT, audit, dead letters) with `spec`;
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
    let mut client = ClientConfig::new();
    for (k, v) in security::client_properties(&config.security, &config.properties)? {
        client.set(k, v);
    }
    client.set("bootstrap.servers", &config.brokers).set(
        "client.id",
        format!("icu-gateway-{}-admin", config.gateway_id),
    );
    let admin: AdminClient<DefaultClientContext> = client
        .create()
        .map_err(|e| kafka_error("create admin client", e))?;
    let names: Vec<String> = Stream::ALL
        .iter()
        .map(|s| config.topic(*s).to_owned())
        .chain([config.topic_devices.clone()])
        .chain(config.topic_observations_pb.clone())
        .collect();
    let settings = spec.settings();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| {
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
}
