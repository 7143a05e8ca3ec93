//! MQTT devices (infusion pumps, wearables) through the hospital's or the ICU's broker.
//!
//! Owns: routing each received publish to its device actor and deciding its acknowledgement.
//! Topic scheme and payloads are `icu_drivers::mqtt`'s (`icu/<gateway>/bed/<bed>/device/<device>/obs/json|pb`).
//! Guarantees: a message is acknowledged (PUBACK) only after the store committed its readings,
//! or after it was rejected (and kept as a dead letter while the store has room for one). A
//! topic naming an unconfigured device, or a bed other than the device's configured bed, is
//! refused: the gateway never files a reading under a bed (and so a patient) that the
//! configuration does not give it.
//!
//! # A message the store refused
//!
//! A valid message the store refuses (disk budget, overload, I/O error) is **held and retried**
//! here, not left unacknowledged: a broker resends an unacknowledged message only to a new
//! session, and once its in-flight window for the gateway (mosquitto `max_inflight_messages`,
//! 20 by default) is full of such messages it stops delivering, so readings would stop until
//! the connection broke. Resuming the session instead (disconnect, reconnect with
//! `clean_session = false`) was rejected: it also drops the in-flight messages that the store
//! did accept but whose PUBACK waits behind the refused one, brokers differ in whether and when
//! they resend, and it turns a store condition into a connection cycle. Holding keeps the one
//! connection and its ordering:
//!
//! - The held message is retried after 100 ms, the wait doubling up to 5 s
//!   ([`RETRY_FIRST`], [`RETRY_MAX`]) while the store still refuses; once it is stored it is
//!   acknowledged, and PUBACKs still leave in arrival order, each after its commit (the
//!   transport keeps that order), so nothing is acknowledged before it is durable.
//! - Per device, arrival order is the store's order. Messages of one device are written as
//!   [`WriteOrder::InOrder`]: after one is refused, the store defers every later one of that
//!   device (they may already be on their way) until the refused ones are stored, so none can
//!   overtake it when room appears meanwhile. The held messages of a device are retried one at a
//!   time, oldest first, each only when no older message of that device is still on its way
//!   ([`WriteOrder::Retry`]); the last one releases the device.
//! - The alarm engine and the live view see a message once, when it arrives (a retry is only
//!   stored), so the alarm path never waits for the disk. But MQTT sends PUBACKs in arrival
//!   order, so while a message is held the broker's window fills and it keeps every later message
//!   (of every MQTT device) until the store accepts again: nothing is lost, those readings reach
//!   the engine late, and each silent device raises its stale-feed technical alarm meanwhile.
//! - Memory: a held message is one the broker has not had a PUBACK for, so the broker's
//!   in-flight window bounds them (and [`MAX_IN_FLIGHT`] bounds them whatever the broker says);
//!   a held message keeps its payload (`Bytes`) and is decoded again for its retry.
//! - Bad input (bad topic, unknown device, wrong bed, payload that does not decode) is still
//!   rejected, kept as a dead letter and acknowledged. A dead letter the store refuses for its
//!   budget is not kept (counted in [`MqttHoldStats::dead_letters_refused`] and logged) and the
//!   message is acknowledged anyway, so a flood of bad input can neither fill the disk nor the
//!   window; a dead letter refused for another reason (overload, I/O) is retried like a
//!   reading.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::dev::SendError;
use actix::Addr;
use futures::future::BoxFuture;
use icu_drivers::mqtt::{
    decode_payload, Disposition, MqttConfig, MqttMessage, ObsTopic, PayloadFormat,
};
use icu_drivers::terminology::Terminology;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::clock::now_us;
use crate::device::{DeviceActor, IngestObservations, QueueObservations};
use crate::domain::FieldProblem;
use crate::live::LiveState;
use crate::store::{
    db::digest, Append, DeadLetter, Store, StoreError, WriteOrder, WriteOutcome, WriteRequest,
};

/// The `[mqtt]` section of gateway `gateway_id`: the transport's own settings type
/// ([`MqttConfig`], read straight from the file with its defaults) given this gateway's id, and
/// every problem by the transport's own rules, under the file's names (`mqtt.broker_port`, ...).
pub fn settings(mut section: MqttConfig, gateway_id: &str) -> (MqttConfig, Vec<FieldProblem>) {
    let mut problems = Vec::new();
    if !section.gateway_id.is_empty() && section.gateway_id != gateway_id {
        problems.push(FieldProblem {
            field: "mqtt.gateway_id".into(),
            message: format!(
                "'{}' differs from the top-level gateway_id '{gateway_id}'; leave it out of [mqtt]",
                section.gateway_id
            ),
        });
    }
    section.gateway_id = gateway_id.to_owned();
    for (field, message) in section.problems() {
        // Reported once, as the top-level `gateway_id`.
        if field == "gateway_id" {
            continue;
        }
        problems.push(FieldProblem {
            field: format!("mqtt.{field}"),
            message,
        });
    }
    (section, problems)
}

