//! The HL7v2/MLLP listener (PCD-01 from monitors).
//!
//! Owns: TCP connections from senders, framing (the shared `icu_drivers::mllp` codec),
//! routing each decoded message to its device actor, dead-lettering what is rejected, and the
//! ACK. Guarantees: AA is sent only after the store committed every observation of the message;
//! every rejected frame or message gets AE/AR with an ERR segment naming the problem, lands in
//! the dead-letter table, and the connection keeps serving the next frame; one connection's
//! bad input never affects another's. Connections are bounded (`mllp.max_connections`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::Addr;
use futures::{SinkExt, StreamExt};
use icu_drivers::hl7::{
    build_ack, decode_adt, decode_pcd01, parse_header, AckCode, ErrorCode, Hl7Error, MessageHeader,
    Pcd01Message,
};
use icu_drivers::mllp::{MllpCodec, MllpEvent};
use icu_drivers::terminology::Terminology;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::codec::Framed;

use crate::census::actor::{ApplyAdt, CensusActor};
use crate::census::ApplyOutcome;
use crate::clock::now_us;
use crate::device::{DeviceActor, IngestPcd01};
use crate::live::LiveState;
use crate::store::{db::digest, Append, DeadLetter, Store, WriteOutcome, WriteRequest};

/// Most bytes of a rejected input kept in its dead letter.
const DEAD_LETTER_MAX_RAW: usize = 64 * 1024;

/// Counters of the MLLP transport.
#[derive(Debug, Default)]
pub struct MllpStats {
    pub connections: AtomicU64,
    pub connections_refused: AtomicU64,
    pub frames: AtomicU64,
    pub acks_aa: AtomicU64,
    pub acks_ae: AtomicU64,
    pub acks_ar: AtomicU64,
    pub dead_letters: AtomicU64,
}

impl MllpStats {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "connections": self.connections.load(Ordering::Relaxed),
            "connections_refused": self.connections_refused.load(Ordering::Relaxed),
            "frames": self.frames.load(Ordering::Relaxed),
            "acks_aa": self.acks_aa.load(Ordering::Relaxed),
            "acks_ae": self.acks_ae.load(Ordering::Relaxed),
            "acks_ar": self.acks_ar.load(Ordering::Relaxed),
            "dead_letters": self.dead_letters.load(Ordering::Relaxed),
        })
    }
}

/// A device as the listener routes to it.
#[derive(Clone)]
pub struct Route {
    pub device_id: String,
    pub addr: Addr<DeviceActor>,
}

/// What every connection needs.
pub struct Ingest {
    /// Device actors by every identifier that recognises them (`devices[].match`).
    pub routes: HashMap<String, Route>,
    pub store: Addr<Store>,
    pub live: Arc<LiveState>,
    pub terminology: Arc<Terminology>,
    pub max_frame_bytes: usize,
    pub stats: Arc<MllpStats>,
    /// The ADT census (ADT messages arrive on the same listener).
    pub census: Addr<CensusActor>,
    ack_counter: AtomicU64,
}

impl Ingest {
    pub fn new(
        routes: HashMap<String, Route>,
        store: Addr<Store>,
        live: Arc<LiveState>,
        terminology: Arc<Terminology>,
        max_frame_bytes: usize,
        stats: Arc<MllpStats>,
        census: Addr<CensusActor>,
    ) -> Self {
        Self {
            routes,
            store,
            live,
            terminology,
            max_frame_bytes,
            stats,
            census,
            ack_counter: AtomicU64::new(0),
        }
    }

    /// Finds the device that sent a message: equipment EUI-64, then MSH-3 components, then MSH-3.
    fn route(&self, msg_equipment: Option<&str>, header: &MessageHeader) -> Option<&Route> {
        let msh3 = &header.sending_application;
        let mut comps = msh3.split('^');
        let ns = comps.next().unwrap_or_default();
        let uid = comps.next().unwrap_or_default();
        [msg_equipment.unwrap_or_default(), uid, ns, msh3.as_str()]
            .into_iter()
            .filter(|k| !k.is_empty())
            .find_map(|k| self.routes.get(k))
    }

    fn next_ack_id(&self) -> String {
        format!(
            "GWACK{}",
            self.ack_counter.fetch_add(1, Ordering::Relaxed) + 1
        )
    }
}

