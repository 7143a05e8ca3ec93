//! The topic reader and verifier that central teams (and the e2e tests) run.
//!
//! Owns: [`consume`] (read a whole topic once with a throwaway consumer group), the pure
//! [`report_from_records`] accounting, and the output helpers of the `icu-bridge consume`
//! command ([`render_summary`], [`write_deduplicated_json_lines`], and the older
//! [`write_verified_json_lines`]).
//!
//! Guarantees:
//! - reading never commits offsets or joins a real group (random group id, manual assignment),
//!   so it does not disturb other consumers;
//! - a record verifies only if its `icu-signature` is a valid ed25519 signature, under the key its
//!   `icu-key-id` names (one of the given public keys: a key directory spans rotations), over
//!   what its `icu-signature-alg` names: the record's envelope (`ed25519-envelope-v1`: its key,
//!   the covered headers and the value's SHA-256, so an edited header fails) or the exact value
//!   bytes (`ed25519`, or no such header: the older scheme); any other algorithm fails; a record
//!   whose key id is not among the given keys is reported as such (count, first offsets) and
//!   makes the report unclean;
//! - accounting is per stream, a `(gateway, device)` key taken from the `icu-gateway-id` and
//!   `icu-device-id` headers (`<unknown>` gateway when the header is missing; the record key,
//!   then `<unknown>`, when the device header is missing): two gateways that use the same device
//!   id are never merged;
//! - seq accounting expands each record's `[icu-seq-first, icu-seq-last]` (or, without those
//!   headers, the seqs of the Bundle's Observations); records with a bad signature are counted
//!   but never used to fill a gap; a gap is a missing range between a stream's lowest and
//!   highest seq; a duplicate is any extra sighting of a `(gateway, device, seq)`;
//! - every duplicate is compared with the first sighting of its seqs: when both records claim the
//!   same seq range, by their exact value bytes; otherwise (a re-send batched differently) seq by
//!   seq, by the bytes of that seq's Observation entry (the mapping is deterministic, so a
//!   genuine re-send is identical). A duplicate with different content is a *conflict* and makes
//!   the report unclean;
//! - audit-trail records (`icu.audit`: a FHIR AuditEvent per entry, under device `audit`) are
//!   accounted like any stream (seq gaps from the headers) and, when trusted, read back
//!   ([`crate::fhir::audit_entry_of`]): the entry's seq must be the record's, the entry's own
//!   ed25519 signature over its hash must verify with the key, and each entry's `prev_hash` must
//!   be the hash of the entry before it (seq 1: zeros); a failure makes the report unclean;
//! - waveform records (`icu.waveforms`) are read back to their samples
//!   ([`crate::fhir::decode_value`]): segments, sample positions and gaps (`E`) are counted per
//!   stream; alarm snippets on `icu.alarms` are checked ([`crate::fhir::snippet_of`]: every
//!   result in the record, an alarm reference, readable samples) and counted; a record that
//!   fails either makes the report unclean;
//! - [`write_deduplicated_json_lines`] writes each verified `(gateway, device, seq)` once: the
//!   first verified record that brings a seq is written; a record whose seqs were all written
//!   before is skipped; a record that partly overlaps is written whole (its signed bytes cannot
//!   be split) with the already-written seq ranges in `already_written`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use crate::bridge::security::{client_properties, KafkaSecurity};
use crate::error::BridgeError;
use crate::fhir::{
    audit_entry_of, decode_value, is_audit_event, observations_of, snippet_of, ParsedAuditEntry,
    ParsedObservation,
};
use crate::headers;
use crate::signing::envelope::envelope;
use crate::signing::{verify_base64, KeyRing};

/// Largest seq range one record may claim before it is treated as malformed.
const MAX_RANGE: u64 = 1_000_000;
/// Timeout of metadata and watermark requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Stand-in for a missing gateway or device id.
pub const UNKNOWN: &str = "<unknown>";

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