/// Most publishes between their arrival and their commit at once (all devices together): they
/// are handed to their device actors in arrival order and committed together (group commit),
/// then acknowledged in arrival order. The broker's in-flight window (mosquitto:
/// `max_inflight_messages`, 20 by default) may bound this further.
pub const MAX_IN_FLIGHT: usize = 256;

/// First wait before a held message is retried; doubles while the store refuses.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two retries of a held message.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// Counters of held messages (see the module docs), for tests and the log.
#[derive(Debug, Default)]
pub struct MqttHoldStats {
    /// Messages held now (refused by the store, waiting for their retry).
    pub held: AtomicU64,
    /// Messages the store refused at first and that were held (so not acknowledged yet).
    pub held_total: AtomicU64,
    /// Retries of a held message that the store refused again.
    pub retries_refused: AtomicU64,
    /// Held messages stored by a retry (and so acknowledged).
    pub stored_after_retry: AtomicU64,
    /// Bad messages whose dead letter the store refused for its disk budget: acknowledged
    /// without being kept.
    pub dead_letters_refused: AtomicU64,
}

/// The held messages of one device and its messages on their way to the store, by arrival
/// number.
#[derive(Debug, Default)]
struct LaneState {
    next: u64,
    in_flight: BTreeSet<u64>,
    held: BTreeSet<u64>,
    backoff: Duration,
    next_try: Option<Instant>,
}

#[derive(Debug, Default)]
struct Lane {
    /// Held across the hand-over to the device actor, so arrival numbers are mailbox order.
    state: tokio::sync::Mutex<LaneState>,
    /// Woken when a message of this lane is answered or stored by a retry.
    turn: Notify,
}

/// Per-device lanes of the held-message retry (see the module docs).
#[derive(Debug, Default)]
pub struct MqttHolds {
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
    pub stats: Arc<MqttHoldStats>,
}

impl MqttHolds {
    fn lane(&self, device: &str) -> Arc<Lane> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes.entry(device.to_owned()).or_default().clone()
    }
}

/// An MQTT device as the router sees it.
#[derive(Clone)]
pub struct MqttRoute {
    pub bed: String,
    pub addr: Addr<DeviceActor>,
}

pub struct MqttRouter {
    pub gateway_id: String,
    /// MQTT devices by id; a configuration reload replaces the table.
    pub routes: Arc<crate::swap::Swap<HashMap<String, MqttRoute>>>,
    pub store: Addr<Store>,
    pub live: Arc<LiveState>,
    pub terminology: Arc<Terminology>,
    pub max_payload_bytes: usize,
    /// Messages the store refused, held and retried (see the module docs).
    pub holds: MqttHolds,
    /// `icu_ack_latency_seconds{transport="mqtt"}`: publish handed over to its PUBACK released
    /// (the disposition `Stored`, after the commit).
    pub ack_latency: prometheus::Histogram,
}

