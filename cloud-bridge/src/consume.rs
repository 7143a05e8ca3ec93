//! The topic reader and verifier that central teams (and the e2e tests) run.
//!
//! Owns: [`consume`] (read a whole topic once with a throwaway consumer group), the pure
//! [`report_from_records`] accounting, and the output helpers of the `icu-bridge consume`
//! command ([`render_summary`], [`write_verified_json_lines`]).
//!
//! Guarantees:
//! - reading never commits offsets or joins a real group (random group id, manual assignment),
//!   so it does not disturb other consumers;
//! - a record verifies only if its `icu-signature` is a valid ed25519 signature, under the given
//!   public key, over the exact value bytes (the algorithm header, when present, must say
//!   `ed25519`);
//! - seq accounting expands each record's `[icu-seq-first, icu-seq-last]`; records with a bad
//!   signature are counted but never used to fill a gap; a gap is a missing range between a
//!   device's lowest and highest seq, a duplicate is any extra sighting of a seq.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tracing::{debug, warn};

use crate::error::BridgeError;
use crate::fhir::observations_of;
use crate::headers;
use crate::signing::verify_base64;

/// Largest seq range one record may claim before it is treated as malformed.
const MAX_RANGE: u64 = 1_000_000;
/// Timeout of metadata and watermark requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What to read and how long to wait.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    pub brokers: String,
    pub topic: String,
    /// Key to verify signatures with; `None` skips verification.
    pub public_key: Option<VerifyingKey>,
    /// After reaching the high watermarks seen at start, stop once no message came for this long.
    pub idle_timeout: Duration,
    /// Hard limit of the whole read.
    pub max_wait: Duration,
}

/// One Kafka record as read.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumedRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// Header values as UTF-8 (lossy); the last one wins for a repeated name.
    pub headers: BTreeMap<String, String>,
    pub value: Vec<u8>,
    /// From the `icu-device-id` header.
    pub device_id: Option<String>,
    pub seq_first: Option<u64>,
    pub seq_last: Option<u64>,
    /// `None` when no key was given or the record has no signature header.
    pub signature_ok: Option<bool>,
}

impl ConsumedRecord {
    /// Builds a record from its parts, deriving device id and seq range from the headers and
    /// verifying the signature when a key is given.
    pub fn new(
        partition: i32,
        offset: i64,
        key: Option<String>,
        headers: BTreeMap<String, String>,
        value: Vec<u8>,
        public_key: Option<&VerifyingKey>,
    ) -> Self {
        let seq = |name: &str| headers.get(name).and_then(|v| v.trim().parse::<u64>().ok());
        let (seq_first, seq_last) = (seq(headers::SEQ_FIRST), seq(headers::SEQ_LAST));
        let signature_ok = public_key.and_then(|k| signature_status(&headers, &value, k));
        Self {
            partition,
            offset,
            key,
            device_id: headers.get(headers::DEVICE_ID).cloned(),
            headers,
            value,
            seq_first,
            seq_last,
            signature_ok,
        }
    }
}

/// `None` if unsigned, else whether the signature verifies with `key`.
fn signature_status(
    headers: &BTreeMap<String, String>,
    value: &[u8],
    key: &VerifyingKey,
) -> Option<bool> {
    let signature = headers.get(headers::SIGNATURE)?;
    let alg_ok = headers
        .get(headers::SIGNATURE_ALG)
        .is_none_or(|alg| alg.eq_ignore_ascii_case(headers::SIGNATURE_ALG_ED25519));
    Some(alg_ok && verify_base64(key, value, signature))
}

/// Per-device accounting.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceReport {
    /// Kafka records attributed to the device.
    pub records: u64,
    /// Observations in those records (parsed from the FHIR value).
    pub observations: u64,
    pub distinct_seqs: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Missing inclusive ranges between `first_seq` and `last_seq`.
    pub gaps: Vec<(u64, u64)>,
    /// Extra sightings of a seq (at-least-once delivery makes some normal after a retry).
    pub duplicate_seqs: u64,
}

/// Whole-topic accounting.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConsumeReport {
    pub records: u64,
    pub signatures_ok: u64,
    pub signatures_bad: u64,
    pub unsigned: u64,
    /// FHIR values (content-type `application/fhir+json`, or none) that are not a readable FHIR
    /// Bundle; other content types (dead letters) are not parsed.
    pub unparseable: u64,
    pub devices: BTreeMap<String, DeviceReport>,
}