/// How [`consume_with`] connects and what it verifies with, beyond [`ConsumeOptions`].
#[derive(Debug, Clone, Default)]
pub struct ConsumeSecurity {
    /// TLS and SASL towards the brokers (the gateway's `[kafka.security]` settings).
    pub security: KafkaSecurity,
    /// Other librdkafka properties.
    pub properties: BTreeMap<String, String>,
    /// Keys to verify with (a key directory); replaces [`ConsumeOptions::public_key`] when set.
    pub keys: Option<KeyRing>,
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
    /// From the `icu-gateway-id` header.
    pub gateway_id: Option<String>,
    /// From the `icu-device-id` header.
    pub device_id: Option<String>,
    pub seq_first: Option<u64>,
    pub seq_last: Option<u64>,
    /// `None` when no key was given or the record has no signature header.
    pub signature_ok: Option<bool>,
}

impl ConsumedRecord {
    /// Builds a record from its parts, deriving gateway id, device id and seq range from the
    /// headers and verifying the signature when a key is given.
    pub fn new(
        partition: i32,
        offset: i64,
        key: Option<String>,
        headers: BTreeMap<String, String>,
        value: Vec<u8>,
        public_key: Option<&VerifyingKey>,
    ) -> Self {
        let ring = public_key.map(|k| KeyRing::single(*k));
        Self::with_keys(partition, offset, key, headers, value, ring.as_ref())
    }

    /// [`Self::new`] verifying with any key of `keys` (the one the `icu-key-id` header names).
    pub fn with_keys(
        partition: i32,
        offset: i64,
        key: Option<String>,
        headers: BTreeMap<String, String>,
        value: Vec<u8>,
        keys: Option<&KeyRing>,
    ) -> Self {
        let seq = |name: &str| headers.get(name).and_then(|v| v.trim().parse::<u64>().ok());
        let (seq_first, seq_last) = (seq(headers::SEQ_FIRST), seq(headers::SEQ_LAST));
        let signature_ok = keys.and_then(|k| {
            signature_status(&headers, key.as_deref(), &value, k).map(|s| s == Signature::Ok)
        });
        Self {
            partition,
            offset,
            key,
            gateway_id: headers.get(headers::GATEWAY_ID).cloned(),
            device_id: headers.get(headers::DEVICE_ID).cloned(),
            headers,
            value,
            seq_first,
            seq_last,
            signature_ok,
        }
    }

    /// A record as a Kafka client delivered it (key and header values read as lossy UTF-8),
    /// verified with `keys` when given.
    pub fn from_message<M: Message>(message: &M, keys: Option<&KeyRing>) -> Self {
        let mut headers = BTreeMap::new();
        if let Some(hs) = message.headers() {
            for h in hs.iter() {
                let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                headers.insert(h.key.to_owned(), value.unwrap_or_default());
            }
        }
        Self::with_keys(
            message.partition(),
            message.offset(),
            message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            message.payload().unwrap_or_default().to_vec(),
            keys,
        )
    }

    /// The `(gateway, device)` stream the record belongs to (see the module docs for fallbacks).
    pub fn stream_key(&self) -> StreamKey {
        let gateway = self
            .gateway_id
            .clone()
            .or_else(|| self.headers.get(headers::GATEWAY_ID).cloned())
            .unwrap_or_else(|| UNKNOWN.into());
        let device = self
            .device_id
            .clone()
            .or_else(|| self.headers.get(headers::DEVICE_ID).cloned())
            .or_else(|| self.key.clone())
            .unwrap_or_else(|| UNKNOWN.into());
        StreamKey { gateway, device }
    }

    /// The header seq range, when both headers are there and the range is sane.
    fn header_range(&self) -> Option<(u64, u64)> {
        match (self.seq_first, self.seq_last) {
            (Some(first), Some(last)) if first <= last && last - first < MAX_RANGE => {
                Some((first, last))
            }
            _ => None,
        }
    }

    /// Whether the value is to be read as FHIR (content type FHIR JSON, or none).
    fn is_fhir(&self) -> bool {
        self.headers
            .get(headers::CONTENT_TYPE)
            .is_none_or(|ct| ct.trim() == headers::CONTENT_TYPE_FHIR_JSON)
    }
}