/// Accepts connections until `shutdown` turns true.
///
/// Connections are spread round-robin over a pool of worker arbiters (one per CPU, at most 8),
/// so decoding one sender's messages never queues behind another's on a single thread, and
/// never on the system arbiter that runs the device actors. On shutdown the listener waits (up
/// to 10 s) for open connections to finish their current message before stopping the pool.
pub async fn serve(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let pool: Vec<actix::Arbiter> = (0..workers).map(|_| actix::Arbiter::new()).collect();
    let mut next_worker = 0usize;
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "mllp accept failed");
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    ingest.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, max_connections, "mllp connection refused: too many open connections");
                    continue;
                };
                // A tokio socket belongs to the reactor that accepted it: hand the worker the OS
                // socket and let it register the stream with its own reactor.
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "mllp connection could not be handed to a worker");
                        continue;
                    }
                };
                ingest.stats.connections.fetch_add(1, Ordering::Relaxed);
                let ingest = ingest.clone();
                let shutdown = shutdown.clone();
                let worker = &pool[next_worker % pool.len()];
                next_worker = next_worker.wrapping_add(1);
                let spawned = worker.spawn(async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => connection(stream, peer, ingest, shutdown).await,
                        Err(e) => tracing::warn!(%peer, error = %e, "mllp connection could not be registered"),
                    }
                    drop(permit);
                });
                if !spawned {
                    tracing::error!(%peer, "mllp worker stopped: connection closed");
                }
            }
        }
    }
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(std::time::Duration::from_secs(10), slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("mllp connections still open after 10 s; closing them");
    }
    for worker in pool {
        worker.stop();
    }
    tracing::info!("mllp listener stopped");
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    ingest: Arc<Ingest>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    tracing::info!(%peer, "mllp connection opened");
    let mut framed = Framed::new(stream, MllpCodec::new(ingest.max_frame_bytes));
    loop {
        let event = tokio::select! {
            _ = shutdown.changed() => break,
            e = framed.next() => e,
        };
        let event = match event {
            None => break,
            Some(Err(e)) => {
                tracing::warn!(%peer, error = %e, "mllp connection failed");
                break;
            }
            Some(Ok(ev)) => ev,
        };
        ingest.stats.frames.fetch_add(1, Ordering::Relaxed);
        let ack = handle_event(&ingest, peer, event).await;
        if let Err(e) = framed.send(ack.as_bytes()).await {
            tracing::warn!(%peer, error = %e, "mllp ack could not be written");
            break;
        }
    }
    tracing::info!(%peer, "mllp connection closed");
}

/// Handles one framing event and returns the ACK text to send.
async fn handle_event(ingest: &Ingest, peer: SocketAddr, event: MllpEvent) -> String {
    let received = now_us();
    match event {
        MllpEvent::Frame { offset, payload } => {
            handle_frame(ingest, peer, offset, &payload, received).await
        }
        MllpEvent::Garbage { offset, len, head } => {
            let err = Hl7Error::new(
                AckCode::AR,
                ErrorCode::SegmentSequenceError,
                None,
                format!(
                    "{len} bytes outside an MLLP frame (expected 0x0B) at stream offset {offset} from {peer} were discarded"
                ),
            );
            reject(ingest, peer, None, None, offset, &head, len, &err, received).await
        }
        MllpEvent::Oversized { offset, len, head } => {
            let err = Hl7Error::new(
                AckCode::AR,
                ErrorCode::ApplicationInternalError,
                None,
                format!(
                    "MLLP frame of {len} bytes at stream offset {offset} from {peer} exceeds the {} byte limit (mllp.max_frame_bytes)",
                    ingest.max_frame_bytes
                ),
            );
            reject(ingest, peer, None, None, offset, &head, len, &err, received).await
        }
    }
}

async fn handle_frame(
    ingest: &Ingest,
    peer: SocketAddr,
    offset: u64,
    payload: &[u8],
    received: i64,
) -> String {
    if parse_header(payload).is_ok_and(|h| h.message_type == "ADT") {
        return handle_adt(ingest, peer, offset, payload, received).await;
    }
    let (message, route) = match decode_and_route(ingest, payload, received) {
        Ok(found) => found,
        Err(refused) => {
            let Refused {
                err,
                header,
                device,
            } = *refused;
            if let Some(d) = &device {
                ingest.live.record_error(d, &err.to_string());
            }
            return reject(
                ingest,
                peer,
                header.as_ref(),
                device,
                offset,
                payload,
                payload.len(),
                &err,
                received,
            )
            .await;
        }
    };
    let header = message.header.clone();
    let n = message.observations.len();
    let result = route
        .addr
        .send(IngestPcd01 {
            message,
            digest: digest(payload),
            receive_time_us: received,
        })
        .await;
    match result {
        Ok(Ok(outcome)) => {
            if let WriteOutcome::Duplicate {
                first_seq,
                last_seq,
            } = outcome
            {
                tracing::info!(device = %route.device_id, control_id = %header.control_id, first_seq, last_seq,
                    "repeated message recognised; acknowledged without storing it again");
            } else {
                tracing::debug!(device = %route.device_id, observations = n, ?outcome, "message stored");
            }
            ack(ingest, Some(&header), AckCode::AA, None)
        }
        Ok(Err(err)) => {
            tracing::error!(device = %route.device_id, %peer, control_id = %header.control_id, error = %err,
                "message not stored; sender told to resend");
            ack(ingest, Some(&header), err.ack, Some(&err))
        }
        Err(_) => {
            let err = Hl7Error::internal(format!(
                "device actor for {} is not running",
                route.device_id
            ));
            ack(ingest, Some(&header), err.ack, Some(&err))
        }
    }
}

