//! The Kafka backbone: connect with the bridge's own settings (`[kafka]` bootstrap,
//! `[kafka.security]` TLS and SASL, `[kafka.properties]`), then every topic the gateway produces
//! to must exist and have the settings it needs. Reads only: no topic is created, nothing is
//! produced.

use icu_cloud_bridge::bridge::topics::{describe_topics, BackboneFailure, TopicSpec, TopicState};
use icu_cloud_bridge::bridge::{security_state, BridgeConfig, BridgeState};

use super::check::{Check, ProbeOptions};

/// The brokers' line, then one line per topic (blocking; run it off the async threads).
pub fn probe(config: &BridgeConfig, opts: &ProbeOptions) -> Vec<Check> {
    let security = config.security.describe();
    let what = format!("kafka brokers {} ({security})", config.brokers);
    let topics = match describe_topics(config, opts.timeout) {
        Ok(topics) => topics,
        Err(failure) => return vec![failed(config, what, failure, opts)],
    };
    let spec = TopicSpec {
        retention: opts.min_retention,
        ..TopicSpec::default()
    };
    let mut out = vec![Check::ok(what)];
    out.extend(topics.iter().map(|t| topic(config, &spec, t, opts)));
    out
}

fn topic(config: &BridgeConfig, spec: &TopicSpec, t: &TopicState, opts: &ProbeOptions) -> Check {
    let what = format!("kafka topic {}", t.name);
    if !t.exists {
        return Check::fail(
            what,
            format!("does not exist on {}", config.brokers),
            format!(
                "run `icu-gateway topics create --config {}` (or ask the central team to create \
                 it); until then its records stay in the outbox",
                opts.config_path.display()
            ),
        );
    }
    let problems = spec.problems_of(t);
    if !problems.is_empty() {
        return Check::fail(
            what,
            problems.join("; "),
            format!(
                "ask the central team to change it (kafka-configs --alter --entity-type topics \
                 --entity-name {})",
                t.name
            ),
        );
    }
    let mut note = format!("partitions {}, replicas {}", t.partitions, t.replicas);
    if t.settings.is_empty() {
        note.push_str("; the broker reports no settings");
    }
    for key in ["cleanup.policy", "retention.ms", "min.insync.replicas"] {
        if let Some(v) = t.settings.get(key) {
            note.push_str(&format!(", {key}={v}"));
        }
    }
    Check::ok_note(what, note)
}

fn failed(
    config: &BridgeConfig,
    what: String,
    failure: BackboneFailure,
    opts: &ProbeOptions,
) -> Check {
    match failure {
        BackboneFailure::Config(why) => Check::fail(
            what,
            why,
            "fix [kafka.security] (check-config without --probe names every problem)",
        ),
        BackboneFailure::Unreachable(detail) => match reach(&config.brokers, opts.timeout) {
            // Something listens there but never answered the client: most often TLS against a
            // plain-text listener (or the reverse), where the handshake just waits.
            Ok(addr) => Check::fail(
                what,
                format!(
                    "{addr} accepts TCP connections but gave no answer over {} within {} s \
                     ({detail})",
                    config.security.protocol.as_librdkafka(),
                    opts.timeout.as_secs_f64()
                ),
                "check [kafka.security] protocol against the listener on that port (TLS or \
                 plain text, SASL or not) and that bootstrap names a Kafka listener",
            ),
            Err(why) => Check::fail(
                what,
                format!("unreachable: {why} ({detail})"),
                "check [kafka] bootstrap (host:port), the network and firewall, and that the \
                 brokers run",
            ),
        },
        // The bridge's own words for `auth_failed` / `tls_failed`, naming the setting to fix.
        BackboneFailure::Security(f) => match security_state(config, f) {
            BridgeState::AuthFailed { reason } | BridgeState::TlsFailed { reason } => {
                Check::fail(what, reason, "")
            }
            other => Check::fail(what, other.name(), ""),
        },
    }
}

/// The first bootstrap address that accepts a TCP connection within `timeout` (closed at
/// once), or why none did (each address with its error).
fn reach(brokers: &str, timeout: std::time::Duration) -> Result<String, String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let mut errors = Vec::new();
    for b in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        match b.to_socket_addrs() {
            Err(e) => errors.push(format!("{b}: {e}")),
            Ok(addrs) => {
                for a in addrs {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(_) => return Ok(b.to_owned()),
                        Err(e) => errors.push(format!("{b}: {e}")),
                    }
                }
            }
        }
    }
    Err(errors.join(", "))
}