/// How a signed record's signature checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Signature {
    Ok,
    Bad,
    /// Its `icu-key-id` names no key we have.
    UnknownKey(String),
}

/// `None` if unsigned, else how the signature checks out: with the key its `icu-key-id` header
/// names, or (no such header) with any of `keys`; over the record's envelope (record key, covered
/// headers, value digest) when `icu-signature-alg` is `ed25519-envelope-v1`, over the value bytes
/// when it is `ed25519` or absent (the older scheme); any other algorithm is bad.
fn signature_status(
    headers: &BTreeMap<String, String>,
    record_key: Option<&str>,
    value: &[u8],
    keys: &KeyRing,
) -> Option<Signature> {
    let signature = headers.get(headers::SIGNATURE)?;
    let alg = headers.get(headers::SIGNATURE_ALG).map(|a| a.trim());
    let signed: std::borrow::Cow<[u8]> = match alg {
        None => value.into(),
        Some(a) if a.eq_ignore_ascii_case(headers::SIGNATURE_ALG_ED25519) => value.into(),
        Some(a) if a.eq_ignore_ascii_case(headers::SIGNATURE_ALG_ENVELOPE_V1) => envelope(
            record_key,
            |name| headers.get(name).map(String::as_str),
            value,
        )
        .into(),
        Some(_) => return Some(Signature::Bad),
    };
    let ok = match headers.get(headers::KEY_ID).map(|id| id.trim()) {
        Some(id) => match keys.get(id) {
            Some(key) => verify_base64(key, &signed, signature),
            None => return Some(Signature::UnknownKey(id.to_owned())),
        },
        None => keys.keys().any(|k| verify_base64(k, &signed, signature)),
    };
    Some(if ok { Signature::Ok } else { Signature::Bad })
}

/// Records signed with a key id the verifier does not have.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UnknownKey {
    pub records: u64,
    /// `(partition, offset)` of the first few (at most [`UNKNOWN_KEY_OFFSETS`]).
    pub first_offsets: Vec<(i32, i64)>,
}

/// How many offsets of records with an unknown key id a report lists per key id.
pub const UNKNOWN_KEY_OFFSETS: usize = 5;

/// The dedup key of a stream: `icu-gateway-id` and `icu-device-id`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct StreamKey {
    pub gateway: String,
    pub device: String,
}

/// Accounting of one `(gateway, device)` stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceReport {
    /// Kafka records attributed to the stream (every sighting, bad signatures included).
    pub records: u64,
    /// Observations in those records (parsed from the FHIR value; re-deliveries counted again).
    pub observations: u64,
    pub distinct_seqs: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Missing inclusive ranges between `first_seq` and `last_seq`.
    pub gaps: Vec<(u64, u64)>,
    /// Seqs in `gaps`.
    pub missing_seqs: u64,
    /// Extra sightings of a seq (at-least-once delivery makes some normal after a retry).
    pub duplicate_seqs: u64,
    /// Of `duplicate_seqs`, those whose content is identical to the first sighting.
    pub identical_duplicate_seqs: u64,
    /// Of `duplicate_seqs`, those whose content differs from the first sighting: a re-delivery
    /// with other content under the same key, always an error.
    pub conflicts: u64,
    /// Trusted records that brought no seq not seen before.
    pub duplicate_records: u64,
    /// Records whose signature did not verify (never used for seq accounting).
    pub signatures_bad: u64,
    /// Records without a signature header.
    pub unsigned: u64,
    /// Audit-trail entries read (`icu.audit`; re-deliveries counted again).
    pub audit_entries: u64,
    /// Waveform records read (`icu.waveforms`; re-deliveries counted again), the segments
    /// (Observations with `valueSampledData`) in them, their sample positions and, of those,
    /// the gaps (`E`).
    pub waveform_records: u64,
    pub waveform_segments: u64,
    pub waveform_samples: u64,
    pub waveform_gaps: u64,
    /// Waveform records whose samples cannot be read back exactly ([`crate::fhir::decode_value`]
    /// fails): by partition and offset.
    pub waveforms_bad: Vec<(i32, i64)>,
    /// Alarm snippets read (`icu.alarms`: a DiagnosticReport with the curves around an alarm's
    /// start) and the waveform segments in them.
    pub snippets: u64,
    pub snippet_segments: u64,
    /// Snippets that do not hold together ([`crate::fhir::snippet_of`] fails: a result that is
    /// not in the record, no alarm reference, unreadable samples): by partition and offset.
    pub snippets_bad: Vec<(i32, i64)>,
    /// Audit entries whose own signature (over their hash) does not verify with the key, or
    /// whose seq is not their record's: by seq.
    pub audit_entries_bad: Vec<u64>,
    /// Audit entries whose `prev_hash` is not the hash of the entry before them (or not zeros
    /// for seq 1): by seq. A missing entry is a gap, not a break.
    pub audit_chain_breaks: Vec<u64>,
}

