//! Mapping and signing: a planned bundle becomes its Kafka record (key, headers, value and the
//! signature over them) on the blocking pool, split over threads for a big cycle.
//!
//! Owns: [`Mapper`] (FHIR mapping per stream, then [`Mapper::sign`]: the record key, every header
//! and the signature decided together, so what is produced is exactly what was signed),
//! [`map_and_sign`], the record key rule ([`record_key`]) and the media type per stream.

use std::sync::Arc;

use base64::Engine as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::error;

use super::plan::{PlanLimits, PlannedBundle};
use crate::deadletter::dead_letter_json;
use crate::error::BridgeError;
use crate::fhir::{
    adt_bundle, alarm_bundle, audit_event, observation_bundle, snippet_bundle, waveform_bundle,
    FhirContext,
};
use crate::headers;
use crate::signing::envelope::envelope;
use crate::signing::SigningKeys;
use crate::Terminology;
use icu_outbox::Stream;
use icu_protos::v1::{ObservationBatch, StreamKey};

/// Most threads that map and sign one cycle's bundles (see [`map_and_sign`]).
pub(super) const MAX_MAP_THREADS: usize = 4;
/// Fewest bundles worth a thread of their own.
const MIN_BUNDLES_PER_THREAD: usize = 4;

/// A bundle as its Kafka record (key, headers with the signature, value), or why it cannot be
/// mapped.
pub(super) type Value = Result<SignedRecord, DeliveryError>;

/// One record ready to produce: everything its signature covers is decided here.
#[derive(Debug)]
pub(super) struct SignedRecord {
    pub(super) key: String,
    /// In the order they are produced; the signature headers last.
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) value: Vec<u8>,
    /// The same observations as protobuf, for the protobuf topic (when configured).
    pub(super) protobuf: Option<ProtobufRecord>,
}

/// An observation bundle as `icu.v1.ObservationBatch` (key `icu.v1.StreamKey`), signed over
/// its value bytes (`icu-signature-alg: ed25519`): the value itself carries the gateway, the
/// device and every observation's seq, so the signature covers what a consumer accounts by.
#[derive(Debug)]
pub(super) struct ProtobufRecord {
    pub(super) key: Vec<u8>,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) value: Vec<u8>,
}

/// What maps and signs bundles; cloned onto the blocking pool.
#[derive(Clone)]
pub(super) struct Mapper {
    /// The gateway id and the canonical base of the FHIR it writes.
    pub(super) fhir: FhirContext,
    pub(super) max_per_bundle: usize,
    /// Most timeline per waveforms bundle, µs (`[kafka] waveform_bundle_ms`).
    pub(super) waveform_span_us: i64,
    /// Most segments per waveforms bundle (`[kafka] max_waveform_segments`).
    pub(super) max_waveform_segments: usize,
    /// Which key signs is decided per record ([`SigningKeys::at`]): a rotation scheduled for a
    /// time takes effect at that time.
    pub(super) key: Arc<SigningKeys>,
    pub(super) terminology: Arc<Terminology>,
    /// Sign the envelope (key, headers, value digest) rather than the value bytes alone.
    pub(super) envelope: bool,
    /// Also encode observation bundles as protobuf ([`ProtobufRecord`]).
    pub(super) protobuf: bool,
}

impl Mapper {
    /// How big [`super::plan::plan_bundles_with`] lets a bundle grow.
    pub(super) fn limits(&self) -> PlanLimits {
        PlanLimits {
            max_per_bundle: self.max_per_bundle,
            waveform_span_us: self.waveform_span_us,
            max_waveform_segments: self.max_waveform_segments,
        }
    }

