//! MQTT devices (infusion pumps, wearables) through the hospital's or the ICU's broker.
//!
//! Owns: routing each received publish to its device actor and deciding its acknowledgement.
//! Topic scheme and payloads are `icu_drivers::mqtt`'s (`icu/<gateway>/bed/<bed>/device/<device>/obs/json|pb`).
//! Guarantees: a message is acknowledged (PUBACK) only after the store committed its readings,
//! or after it was rejected and kept as a dead letter; a store failure leaves it unacknowledged
//! so the broker delivers it again. A topic naming an unconfigured device, or a bed other than
//! the device's configured bed, is refused: the gateway never files a reading under a bed (and
//! so a patient) that the configuration does not give it.

use std::collections::HashMap;
use std::sync::Arc;

use actix::dev::SendError;
use actix::Addr;
use futures::future::BoxFuture;
use icu_drivers::mqtt::{decode_payload, Disposition, MqttMessage, ObsTopic};
use icu_drivers::terminology::Terminology;
use tokio::sync::oneshot;

use crate::clock::now_us;
use crate::device::{DeviceActor, IngestObservations, QueueObservations};
use crate::live::LiveState;
use crate::store::{db::digest, Append, DeadLetter, Store, WriteRequest};

/// Most publishes between their arrival and their commit at once (all devices together): they
/// are handed to their device actors in arrival order and committed together (group commit),
/// then acknowledged in arrival order. The broker's in-flight window (mosquitto:
/// `max_inflight_messages`, 20 by default) may bound this further.
pub const MAX_IN_FLIGHT: usize = 256;

/// An MQTT device as the router sees it.
#[derive(Clone)]
pub struct MqttRoute {
    pub bed: String,
    pub addr: Addr<DeviceActor>,
}

pub struct MqttRouter {
    pub gateway_id: String,
    pub routes: HashMap<String, MqttRoute>,
    pub store: Addr<Store>,
    pub live: Arc<LiveState>,
    pub terminology: Arc<Terminology>,
    pub max_payload_bytes: usize,
}

impl MqttRouter {
    async fn reject(&self, msg: &MqttMessage, device: Option<&str>, reason: String) -> Disposition {
        tracing::warn!(topic = %msg.topic, device = device.unwrap_or("unknown"), %reason, "mqtt message rejected");
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
        match self
            .store
            .send(Append(WriteRequest::DeadLetter(letter)))
            .await
        {
            Ok(Ok(_)) => Disposition::Rejected(reason),
            // Not even the dead letter is stored: leave it unacknowledged, it comes back.
            Ok(Err(e)) => Disposition::NotStored(format!("{reason}; dead letter not stored: {e}")),
            Err(_) => Disposition::NotStored(format!("{reason}; store stopped")),
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
        let topic = match ObsTopic::parse(&msg.topic, &self.gateway_id) {
            Ok(t) => t,
            Err(e) => {
                let reason = format!("topic '{}': {e}", msg.topic);
                return Box::pin(async move { self.reject(&msg, None, reason).await });
            }
        };
        let Some(route) = self.routes.get(&topic.device_id) else {
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
        let dedup =
            (!batch.msg_id.is_empty()).then(|| (batch.msg_id.clone(), digest(&msg.payload)));
        let (reply, stored) = oneshot::channel();
        let queued = QueueObservations {
            ingest: IngestObservations {
                observations: batch.observations,
                dedup,
                receive_time_us: received,
            },
            reply,
        };
        let gone = || -> BoxFuture<'static, Disposition> {
            Box::pin(std::future::ready(Disposition::NotStored(
                "device actor stopped".into(),
            )))
        };
        match route.addr.try_send(queued) {
            Ok(()) => {}
            // A full mailbox: wait for room (and for the actor to take it), still in order, as
            // nothing else is dispatched meanwhile.
            Err(SendError::Full(queued)) => {
                if route.addr.send(queued).await.is_err() {
                    return gone();
                }
            }
            Err(SendError::Closed(_)) => return gone(),
        }
        Box::pin(async move {
            match stored.await {
                Ok(Ok(_)) => Disposition::Stored,
                Ok(Err(e)) => Disposition::NotStored(e.to_string()),
                Err(_) => Disposition::NotStored("device actor stopped".into()),
            }
        })
    }
}