/// One duplicate sighting: seqs of a record already brought by an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Duplicate {
    pub gateway: String,
    pub device: String,
    /// The seqs sighted again (inclusive).
    pub seqs: (u64, u64),
    /// Where the repeat is.
    pub partition: i32,
    pub offset: i64,
    /// Where the first sighting is.
    pub first_partition: i32,
    pub first_offset: i64,
    /// Whether the content is identical to the first sighting's (exact value bytes when both
    /// records claim the same seq range, else the bytes of each seq's Observation entry).
    pub identical: bool,
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
    /// Per stream, by device id; when a device id occurs under more than one gateway, each of
    /// its streams is under `<gateway>/<device>` instead (never merged). Kept for callers that
    /// look devices up by id; [`Self::gateways`] is the authoritative view.
    pub devices: BTreeMap<String, DeviceReport>,
    /// Per stream: gateway id → device id → accounting.
    pub gateways: BTreeMap<String, BTreeMap<String, DeviceReport>>,
    /// Extra sightings of a seq over all streams.
    pub duplicate_seqs: u64,
    /// Duplicate seqs whose content differs from the first sighting, over all streams.
    pub conflicts: u64,
    /// Every duplicate sighting, in read order (conflicts are those with `identical: false`).
    pub duplicates: Vec<Duplicate>,
    /// Audit-trail entries read, over all streams.
    pub audit_entries: u64,
    /// Signed records whose `icu-key-id` names a key the verifier was not given (also counted
    /// in `signatures_bad`: they did not verify).
    pub unknown_key_records: u64,
    /// Those records per unknown key id.
    pub unknown_keys: BTreeMap<String, UnknownKey>,
}

impl ConsumeReport {
    /// Every record is signed and verifies, no stream has a gap and no re-delivery conflicts.
    pub fn is_clean(&self) -> bool {
        self.signatures_bad == 0
            && self.unknown_key_records == 0
            && self.unsigned == 0
            && self.conflicts == 0
            && self.gateways.values().flat_map(BTreeMap::values).all(|d| {
                d.gaps.is_empty()
                    && d.audit_entries_bad.is_empty()
                    && d.audit_chain_breaks.is_empty()
                    && d.waveforms_bad.is_empty()
                    && d.snippets_bad.is_empty()
            })
    }

    /// The accounting of one `(gateway, device)` stream.
    pub fn stream(&self, gateway: &str, device: &str) -> Option<&DeviceReport> {
        self.gateways.get(gateway)?.get(device)
    }

    /// Every stream with its key, in key order.
    pub fn streams(&self) -> impl Iterator<Item = (&str, &str, &DeviceReport)> {
        self.gateways.iter().flat_map(|(gateway, devices)| {
            devices
                .iter()
                .map(move |(device, d)| (gateway.as_str(), device.as_str(), d))
        })
    }

    /// The duplicate sightings whose content differs from the first sighting.
    pub fn conflicting(&self) -> impl Iterator<Item = &Duplicate> {
        self.duplicates.iter().filter(|d| !d.identical)
    }
}