impl ConsumeReport {
    /// Every record is signed and verifies, and no device has a gap.
    pub fn is_clean(&self) -> bool {
        self.signatures_bad == 0
            && self.unsigned == 0
            && self.devices.values().all(|d| d.gaps.is_empty())
    }
}

/// Reads the whole topic once (blocking) and verifies every record.
///
/// Stops when every partition reached the high watermark it had at start and no message came
/// for `idle_timeout`, or at `max_wait`.
pub fn consume(opts: &ConsumeOptions) -> Result<(ConsumeReport, Vec<ConsumedRecord>), BridgeError> {
    let kafka = |operation: &'static str| {
        let brokers = opts.brokers.clone();
        move |source| BridgeError::Kafka {
            operation,
            brokers,
            source,
        }
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &opts.brokers)
        .set(
            "group.id",
            format!("icu-bridge-verify-{:016x}", rand::random::<u64>()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(kafka("create consumer"))?;

    let metadata = consumer
        .fetch_metadata(Some(&opts.topic), REQUEST_TIMEOUT)
        .map_err(kafka("fetch metadata"))?;
    let topic = metadata.topics().iter().find(|t| t.name() == opts.topic);
    let partitions: Vec<i32> = match topic {
        Some(t)
            if t.error().is_none()
                || t.error() == Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR) =>
        {
            t.partitions().iter().map(|p| p.id()).collect()
        }
        _ => Vec::new(),
    };
    if partitions.is_empty() {
        return Err(BridgeError::TopicMissing {
            topic: opts.topic.clone(),
            brokers: opts.brokers.clone(),
        });
    }

    // Partition -> high watermark still to reach.
    let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&opts.topic, partition, REQUEST_TIMEOUT)
            .map_err(kafka("fetch watermarks"))?;
        if high > low {
            remaining.insert(partition, high);
        }
        assignment
            .add_partition_offset(&opts.topic, partition, Offset::Beginning)
            .map_err(kafka("assign partitions"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(kafka("assign partitions"))?;
    debug!(topic = %opts.topic, partitions = partitions.len(), ?remaining, "consuming");

    let start = Instant::now();
    let mut quiet_since = start;
    let mut records = Vec::new();
    loop {
        if start.elapsed() >= opts.max_wait {
            if !remaining.is_empty() {
                warn!(
                    ?remaining,
                    "max wait reached before every partition was read to its high watermark"
                );
            }
            break;
        }
        if remaining.is_empty() && quiet_since.elapsed() >= opts.idle_timeout {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(e)) => warn!(error = %e, "kafka consumer error"),
            Some(Ok(message)) => {
                let mut headers = BTreeMap::new();
                if let Some(hs) = message.headers() {
                    for h in hs.iter() {
                        let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                        headers.insert(h.key.to_owned(), value.unwrap_or_default());
                    }
                }
                let record = ConsumedRecord::new(
                    message.partition(),
                    message.offset(),
                    message
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned()),
                    headers,
                    message.payload().unwrap_or_default().to_vec(),
                    opts.public_key.as_ref(),
                );
                if remaining
                    .get(&record.partition)
                    .is_some_and(|high| record.offset + 1 >= *high)
                {
                    remaining.remove(&record.partition);
                }
                records.push(record);
                quiet_since = Instant::now();
            }
        }
    }
    let report = report_from_records(&records, opts.public_key.as_ref());
    Ok((report, records))
}

