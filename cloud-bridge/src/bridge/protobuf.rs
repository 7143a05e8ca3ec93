//! The protobuf topic (`[kafka] topic_observations_pb`, e.g. `icu.observations.pb`): each
//! observation bundle delivered to the FHIR topic is also sent as `icu.v1.ObservationBatch`
//! (key `icu.v1.StreamKey`, see [`super::mapper::ProtobufRecord`]) on a producer of its own.
//!
//! Guarantees:
//! - **The same promise as the FHIR topic.** A bundle is marked sent only when its protobuf
//!   record was delivered too (or kept as a dead letter, below); a protobuf record that failed
//!   for any other reason leaves the bundle unsent, so both records are sent again (the FHIR one
//!   identical: consumers deduplicate by seq).
//! - **A refusal is a dead letter, never a loop.** A record the broker refuses for good
//!   (INVALID_RECORD: its schema registry's `<topic>.proto` and the gateway's message disagree)
//!   is kept as a dead letter of the gateway (transport `kafka:<topic>`, location
//!   `<topic> seq A-B`, the refused bytes), forwarded to `icu.deadletter` like any dead letter,
//!   counted and shown in `/api/status` (`backbone.protobuf`: `state` `rejecting`,
//!   `rejected`, `last_rejection`), and logged; it is not sent again. A broker that refuses a
//!   batch refuses every record in it, so each becomes a dead letter.
//! - **Isolation.** The protobuf records go through their own idempotent producer, recreated
//!   after a refusal (the broker fences a producer whose batch it refused), so a refusal never
//!   stalls the FHIR topics.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use icu_outbox::BackboneDeadLetter;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureRecord;
use tracing::{debug, error, warn};

use super::mapper::{DeliveryError, Value};
use super::plan::PlannedBundle;
use super::stats::ProtobufRejection;
use super::{create_producer, owned_headers, Worker};

/// Most bytes of a refused record kept in its dead letter (as for rejected input).
const MAX_RAW: usize = 64 * 1024;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

impl Worker {
    /// Sends the protobuf record of every bundle whose FHIR record was delivered, and folds the
    /// outcome into `delivered` (see the module docs).
    pub(super) async fn deliver_protobuf(
        &mut self,
        bundles: &[PlannedBundle],
        values: &[Value],
        mut delivered: Vec<Result<(), DeliveryError>>,
    ) -> Vec<Result<(), DeliveryError>> {
        let (Some(topic), Some(producer)) = (
            self.config.topic_observations_pb.clone(),
            self.pb_producer.clone(),
        ) else {
            return delivered;
        };
        let mut pending = Vec::new();
        for (i, (ok, value)) in delivered.iter().zip(values).enumerate() {
            let (Ok(()), Ok(signed)) = (ok, value) else {
                continue;
            };
            let Some(pb) = &signed.protobuf else {
                continue;
            };
            let headers = owned_headers(&pb.headers);
            let record = FutureRecord::to(&topic)
                .key(pb.key.as_slice())
                .payload(pb.value.as_slice())
                .headers(headers);
            pending.push((i, producer.send_result(record).map_err(|(e, _)| e)));
        }
        if pending.is_empty() {
            return delivered;
        }
        let results = join_all(pending.into_iter().map(|(i, sent)| async move {
            let outcome = match sent {
                Err(e) => Err(e),
                Ok(future) => match future.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _message))) => Err(e),
                    Err(_canceled) => Err(KafkaError::Canceled),
                },
            };
            (i, outcome)
        }))
        .await;

        let (mut ok, mut refused, mut failed) = (0u64, 0u64, 0u64);
        for (i, outcome) in results {
            let bundle = &bundles[i];
            match outcome {
                Ok(()) => ok += 1,
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::InvalidRecord) => {
                    refused += 1;
                    if let Err(reason) = self.keep_refused(&topic, bundle, &values[i], &e).await {
                        delivered[i] = Err(DeliveryError {
                            reason,
                            unknown_topic: false,
                        });
                    }
                }
                Err(e) => {
                    failed += 1;
                    delivered[i] = Err(DeliveryError {
                        reason: format!("protobuf topic {topic}: {e}"),
                        unknown_topic: matches!(
                            e.rdkafka_error_code(),
                            Some(
                                RDKafkaErrorCode::UnknownTopicOrPartition
                                    | RDKafkaErrorCode::UnknownTopic
                            )
                        ),
                    });
                }
            }
        }
        self.stats.add_protobuf_delivered(ok);
        if refused > 0 {
            error!(%topic, refused, delivered = ok, "the broker refused protobuf records (INVALID_RECORD): its schema for the topic and the gateway's icu.v1.ObservationBatch disagree; each refused record is kept as a dead letter");
        }
        if failed > 0 {
            warn!(%topic, failed, "protobuf records not delivered; their bundles stay unsent and are sent again");
        }
        if refused + failed > 0 {
            self.reset_pb_producer();
        } else {
            debug!(%topic, delivered = ok, "protobuf records delivered");
        }
        delivered
    }

    /// Keeps a refused protobuf record as a dead letter; `Err` (the bundle stays unsent) when
    /// the store could not take it.
    async fn keep_refused(
        &self,
        topic: &str,
        bundle: &PlannedBundle,
        value: &Value,
        error: &KafkaError,
    ) -> Result<(), String> {
        let raw = value
            .as_ref()
            .ok()
            .and_then(|s| s.protobuf.as_ref())
            .map(|p| p.value.as_slice())
            .unwrap_or_default();
        let reason = format!(
            "the broker refused the record for topic {topic}: {error}; the schema its registry \
             holds for the topic and the gateway's icu.v1.ObservationBatch disagree"
        );
        let at_us = now_us();
        let letter = BackboneDeadLetter {
            received_us: at_us,
            transport: format!("kafka:{topic}"),
            peer: self.config.brokers.clone(),
            device_id: bundle.device_id.clone(),
            location: format!("{topic} seq {}-{}", bundle.first_seq, bundle.last_seq),
            reason: reason.clone(),
            raw: raw[..raw.len().min(MAX_RAW)].to_vec(),
            raw_len: raw.len(),
        };
        let outbox = self.outbox.clone();
        match tokio::task::spawn_blocking(move || outbox.dead_letter(letter)).await {
            Ok(Ok(())) => {
                self.stats.add_protobuf_rejection(ProtobufRejection {
                    device_id: bundle.device_id.clone(),
                    seq_first: bundle.first_seq,
                    seq_last: bundle.last_seq,
                    reason,
                    at_us,
                });
                Ok(())
            }
            Ok(Err(e)) => Err(format!(
                "protobuf record refused by {topic} and not kept as a dead letter: {e}"
            )),
            Err(e) => Err(format!("dead-letter task failed: {e}")),
        }
    }

    fn reset_pb_producer(&mut self) {
        match create_producer(&self.config, &self.failure) {
            Ok(producer) => {
                if let Some(old) = self.pb_producer.replace(producer) {
                    // Dropping a producer joins its polling thread: keep it off the actor.
                    drop(tokio::task::spawn_blocking(move || drop(old)));
                }
            }
            Err(e) => error!(error = %e, "cannot recreate the protobuf topic's kafka producer"),
        }
    }
}