/// Reads the whole topic once (blocking) and verifies every record.
///
/// Stops when every partition reached the high watermark it had at start and no message came
/// for `idle_timeout`, or at `max_wait`.
pub fn consume(opts: &ConsumeOptions) -> Result<(ConsumeReport, Vec<ConsumedRecord>), BridgeError> {
    consume_with(opts, &ConsumeSecurity::default())
}

/// [`consume`] over TLS / SASL, verifying with a key ring (`extra.keys`) when given.
pub fn consume_with(
    opts: &ConsumeOptions,
    extra: &ConsumeSecurity,
) -> Result<(ConsumeReport, Vec<ConsumedRecord>), BridgeError> {
    let keys = match &extra.keys {
        Some(ring) => Some(ring.clone()),
        None => opts.public_key.map(KeyRing::single),
    };
    let kafka = |operation: &'static str| {
        let brokers = opts.brokers.clone();
        move |source| BridgeError::Kafka {
            operation,
            brokers,
            source,
        }
    };
    let mut client = ClientConfig::new();
    for (k, v) in client_properties(&extra.security, &extra.properties)? {
        client.set(k, v);
    }
    let consumer: BaseConsumer = client
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
                let record = ConsumedRecord::from_message(&message, keys.as_ref());
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
    let report = report_with_keys(&records, keys.as_ref());
    Ok((report, records))
}

/// Accounts signatures, observations, seqs, gaps, duplicates and conflicts per
/// `(gateway, device)` stream (pure).
///
/// With `key`, signatures are verified again from the headers and value; without, signed records
/// count neither as ok nor bad (and all records are used for seq accounting). A duplicate's first
/// sighting is the earliest trusted record, in `records` order, that brought the seq.
pub fn report_from_records(
    records: &[ConsumedRecord],
    key: Option<&VerifyingKey>,
) -> ConsumeReport {
    let ring = key.map(|k| KeyRing::single(*k));
    report_with_keys(records, ring.as_ref())
}