    pub(super) fn value(&self, bundle: &PlannedBundle) -> Value {
        let cx = &self.fhir;
        let gateway_id = &cx.gateway_id;
        let value = match (bundle.stream, &bundle.adt, &bundle.dead_letter, &bundle.snippet) {
            (Stream::Audit, ..) => match &bundle.audit {
                Some(entry) => audit_event(cx, entry),
                None => Err(BridgeError::FhirMapping {
                    device_id: bundle.device_id.clone(),
                    seq: bundle.first_seq,
                    reason: "audit bundle without its entry".into(),
                }),
            },
            // An alarm snippet: a record of its own on the alarm topic.
            (Stream::Alarms, _, _, Some(snippet)) => {
                snippet_bundle(cx, &bundle.device_id, snippet, &self.terminology)
            }
            (Stream::Alarms, ..) if !bundle.alarms.is_empty() => {
                alarm_bundle(cx, &bundle.device_id, &bundle.alarms)
            }
            (Stream::Waveforms, ..) => waveform_bundle(
                cx,
                &bundle.device_id,
                &bundle.waveforms,
                &self.terminology,
            ),
            (Stream::DeadLetters, _, Some(dl), _) => {
                dead_letter_json(gateway_id, &bundle.device_id, bundle.first_seq, dl)
            }
            (Stream::Adt, Some(adt), ..) => {
                adt_bundle(cx, &bundle.device_id, bundle.first_seq, adt)
            }
            _ => observation_bundle(
                cx,
                &bundle.device_id,
                &bundle.observations,
                &self.terminology,
            ),
        }
        .map_err(|e| {
            error!(device_id = %bundle.device_id, seq_first = bundle.first_seq, error = %e, "cannot map record to its kafka value");
            DeliveryError {
                reason: e.to_string(),
                unknown_topic: false,
            }
        })?;
        let mut record = self.sign(bundle, value);
        if self.protobuf && bundle.stream == Stream::Observations {
            record.protobuf = Some(self.protobuf_record(bundle));
        }
        Ok(record)
    }