fn ack(
    ingest: &Ingest,
    header: Option<&MessageHeader>,
    code: AckCode,
    err: Option<&Hl7Error>,
) -> String {
    let counter = match code {
        AckCode::AA => &ingest.stats.acks_aa,
        AckCode::AE => &ingest.stats.acks_ae,
        AckCode::AR => &ingest.stats.acks_ar,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    build_ack(header, code, err, &ingest.next_ack_id(), chrono::Utc::now())
}

/// An ADT message: census first (its own transaction), then the event for `icu.adt` in the
/// store; AA only when both committed.
async fn handle_adt(
    ingest: &Ingest,
    peer: SocketAddr,
    offset: u64,
    payload: &[u8],
    received: i64,
) -> String {
    let message = match decode_adt(payload) {
        Ok(m) => m,
        Err(err) => {
            let header = parse_header(payload).ok();
            return reject(
                ingest,
                peer,
                header.as_ref(),
                None,
                offset,
                payload,
                payload.len(),
                &err,
                received,
            )
            .await;
        }
    };
    let header = message.header.clone();
    let applied = ingest
        .census
        .send(ApplyAdt {
            message,
            received_us: received,
        })
        .await;
    let (outcome, event) = match applied {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            let err = e.to_hl7_error();
            return reject(
                ingest,
                peer,
                Some(&header),
                None,
                offset,
                payload,
                payload.len(),
                &err,
                received,
            )
            .await;
        }
        Err(_) => {
            let err = Hl7Error::internal("the ADT census is not running");
            return ack(ingest, Some(&header), err.ack, Some(&err));
        }
    };
    tracing::info!(%peer, control_id = %header.control_id, outcome = %outcome, "adt applied");
    if !matches!(outcome, ApplyOutcome::Duplicate { .. }) {
        let stored = ingest.store.send(Append(WriteRequest::Adt(event))).await;
        match stored {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let err = crate::device::store_error_to_hl7(&e);
                return ack(ingest, Some(&header), err.ack, Some(&err));
            }
            Err(_) => {
                let err = crate::device::store_error_to_hl7(&crate::store::StoreError::Closed);
                return ack(ingest, Some(&header), err.ack, Some(&err));
            }
        }
    }
    match outcome.hl7_error() {
        Some(err) => {
            tracing::warn!(%peer, control_id = %header.control_id, reason = %err.message, "adt accepted with an error");
            ack(ingest, Some(&header), err.ack, Some(&err))
        }
        None => ack(ingest, Some(&header), AckCode::AA, None),
    }
}

/// A refused frame, with whatever could be learned of its sender.
struct Refused {
    err: Hl7Error,
    header: Option<MessageHeader>,
    /// The configured device, if the header names one.
    device: Option<String>,
}

/// Decodes a frame and finds its device.
fn decode_and_route(
    ingest: &Ingest,
    payload: &[u8],
    received: i64,
) -> Result<(Pcd01Message, Route), Box<Refused>> {
    let message = decode_pcd01(payload, received, &ingest.terminology).map_err(|err| {
        let header = parse_header(payload).ok();
        let device = header
            .as_ref()
            .and_then(|h| ingest.route(None, h))
            .map(|r| r.device_id.clone());
        Box::new(Refused {
            err,
            header,
            device,
        })
    })?;
    match ingest.route(message.equipment_id.as_deref(), &message.header) {
        Some(route) => Ok((message, route.clone())),
        None => {
            let id = message
                .equipment_id
                .clone()
                .unwrap_or_else(|| message.header.sending_application.clone());
            Err(Box::new(Refused {
                err: Hl7Error::unknown_device(id),
                header: Some(message.header),
                device: None,
            }))
        }
    }
}

/// Dead-letters a rejected input and builds its AE/AR. If even the dead letter cannot be
/// stored, the answer is still AE/AR (never AA) and the failure is logged.
#[allow(clippy::too_many_arguments)]
async fn reject(
    ingest: &Ingest,
    peer: SocketAddr,
    header: Option<&MessageHeader>,
    device_id: Option<String>,
    offset: u64,
    raw: &[u8],
    raw_len: usize,
    err: &Hl7Error,
    received: i64,
) -> String {
    tracing::warn!(%peer, device = device_id.as_deref().unwrap_or("unknown"), offset,
        code = err.code.code(), location = ?err.location.as_ref().map(|l| l.to_string()),
        reason = %err.message, "mllp input rejected");
    let letter = DeadLetter {
        received_us: received,
        transport: "mllp".into(),
        peer: peer.to_string(),
        device_id,
        stream_offset: offset,
        ack_code: err.ack.as_str().into(),
        error_code: err.code.code(),
        location: err.location.as_ref().map(|l| l.to_string()),
        reason: err.message.clone(),
        raw: raw[..raw.len().min(DEAD_LETTER_MAX_RAW)].to_vec(),
        raw_len,
    };
    match ingest
        .store
        .send(Append(WriteRequest::DeadLetter(letter)))
        .await
    {
        Ok(Ok(_)) => {
            ingest.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Err(e)) => tracing::error!(error = %e, %peer, "dead letter could not be stored"),
        Err(_) => tracing::error!(%peer, "dead letter could not be stored: store stopped"),
    }
    ack(ingest, header, err.ack, Some(err))
}