/// [`report_from_records`] verifying each record with the key its `icu-key-id` names, out of
/// `keys` (a key directory spanning rotations); records naming a key not in `keys` are counted
/// in [`ConsumeReport::unknown_keys`].
pub fn report_with_keys(records: &[ConsumedRecord], key: Option<&KeyRing>) -> ConsumeReport {
    let key_to_verify = key;
    let mut report = ConsumeReport::default();
    let mut streams: BTreeMap<StreamKey, (DeviceReport, Sightings)> = BTreeMap::new();
    let mut digests = EntryDigests::default();
    let mut audit_entries: BTreeMap<StreamKey, Vec<AuditSighting>> = BTreeMap::new();
    for (idx, record) in records.iter().enumerate() {
        report.records += 1;
        let stream = record.stream_key();
        let (dev, sightings) = streams.entry(stream.clone()).or_default();
        dev.records += 1;
        let mut trusted = true;
        if !record.headers.contains_key(headers::SIGNATURE) {
            report.unsigned += 1;
            dev.unsigned += 1;
        } else if let Some(key) = key {
            match signature_status(&record.headers, record.key.as_deref(), &record.value, key) {
                Some(Signature::Ok) => report.signatures_ok += 1,
                Some(Signature::UnknownKey(id)) => {
                    report.unknown_key_records += 1;
                    let unknown = report.unknown_keys.entry(id).or_default();
                    unknown.records += 1;
                    if unknown.first_offsets.len() < UNKNOWN_KEY_OFFSETS {
                        unknown
                            .first_offsets
                            .push((record.partition, record.offset));
                    }
                    // It did not verify either (a verifier that only checks this stays right).
                    report.signatures_bad += 1;
                    dev.signatures_bad += 1;
                    trusted = false;
                }
                _ => {
                    report.signatures_bad += 1;
                    dev.signatures_bad += 1;
                    trusted = false;
                }
            }
        }
        // An audit-trail entry: its chain part, checked once every record is read.
        let audit = record.is_fhir() && is_audit_event(&record.value);
        if audit {
            match audit_entry_of(&record.value) {
                Ok(entry) => {
                    report.audit_entries += 1;
                    dev.audit_entries += 1;
                    if trusted {
                        audit_entries
                            .entry(stream.clone())
                            .or_default()
                            .push((record.header_range(), entry));
                    }
                }
                Err(_) => report.unparseable += 1,
            }
        }
        // Only FHIR values are parsed; plain JSON (dead letters) is neither counted nor faulted.
        let fhir_bundle = record.is_fhir() && !audit;
        let parsed = match fhir_bundle.then(|| observations_of(&record.value)) {
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
        if parsed.is_some() {
            count_curves(record, dev);
        }
        if !trusted {
            continue;
        }
        let ranges = seq_ranges(record, parsed.as_deref());
        let mut fresh = 0;
        for &(first, last) in &ranges {
            let (seen, new) = sightings.insert(first, last, idx);
            fresh += new;
            for (start, end, earlier) in seen {
                for (a, b, identical) in compare(records, &mut digests, idx, earlier, start, end) {
                    let n = b - a + 1;
                    dev.duplicate_seqs += n;
                    if identical {
                        dev.identical_duplicate_seqs += n;
                    } else {
                        dev.conflicts += n;
                    }
                    report.duplicates.push(Duplicate {
                        gateway: stream.gateway.clone(),
                        device: stream.device.clone(),
                        seqs: (a, b),
                        partition: record.partition,
                        offset: record.offset,
                        first_partition: records[earlier].partition,
                        first_offset: records[earlier].offset,
                        identical,
                    });
                }
            }
        }
        if !ranges.is_empty() && fresh == 0 {
            dev.duplicate_records += 1;
        }
    }
    let mut gateways_of_device: BTreeMap<String, usize> = BTreeMap::new();
    for key in streams.keys() {
        *gateways_of_device.entry(key.device.clone()).or_default() += 1;
    }
    for (key, (mut dev, sightings)) in streams {
        sightings.finish(&mut dev);
        if let Some(entries) = audit_entries.remove(&key) {
            check_audit_chain(entries, key_to_verify, &mut dev);
        }
        report.duplicate_seqs += dev.duplicate_seqs;
        report.conflicts += dev.conflicts;
        let legacy = if gateways_of_device[&key.device] > 1 {
            format!("{}/{}", key.gateway, key.device)
        } else {
            key.device.clone()
        };
        report.devices.insert(legacy, dev.clone());
        report
            .gateways
            .entry(key.gateway)
            .or_default()
            .insert(key.device, dev);
    }
    report
}

/// Counts the curves of a FHIR record: an `icu.waveforms` record's segments, samples and gaps;
/// an alarm snippet on the alarm stream. A record whose curves cannot be read back is listed
/// as bad (the report is then unclean).
fn count_curves(record: &ConsumedRecord, dev: &mut DeviceReport) {
    let at = (record.partition, record.offset);
    match record.headers.get(headers::STREAM).map(|s| s.trim()) {
        Some("waveforms") => {
            dev.waveform_records += 1;
            match decode_value(&record.value) {
                Ok(segments) => {
                    dev.waveform_segments += segments.len() as u64;
                    for seg in &segments {
                        dev.waveform_samples += seg.samples.len() as u64;
                        dev.waveform_gaps += seg.gaps() as u64;
                    }
                }
                Err(_) => dev.waveforms_bad.push(at),
            }
        }
        Some("alarms") => match snippet_of(&record.value) {
            Ok(Some(snippet)) => {
                dev.snippets += 1;
                dev.snippet_segments += snippet.segments.len() as u64;
            }
            Ok(None) => {}
            Err(_) => dev.snippets_bad.push(at),
        },
        _ => {}
    }
}

/// One trusted audit record: its header seq range and the entry read from its value.
type AuditSighting = (Option<(u64, u64)>, ParsedAuditEntry);

/// Checks one stream's audit entries: each entry's seq is its record's, its signature over its
/// hash verifies with `key` (when given), and its `prev_hash` is the hash of the entry before
/// (zeros for seq 1). Re-deliveries are checked once (the first sighting of a seq).
fn check_audit_chain(entries: Vec<AuditSighting>, key: Option<&KeyRing>, dev: &mut DeviceReport) {
    let mut by_seq: BTreeMap<u64, ParsedAuditEntry> = BTreeMap::new();
    let mut bad: BTreeSet<u64> = BTreeSet::new();
    for (range, entry) in entries {
        if range != Some((entry.seq, entry.seq)) {
            bad.insert(entry.seq);
            continue;
        }
        by_seq.entry(entry.seq).or_insert(entry);
    }
    for entry in by_seq.values() {
        let signed = key.is_none_or(|ring| {
            <[u8; 64]>::try_from(entry.signature.as_slice()).is_ok_and(|sig| {
                let sig = ed25519_dalek::Signature::from_bytes(&sig);
                ring.keys()
                    .any(|key| key.verify_strict(&entry.hash, &sig).is_ok())
            })
        });
        if !signed {
            bad.insert(entry.seq);
        }
    }
    let mut breaks = Vec::new();
    for (seq, entry) in &by_seq {
        let expected = if *seq == 1 {
            Some(vec![0u8; 32])
        } else {
            by_seq.get(&(seq - 1)).map(|prev| prev.hash.clone())
        };
        if expected.is_some_and(|h| h != entry.prev_hash) {
            breaks.push(*seq);
        }
    }
    dev.audit_entries_bad = bad.into_iter().collect();
    dev.audit_chain_breaks = breaks;
}

/// The seq ranges a record claims: its header range, else the seqs of its Bundle's
/// Observations (runs of consecutive seqs merged); empty when it has neither.
fn seq_ranges(record: &ConsumedRecord, parsed: Option<&[ParsedObservation]>) -> Vec<(u64, u64)> {
    if let Some(range) = record.header_range() {
        return vec![range];
    }
    let mut ranges = Vec::new();
    for obs in parsed.into_iter().flatten() {
        push_range(&mut ranges, obs.seq, obs.seq);
    }
    ranges
}

/// Appends `a..=b`, extending the last range when it ends right before `a`.
fn push_range(ranges: &mut Vec<(u64, u64)>, a: u64, b: u64) {
    match ranges.last_mut() {
        Some(last) if last.1.checked_add(1) == Some(a) => last.1 = b,
        _ => ranges.push((a, b)),
    }
}

/// First sightings of one stream's seqs: disjoint inclusive ranges, each with the index of the
/// record that first brought it.
#[derive(Debug, Default)]
struct Sightings {
    /// Range start → (range end, record index).
    ranges: BTreeMap<u64, (u64, usize)>,
}

impl Sightings {
    /// Marks `first..=last` as sighted by record `idx`. Returns the parts sighted before, as
    /// `(start, end, earlier record index)` in seq order, and how many seqs are new.
    fn insert(&mut self, first: u64, last: u64, idx: usize) -> (Vec<(u64, u64, usize)>, u64) {
        let mut seen = Vec::new();
        let mut fresh = Vec::new();
        let from = self
            .ranges
            .range(..=first)
            .next_back()
            .map_or(first, |(start, _)| *start);
        // The next seq not accounted yet; `None` once `last` is.
        let mut cursor = Some(first);
        for (&start, &(end, earlier)) in self.ranges.range(from..=last) {
            let Some(next) = cursor else { break };
            if end < next {
                continue;
            }
            let s = start.max(next);
            let e = end.min(last);
            if s > next {
                fresh.push((next, s - 1));
            }
            seen.push((s, e, earlier));
            cursor = (e < last).then(|| e + 1);
        }
        if let Some(next) = cursor {
            fresh.push((next, last));
        }
        let new = fresh.iter().map(|(a, b)| b - a + 1).sum();
        for (a, b) in fresh {
            self.ranges.insert(a, (b, idx));
        }
        (seen, new)
    }

    /// Fills the seq figures of `dev`: distinct seqs, first and last, gaps.
    fn finish(&self, dev: &mut DeviceReport) {
        dev.first_seq = self.ranges.keys().next().copied();
        dev.last_seq = self.ranges.values().next_back().map(|(end, _)| *end);
        let mut previous_end: Option<u64> = None;
        for (&start, &(end, _)) in &self.ranges {
            dev.distinct_seqs += end - start + 1;
            if let Some(p) = previous_end {
                if start > p + 1 {
                    dev.gaps.push((p + 1, start - 1));
                    dev.missing_seqs += start - 1 - p;
                }
            }
            previous_end = Some(end);
        }
    }
}

/// Per record (lazily): SHA-256 of each Observation entry of its Bundle, by seq.
#[derive(Debug, Default)]
struct EntryDigests {
    by_record: HashMap<usize, BTreeMap<u64, [u8; 32]>>,
}

impl EntryDigests {
    /// The content digest of `seq` in record `idx`: its Observation entry's, else the whole
    /// value's (a record that is not an observation Bundle).
    fn of(&mut self, records: &[ConsumedRecord], idx: usize, seq: u64) -> [u8; 32] {
        let record = &records[idx];
        self.by_record
            .entry(idx)
            .or_insert_with(|| observation_entry_digests(record))
            .get(&seq)
            .copied()
            .unwrap_or_else(|| Sha256::digest(&record.value).into())
    }
}

/// SHA-256 of the JSON of each Observation entry of the record's Bundle, by seq (first entry
/// wins); empty when the value is not an observation Bundle.
fn observation_entry_digests(record: &ConsumedRecord) -> BTreeMap<u64, [u8; 32]> {
    let mut out = BTreeMap::new();
    if !record.is_fhir() {
        return out;
    }
    let (Ok(parsed), Ok(doc)) = (
        observations_of(&record.value),
        serde_json::from_slice::<serde_json::Value>(&record.value),
    ) else {
        return out;
    };
    // `observations_of` reads the Observation entries in order; pair them with the raw entries.
    let entries: Vec<&serde_json::Value> = doc
        .get("entry")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| {
            e.pointer("/resource/resourceType")
                .and_then(serde_json::Value::as_str)
                == Some("Observation")
        })
        .collect();
    if entries.len() != parsed.len() {
        return out;
    }
    for (obs, entry) in parsed.iter().zip(entries) {
        let bytes = serde_json::to_vec(entry).unwrap_or_default();
        out.entry(obs.seq)
            .or_insert_with(|| Sha256::digest(&bytes).into());
    }
    out
}