/// Accounts signatures, observations, seqs, gaps and duplicates (pure).
///
/// With `key`, signatures are verified again from the headers and value; without, signed records
/// count neither as ok nor bad.
pub fn report_from_records(
    records: &[ConsumedRecord],
    key: Option<&VerifyingKey>,
) -> ConsumeReport {
    let mut report = ConsumeReport::default();
    let mut seqs: BTreeMap<String, BTreeMap<u64, u64>> = BTreeMap::new();
    for record in records {
        report.records += 1;
        let mut trusted = true;
        if !record.headers.contains_key(headers::SIGNATURE) {
            report.unsigned += 1;
        } else if let Some(key) = key {
            if signature_status(&record.headers, &record.value, key) == Some(true) {
                report.signatures_ok += 1;
            } else {
                report.signatures_bad += 1;
                trusted = false;
            }
        }
        let device = record
            .device_id
            .clone()
            .or_else(|| record.headers.get(headers::DEVICE_ID).cloned())
            .or_else(|| record.key.clone())
            .unwrap_or_else(|| "<unknown>".into());
        let dev = report.devices.entry(device.clone()).or_default();
        dev.records += 1;
        // Only FHIR values are parsed; plain JSON (dead letters) is neither counted nor faulted.
        let fhir = record
            .headers
            .get(headers::CONTENT_TYPE)
            .is_none_or(|ct| ct.trim() == headers::CONTENT_TYPE_FHIR_JSON);
        let parsed = match fhir.then(|| observations_of(&record.value)) {
            None => None,
            Some(Ok(parsed)) => {
                dev.observations += parsed.len() as u64;
                Some(parsed)
            }
            Some(Err(_)) => {
                report.unparseable += 1;
                None
            }
        };
        if !trusted {
            continue;
        }
        let counts = seqs.entry(device).or_default();
        match (record.seq_first, record.seq_last) {
            (Some(first), Some(last)) if first <= last && last - first < MAX_RANGE => {
                for seq in first..=last {
                    *counts.entry(seq).or_default() += 1;
                }
            }
            _ => {
                for obs in parsed.iter().flatten() {
                    *counts.entry(obs.seq).or_default() += 1;
                }
            }
        }
    }
    for (device, counts) in seqs {
        let dev = report.devices.entry(device).or_default();
        dev.distinct_seqs = counts.len() as u64;
        dev.first_seq = counts.keys().next().copied();
        dev.last_seq = counts.keys().next_back().copied();
        dev.duplicate_seqs = counts.values().map(|c| c - 1).sum();
        let mut previous: Option<u64> = None;
        for &seq in counts.keys() {
            if let Some(p) = previous {
                if seq > p + 1 {
                    dev.gaps.push((p + 1, seq - 1));
                }
            }
            previous = Some(seq);
        }
    }
    report
}

/// The human summary printed by `icu-bridge consume`.
pub fn render_summary(topic: &str, report: &ConsumeReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "topic {topic}: {} records, signatures ok {}, bad {}, unsigned {}, unparseable {}",
        report.records,
        report.signatures_ok,
        report.signatures_bad,
        report.unsigned,
        report.unparseable
    );
    for (device, d) in &report.devices {
        let range = match (d.first_seq, d.last_seq) {
            (Some(first), Some(last)) => format!("seq {first}..={last}"),
            _ => "no seqs".into(),
        };
        let gaps = if d.gaps.is_empty() {
            "no gaps".to_owned()
        } else {
            let list: Vec<String> = d
                .gaps
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            format!("{} gap(s): {}", d.gaps.len(), list.join(", "))
        };
        let _ = writeln!(
            out,
            "  device {device}: {} records, {} observations, {range}, {gaps}, {} duplicate seqs",
            d.records, d.observations, d.duplicate_seqs
        );
    }
    let _ = writeln!(
        out,
        "{}",
        if report.is_clean() {
            "result: ok (every record verified, no gaps)"
        } else {
            "result: FAILED (unverified records or gaps)"
        }
    );
    out
}

/// Writes every record whose signature verified as one JSON line (`partition`, `offset`, `key`,
/// `headers`, `value`; the value as JSON when it parses, else as a string). Returns the count.
pub fn write_verified_json_lines(
    path: &Path,
    records: &[ConsumedRecord],
) -> Result<usize, BridgeError> {
    let io = |source| BridgeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    let mut written = 0;
    for record in records.iter().filter(|r| r.signature_ok == Some(true)) {
        let value =
            serde_json::from_slice::<serde_json::Value>(&record.value).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&record.value).into_owned())
            });
        let line = serde_json::json!({
            "partition": record.partition,
            "offset": record.offset,
            "key": record.key,
            "headers": record.headers,
            "value": value,
        });
        writeln!(out, "{line}").map_err(io)?;
        written += 1;
    }
    out.flush().map_err(io)?;
    Ok(written)
}

#[cfg(test)]
mod tests;