impl MqttRouter {
    async fn reject(&self, msg: &MqttMessage, device: Option<&str>, reason: String) -> Disposition {
        let routes = self.routes.load();
        let bed = device
            .and_then(|d| routes.get(d))
            .map_or("unknown", |r| r.bed.as_str());
        tracing::warn!(topic = %msg.topic, device = device.unwrap_or("unknown"), bed, %reason, "mqtt message rejected");
        if let Some(d) = device {
            self.live.record_error(d, &reason);
        }
        let letter = DeadLetter {
            received_us: now_us(),
            transport: "mqtt".into(),
            peer: msg.topic.clone(),
            device_id: device.map(str::to_owned),
            stream_offset: 0,
            ack_code: String::new(),
            error_code: 0,
            location: None,
            reason: reason.clone(),
            raw: msg.payload[..msg.payload.len().min(64 * 1024)].to_vec(),
            raw_len: msg.payload.len(),
        };
        let mut backoff = RETRY_FIRST;
        loop {
            match self
                .store
                .send(Append(WriteRequest::DeadLetter(letter.clone())))
                .await
            {
                Ok(Ok(_)) => return Disposition::Rejected(reason),
                // Over the budget: not kept, acknowledged anyway (bad input must not fill the
                // disk, nor the broker's window).
                Ok(Err(e @ StoreError::BudgetExceeded { .. })) => {
                    self.holds
                        .stats
                        .dead_letters_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic = %msg.topic, device = device.unwrap_or("unknown"), bed, error = %e,
                        "mqtt dead letter not kept: store over its budget; message acknowledged");
                    return Disposition::Rejected(format!("{reason}; dead letter not kept: {e}"));
                }
                Ok(Err(e)) => {
                    tracing::warn!(topic = %msg.topic, error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "mqtt dead letter not stored, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                Err(_) => return Disposition::NotStored(format!("{reason}; store stopped")),
            }
        }
    }

    /// Handles one publish; the transport acknowledges according to the answer.
    pub async fn handle(self: Arc<Self>, msg: MqttMessage) -> Disposition {
        self.dispatch(msg).await.await
    }

    /// Stage 1 of a publish, for [`icu_drivers::mqtt::MqttSubscriber::start_pipelined`]: checks
    /// and decodes it and puts its readings in the device actor's mailbox (waiting only when
    /// that mailbox is full), so the publishes of one device reach its actor, and so the store,
    /// in arrival order. Resolves to stage 2, which waits for the commit (or stores the dead
    /// letter) and gives the disposition that decides the acknowledgement.
    pub async fn dispatch(self: Arc<Self>, msg: MqttMessage) -> BoxFuture<'static, Disposition> {
        let arrived = Instant::now();
        let topic = match ObsTopic::parse(&msg.topic, &self.gateway_id) {
            Ok(t) => t,
            Err(e) => {
                let reason = format!("topic '{}': {e}", msg.topic);
                return Box::pin(async move { self.reject(&msg, None, reason).await });
            }
        };
        let Some(route) = self.routes.load().get(&topic.device_id).cloned() else {
            let reason = format!(
                "device '{}' is not configured as an MQTT device on this gateway",
                topic.device_id
            );
            return Box::pin(async move { self.reject(&msg, None, reason).await });
        };
        if route.bed != topic.bed_id {
            let reason = format!(
                "topic names bed '{}' but device '{}' is configured at bed '{}'; refused so no reading lands under the wrong bed",
                topic.bed_id, topic.device_id, route.bed
            );
            return Box::pin(
                async move { self.reject(&msg, Some(&topic.device_id), reason).await },
            );
        }
        let received = now_us();
        let format = topic.format;
        let batch = match decode_payload(
            topic.format,
            &msg.payload,
            self.max_payload_bytes,
            received,
            &self.terminology,
        ) {
            Ok(b) => b,
            Err(e) => {
                return Box::pin(async move {
                    self.reject(&msg, Some(&topic.device_id), e.to_string())
                        .await
                })
            }
        };
        let route = route.clone();
        // The publish's trace (disabled, and free, unless tracing is on): from its receipt to
        // the disposition that decides the PUBACK, the commit its child (as over MLLP).
        let (receipt, commit) = trace_spans(&topic.device_id, &route.bed, batch.observations.len());
        let traceparent = icu_cloud_bridge::trace::traceparent_of(&commit);
        let lane = self.holds.lane(&topic.device_id);
        let mut state = lane.state.lock().await;
        let n = state.next;
        state.next += 1;
        let stored = match queue(
            &route,
            batch,
            &msg,
            received,
            WriteOrder::InOrder,
            traceparent,
        )
        .await
        {
            Some(stored) => stored,
            None => {
                return Box::pin(std::future::ready(Disposition::NotStored(
                    "device actor stopped".into(),
                )))
            }
        };
        state.in_flight.insert(n);
        drop(state);
        Box::pin(async move {
            let _receipt = receipt;
            let outcome = tracing::Instrument::instrument(answer(stored), commit).await;
            let mut state = lane.state.lock().await;
            state.in_flight.remove(&n);
            match outcome {
                Ok(_) => {
                    drop(state);
                    lane.turn.notify_waiters();
                    self.ack_latency.observe(arrived.elapsed().as_secs_f64());
                    Disposition::Stored
                }
                Err(e) => {
                    if state.held.is_empty() {
                        state.backoff = RETRY_FIRST;
                        state.next_try = Some(Instant::now() + RETRY_FIRST);
                    }
                    state.held.insert(n);
                    drop(state);
                    let stats = &self.holds.stats;
                    stats.held.fetch_add(1, Ordering::Relaxed);
                    stats.held_total.fetch_add(1, Ordering::Relaxed);
                    if matches!(e, StoreError::Deferred { .. }) {
                        tracing::debug!(topic = %msg.topic, error = %e, "mqtt message held behind an earlier one");
                    } else {
                        tracing::warn!(topic = %msg.topic, device = %topic.device_id, bed = %route.bed, error = %e,
                            "mqtt message not stored: held and retried (not acknowledged until stored)");
                    }
                    let done = self
                        .retry_held(&route, &lane, n, &msg, format, received)
                        .await;
                    stats.held.fetch_sub(1, Ordering::Relaxed);
                    if done == Disposition::Stored {
                        self.ack_latency.observe(arrived.elapsed().as_secs_f64());
                    }
                    done
                }
            }
        })
    }