/// Compares seqs `start..=end` of record `idx` with their first sighting in record `earlier`;
/// returns runs `(a, b, identical)`.
fn compare(
    records: &[ConsumedRecord],
    digests: &mut EntryDigests,
    idx: usize,
    earlier: usize,
    start: u64,
    end: u64,
) -> Vec<(u64, u64, bool)> {
    let (record, first) = (&records[idx], &records[earlier]);
    if record.header_range().is_some() && record.header_range() == first.header_range() {
        return vec![(start, end, record.value == first.value)];
    }
    let mut runs: Vec<(u64, u64, bool)> = Vec::new();
    for seq in start..=end {
        let same = digests.of(records, idx, seq) == digests.of(records, earlier, seq);
        match runs.last_mut() {
            Some(run) if run.2 == same => run.1 = seq,
            _ => runs.push((seq, seq, same)),
        }
    }
    runs
}

/// `a` or `a-b`.
fn fmt_range(a: u64, b: u64) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

mod output;
pub use output::{
    render_conflicts, render_summary, write_deduplicated_json_lines, write_report_json,
    write_verified_json_lines, DedupWrite,
};

#[cfg(test)]
mod tests;

/// Per-(gateway, device) accounting, conflicts and the deduplicated out file.
#[cfg(test)]
mod audit_tests;