    /// The protobuf form of an observation bundle ([`ProtobufRecord`]).
    fn protobuf_record(&self, bundle: &PlannedBundle) -> ProtobufRecord {
        use icu_protos::Message as _;
        let key = self.key.active();
        let gateway_id = self.fhir.gateway_id.clone();
        let record_key = StreamKey {
            gateway_id: gateway_id.clone(),
            device_id: bundle.device_id.clone(),
        }
        .encode_to_vec();
        let value = ObservationBatch {
            gateway_id: gateway_id.clone(),
            device_id: bundle.device_id.clone(),
            observations: bundle.observations.clone(),
        }
        .encode_to_vec();
        let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&value));
        let headers = vec![
            (headers::STREAM, bundle.stream.as_str().to_owned()),
            (
                headers::CONTENT_TYPE,
                headers::CONTENT_TYPE_PROTOBUF.to_owned(),
            ),
            (
                headers::SCHEMA_VERSION,
                headers::SCHEMA_OBSERVATION_BATCH_V1.to_owned(),
            ),
            (headers::GATEWAY_ID, gateway_id),
            (headers::DEVICE_ID, bundle.device_id.clone()),
            (headers::SEQ_FIRST, bundle.first_seq.to_string()),
            (headers::SEQ_LAST, bundle.last_seq.to_string()),
            (headers::BED, bundle.bed.clone()),
            (headers::KEY_ID, key.key_id().to_owned()),
            (
                headers::SIGNATURE_ALG,
                headers::SIGNATURE_ALG_ED25519.to_owned(),
            ),
            (headers::SIGNATURE, signature),
        ];
        ProtobufRecord {
            key: record_key,
            headers,
            value,
        }
    }

    /// The record of `bundle` with `value`: its key and headers, signed.
    fn sign(&self, bundle: &PlannedBundle, value: Vec<u8>) -> SignedRecord {
        let key = self.key.active();
        let record_key = record_key(bundle, &self.fhir.gateway_id);
        let mut headers = Vec::with_capacity(20);
        headers.extend([
            (headers::STREAM, bundle.stream.as_str().to_owned()),
            (
                headers::CONTENT_TYPE,
                content_type(bundle.stream).to_owned(),
            ),
            (
                headers::SCHEMA_VERSION,
                schema_version(bundle.stream).to_owned(),
            ),
            (headers::GATEWAY_ID, self.fhir.gateway_id.clone()),
            (headers::DEVICE_ID, bundle.device_id.clone()),
            (headers::SEQ_FIRST, bundle.first_seq.to_string()),
            (headers::SEQ_LAST, bundle.last_seq.to_string()),
            (headers::BED, bundle.bed.clone()),
        ]);
        if let RecordKey::Patient(patient) = record_key {
            headers.push((headers::PATIENT_ID, patient.to_owned()));
        }
        headers.push((headers::KEY_ID, key.key_id().to_owned()));
        let stream = bundle.stream.as_str();
        headers.extend([
            (
                headers::CE_SPECVERSION,
                headers::CE_SPECVERSION_1_0.to_owned(),
            ),
            (
                headers::CE_ID,
                format!(
                    "{}:{stream}:{}:{}-{}",
                    self.fhir.gateway_id, bundle.device_id, bundle.first_seq, bundle.last_seq
                ),
            ),
            (
                headers::CE_SOURCE,
                format!(
                    "urn:icu-gateway:{}:{}",
                    self.fhir.gateway_id, bundle.device_id
                ),
            ),
            (headers::CE_TYPE, format!("org.icu-gateway.{stream}.v1")),
        ]);
        if let Some(time) = first_record_time(bundle) {
            headers.push((headers::CE_TIME, time));
        }
        self.seal(&key, record_key.as_str(), headers, value)
    }

    /// The record with `headers` and `value` under `record_key`, signed with `key` (the
    /// envelope, or the value bytes alone): the signature headers come last.
    pub(super) fn seal(
        &self,
        key: &crate::signing::GatewayKey,
        record_key: &str,
        mut headers: Vec<(&'static str, String)>,
        value: Vec<u8>,
    ) -> SignedRecord {
        let (alg, signature) = if self.envelope {
            let covered = envelope(
                Some(record_key),
                |name| {
                    headers
                        .iter()
                        .rev()
                        .find(|(n, _)| *n == name)
                        .map(|(_, v)| v.as_str())
                },
                &value,
            );
            (headers::SIGNATURE_ALG_ENVELOPE_V1, key.sign(&covered))
        } else {
            (headers::SIGNATURE_ALG_ED25519, key.sign(&value))
        };
        headers.push((headers::SIGNATURE_ALG, alg.to_owned()));
        headers.push((
            headers::SIGNATURE,
            base64::engine::general_purpose::STANDARD.encode(signature),
        ));
        SignedRecord {
            key: record_key.to_owned(),
            headers,
            value,
            protobuf: None,
        }
    }
}