    /// Retries held message `n` until the store takes it: when it is the oldest held message of
    /// its device and no older one is still on its way, after the lane's backoff.
    async fn retry_held(
        &self,
        route: &MqttRoute,
        lane: &Lane,
        n: u64,
        msg: &MqttMessage,
        format: PayloadFormat,
        received: i64,
    ) -> Disposition {
        loop {
            let turn = lane.turn.notified();
            tokio::pin!(turn);
            turn.as_mut().enable();
            let state = lane.state.lock().await;
            let first = state.held.first() == Some(&n)
                && state.in_flight.first().is_none_or(|older| *older > n);
            if !first {
                drop(state);
                // The notification is the wake-up; the timeout only a safety net.
                let _ = tokio::time::timeout(RETRY_MAX, turn).await;
                continue;
            }
            if let Some(at) = state.next_try.filter(|at| *at > Instant::now()) {
                drop(state);
                tokio::time::sleep_until(at).await;
                continue;
            }
            let release = state.held.len() == 1 && state.in_flight.is_empty();
            // Decoded before with the same receive time: the same readings again.
            let batch = match decode_payload(
                format,
                &msg.payload,
                self.max_payload_bytes,
                received,
                &self.terminology,
            ) {
                Ok(b) => b,
                Err(e) => return Disposition::NotStored(e.to_string()),
            };
            // Still holding the lane: nothing of this device enters the mailbox before it.
            // A retry is only stored; its trace ended with the first attempt.
            let stored = queue(
                route,
                batch,
                msg,
                received,
                WriteOrder::Retry { release },
                None,
            )
            .await;
            drop(state);
            let outcome = match stored {
                Some(stored) => answer(stored).await,
                None => Err(StoreError::Closed),
            };
            let mut state = lane.state.lock().await;
            match outcome {
                Ok(_) => {
                    state.held.remove(&n);
                    state.backoff = RETRY_FIRST;
                    state.next_try = None;
                    drop(state);
                    lane.turn.notify_waiters();
                    self.holds
                        .stats
                        .stored_after_retry
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(topic = %msg.topic, release, "mqtt held message stored");
                    return Disposition::Stored;
                }
                Err(e) => {
                    state.backoff = (state.backoff * 2).clamp(RETRY_FIRST, RETRY_MAX);
                    state.next_try = Some(Instant::now() + state.backoff);
                    self.holds
                        .stats
                        .retries_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(topic = %msg.topic, error = %e,
                        retry_in_ms = state.backoff.as_millis() as u64, "mqtt held message refused again");
                }
            }
        }
    }
}

/// Puts a decoded message in its device actor's mailbox (waiting while it is full); `None` if
/// the actor is gone. Resolves to the store's answer.
async fn queue(
    route: &MqttRoute,
    batch: icu_drivers::mqtt::MqttBatch,
    msg: &MqttMessage,
    received: i64,
    order: WriteOrder,
    traceparent: Option<String>,
) -> Option<oneshot::Receiver<Result<WriteOutcome, StoreError>>> {
    let dedup = (!batch.msg_id.is_empty()).then(|| (batch.msg_id.clone(), digest(&msg.payload)));
    let (reply, stored) = oneshot::channel();
    let queued = QueueObservations {
        ingest: IngestObservations {
            observations: batch.observations,
            dedup,
            receive_time_us: received,
            order,
            traceparent,
            // Checked by the payload decoder (rate, count, bounded length); stored with the
            // readings in one commit.
            waveforms: batch.waveforms,
        },
        reply,
    };
    match route.addr.try_send(queued) {
        Ok(()) => Some(stored),
        // A full mailbox: wait for room (and for the actor to take it), still in order, as
        // nothing else is dispatched meanwhile.
        Err(SendError::Full(queued)) => route.addr.send(queued).await.ok().map(|()| stored),
        Err(SendError::Closed(_)) => None,
    }
}

/// The `mqtt.receive` root span of one publish and its `store.commit` child (target
/// `icu::trace`: disabled unless tracing is on).
fn trace_spans(device: &str, bed: &str, observations: usize) -> (tracing::Span, tracing::Span) {
    let n = observations as i64;
    let receipt = tracing::info_span!(target: icu_cloud_bridge::trace::TARGET, parent: None,
        "mqtt.receive", otel.kind = "consumer", transport = "mqtt", device, bed, observations = n);
    let commit = tracing::info_span!(target: icu_cloud_bridge::trace::TARGET, parent: &receipt,
        "store.commit", device, bed, observations = n);
    (receipt, commit)
}

async fn answer(
    stored: oneshot::Receiver<Result<WriteOutcome, StoreError>>,
) -> Result<WriteOutcome, StoreError> {
    stored.await.unwrap_or(Err(StoreError::Closed))
}