/// The time of a bundle's first record as RFC 3339 UTC (`ce_time`): an observation's or a dead
/// letter's receive time, an alarm state change's or an ADT event's event time, an audit entry's
/// time. Taken from the stored record, so a re-send carries the same value.
fn first_record_time(bundle: &PlannedBundle) -> Option<String> {
    let us = match bundle.stream {
        Stream::Observations => bundle.observations.first().map(|o| o.receive_time_us),
        Stream::Alarms => match &bundle.snippet {
            Some(snippet) => Some(snippet.alarm_start_us),
            None => bundle.alarms.first().map(|a| a.event_time_us),
        },
        Stream::Adt => bundle.adt.as_ref().map(|a| a.event_time_us),
        Stream::DeadLetters => bundle.dead_letter.as_ref().map(|d| d.received_us),
        Stream::Audit => bundle.audit.as_ref().map(|a| a.time_us),
        Stream::Waveforms => bundle.waveforms.first().map(|w| w.receive_time_us),
    }
    .filter(|us| *us > 0)?;
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

/// The Kafka values of `bundles`, in order. Mapping and signing (one SHA-256 pass over every
/// value, see [`crate::signing::envelope`]) are most of a cycle's CPU, so a cycle of many bundles is split over up to
/// [`MAX_MAP_THREADS`] threads, leaving one CPU to the rest of the gateway (ingest, the store
/// writer, alarms): on a 2-core gateway that is one thread. Two threads there replayed no faster
/// (the backlog drains at `backlog_rate`, 100k obs/s by default, either way) but doubled the live
/// ACK p99 (13.7 → 31.7 ms) and raised the peak RSS from 140 to 165 MiB (`--bench replay`, 1M).
pub(super) fn map_and_sign(mapper: &Mapper, bundles: &[PlannedBundle]) -> Vec<Value> {
    let spare =
        std::thread::available_parallelism().map_or(1, |n| usize::from(n).saturating_sub(1));
    map_and_sign_on(mapper, bundles, spare)
}

/// [`map_and_sign`] on at most `threads` threads (scoped: all are joined before this returns);
/// the values do not depend on which thread made them.
pub(super) fn map_and_sign_on(
    mapper: &Mapper,
    bundles: &[PlannedBundle],
    threads: usize,
) -> Vec<Value> {
    let threads = threads
        .min(MAX_MAP_THREADS)
        .min(bundles.len() / MIN_BUNDLES_PER_THREAD)
        .max(1);
    if threads == 1 {
        return bundles.iter().map(|b| mapper.value(b)).collect();
    }
    let chunk = bundles.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut chunks = bundles.chunks(chunk);
        let first = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks
            .map(|c| scope.spawn(move || c.iter().map(|b| mapper.value(b)).collect::<Vec<_>>()))
            .collect();
        let mut values: Vec<Value> = first.iter().map(|b| mapper.value(b)).collect();
        for handle in others {
            match handle.join() {
                Ok(part) => values.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        values
    })
}

/// The Kafka key of a bundle: its patient when associated, else its device (DESIGN: "patient id,
/// or device id when unassociated"); an audit entry's is the gateway (DESIGN: `icu.audit` keyed
/// by gateway id), so the chain stays in one partition, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecordKey<'a> {
    Patient(&'a str),
    Device(&'a str),
    Gateway(&'a str),
}

impl<'a> RecordKey<'a> {
    pub(super) fn as_str(self) -> &'a str {
        match self {
            RecordKey::Patient(id) | RecordKey::Device(id) | RecordKey::Gateway(id) => id,
        }
    }
}

pub(super) fn record_key<'a>(bundle: &'a PlannedBundle, gateway_id: &'a str) -> RecordKey<'a> {
    if bundle.stream == Stream::Audit {
        return RecordKey::Gateway(gateway_id);
    }
    match bundle.patient_id.trim() {
        "" => RecordKey::Device(&bundle.device_id),
        patient => RecordKey::Patient(patient),
    }
}

/// The media type of a stream's values.
pub(super) fn content_type(stream: Stream) -> &'static str {
    match stream {
        Stream::DeadLetters => headers::CONTENT_TYPE_JSON,
        Stream::Observations | Stream::Alarms | Stream::Adt | Stream::Audit | Stream::Waveforms => {
            headers::CONTENT_TYPE_FHIR_JSON
        }
    }
}

/// The `icu-schema-version` of a stream's values.
pub(super) fn schema_version(stream: Stream) -> &'static str {
    match stream {
        Stream::DeadLetters => headers::SCHEMA_DEADLETTER_V1,
        Stream::Observations | Stream::Alarms | Stream::Adt | Stream::Audit | Stream::Waveforms => {
            headers::SCHEMA_FHIR_V2
        }
    }
}

/// Why one record was not delivered.
#[derive(Debug, Clone)]
pub(super) struct DeliveryError {
    pub(super) reason: String,
    pub(super) unknown_topic: bool,
}

impl DeliveryError {
    pub(super) fn from_kafka(e: &KafkaError) -> Self {
        let unknown_topic = matches!(
            e.rdkafka_error_code(),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
        );
        Self {
            reason: e.to_string(),
            unknown_topic,
        }
    }
}
