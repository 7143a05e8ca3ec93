//! One framing event to its answer: PCD-01 to the device actors (with the certificate and
//! address checks), ADT to the census, and every rejection to an AE/AR with an ERR segment and a
//! dead letter.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use icu_drivers::hl7::{
    build_ack, decode_adt, decode_pcd01_waveforms, parse_header, AckCode, ErrorCode, Hl7Error,
    MessageHeader, Pcd01Waveforms,
};
use icu_drivers::mllp::MllpEvent;
use tracing::{field::Empty, Instrument as _};

use crate::census::actor::ApplyAdt;
use crate::census::ApplyOutcome;
use crate::clock::now_us;
use crate::device::IngestObservations;
use crate::store::{db::digest, Append, DeadLetter, WriteOutcome, WriteRequest};

use super::ingest::{Ingest, Route};

/// Most bytes of a rejected input kept in its dead letter.
pub(super) const DEAD_LETTER_MAX_RAW: usize = 64 * 1024;

/// One input on an MLLP connection, as its dead letter and log lines name it.
pub(super) struct Input<'a> {
    pub(super) peer: SocketAddr,
    /// Stream offset of its first byte.
    pub(super) offset: u64,
    /// Its bytes (a frame's payload, or the head of what was discarded).
    pub(super) raw: &'a [u8],
    /// Its full length (more than `raw` when only the head was kept).
    pub(super) raw_len: usize,
    pub(super) received: i64,
}

impl Input<'_> {
    /// Its dead letter, unanswered (no ACK code) unless the caller fills the answer in.
    pub(super) fn dead_letter(&self, device_id: Option<String>, reason: String) -> DeadLetter {
        DeadLetter {
            received_us: self.received,
            transport: "mllp".into(),
            peer: self.peer.to_string(),
            device_id,
            stream_offset: self.offset,
            ack_code: String::new(),
            error_code: 0,
            location: None,
            reason,
            raw: self.raw[..self.raw.len().min(DEAD_LETTER_MAX_RAW)].to_vec(),
            raw_len: self.raw_len,
        }
    }
}

/// Handles one framing event and returns the ACK text to send, if any: bytes outside a frame
/// are dead-lettered but never answered, so that every ACK answers a message the sender sent.
pub(super) async fn handle_event(
    ingest: &Ingest,
    peer: SocketAddr,
    identity: Option<&crate::tls::PeerIdentity>,
    event: MllpEvent,
) -> Option<String> {
    let received = now_us();
    match event {
        MllpEvent::Frame { offset, payload } => {
            ingest.stats.frames.fetch_add(1, Ordering::Relaxed);
            let input = Input {
                peer,
                offset,
                raw: &payload,
                raw_len: payload.len(),
                received,
            };
            let (answer, device) = handle_frame(ingest, identity, &input).await;
            // The device console's last messages, under the device the routing attributed.
            if let Some(device) = device {
                ingest
                    .live
                    .record_exchange(&device, received, &payload, &answer);
            }
            Some(answer)
        }
        MllpEvent::Garbage { offset, len, head } => {
            ingest.stats.noise.fetch_add(1, Ordering::Relaxed);
            let reason = format!(
                "{len} bytes outside an MLLP frame (expected 0x0B) at stream offset {offset} from {peer} were discarded, not answered"
            );
            tracing::warn!(%peer, offset, len, "mllp noise outside a frame discarded (not answered)");
            let input = Input {
                peer,
                offset,
                raw: &head,
                raw_len: len,
                received,
            };
            store_dead_letter(ingest, input.dead_letter(None, reason)).await;
            None
        }
        MllpEvent::Oversized { offset, len, head } => {
            ingest.stats.frames.fetch_add(1, Ordering::Relaxed);
            let err = Hl7Error::new(
                AckCode::AR,
                ErrorCode::ApplicationInternalError,
                None,
                format!(
                    "MLLP frame of {len} bytes at stream offset {offset} from {peer} exceeds the {} byte limit (mllp.max_frame_bytes)",
                    ingest.max_frame_bytes
                ),
            );
            let input = Input {
                peer,
                offset,
                raw: &head,
                raw_len: len,
                received,
            };
            Some(reject(ingest, &input, None, None, &err).await)
        }
    }
}

async fn handle_frame(
    ingest: &Ingest,
    identity: Option<&crate::tls::PeerIdentity>,
    input: &Input<'_>,
) -> (String, Option<String>) {
    let (peer, payload, received) = (input.peer, input.raw, input.received);
    if parse_header(payload).is_ok_and(|h| h.message_type == "ADT") {
        return (handle_adt(ingest, identity, input).await, None);
    }
    let decoded = tracing::info_span!(target: icu_cloud_bridge::trace::TARGET, "hl7.decode",
        bytes = payload.len() as i64, observations = Empty)
    .in_scope(|| {
        let found = decode_and_route(ingest, payload, received);
        if let Ok((decoded, _)) = &found {
            let n = decoded.message.observations.len();
            tracing::Span::current().record("observations", n as i64);
        }
        found
    });
    let (message, waveforms, route) = match decoded {
        Ok((decoded, route)) => (decoded.message, decoded.segments, route),
        Err(refused) => {
            let Refused {
                err,
                header,
                device,
            } = *refused;
            if let Some(d) = &device {
                ingest.live.record_error(d, &err.to_string());
                let receipt = tracing::Span::current();
                if !receipt.is_disabled() {
                    receipt.record("device", d.as_str());
                    receipt.record("bed", ingest.bed_of(d).unwrap_or_default());
                }
            }
            let answer = reject(ingest, input, header.as_ref(), device.clone(), &err).await;
            return (answer, device);
        }
    };
    let header = message.header.clone();
    let receipt = tracing::Span::current();
    if !receipt.is_disabled() {
        receipt.record("device", route.device_id.as_str());
        receipt.record("bed", route.bed.as_str());
        receipt.record("control_id", header.control_id.as_str());
        receipt.record("observations", message.observations.len() as i64);
    }
    // The sender must be this device: the certificate (with a client certificate) must name the
    // device the message claims, and the address must be one its `allow_from` lists.
    let mut refusal = None;
    if let Some(id) = identity {
        let msh3 = header.sending_application.split('^').collect::<Vec<_>>();
        let mut claims = vec![route.device_id.as_str()];
        claims.extend(message.equipment_id.as_deref());
        claims.extend(msh3.iter().copied().take(2));
        if !id.names_any(&claims) {
            ingest
                .stats
                .identity_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, device = %route.device_id, bed = %route.bed, certificate = %id.describe(),
                control_id = %header.control_id, "message refused: its device is not the one its TLS client certificate names");
            refusal = Some(format!(
                "message for device {} refused: the sender's certificate names {} (the certificate's subject or SAN must name the device id or EUI-64)",
                route.device_id,
                id.describe()
            ));
        }
    }
    if refusal.is_none() && !route.allow_from.allows(peer.ip()) {
        ingest.stats.peers_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, device = %route.device_id, bed = %route.bed, allow_from = %route.allow_from,
            control_id = %header.control_id, "message refused: sender address not allowed for its device");
        refusal = Some(format!(
            "message for device {} from {peer} refused: that address is not allowed for this device (devices[].allow_from)",
            route.device_id
        ));
    }
    if let Some(why) = refusal {
        let err = Hl7Error::new(AckCode::AR, ErrorCode::ApplicationInternalError, None, why);
        ingest.live.record_error(&route.device_id, &err.to_string());
        let answer = reject(
            ingest,
            input,
            Some(&header),
            Some(route.device_id.clone()),
            &err,
        )
        .await;
        return (answer, Some(route.device_id));
    }
    let n = message.observations.len();
    // From the hand-off to the device actor until the commit holding the message returned; its
    // context goes into the stored records, so the bridge's delivery continues this trace.
    let commit = tracing::info_span!(target: icu_cloud_bridge::trace::TARGET, "store.commit",
        device = %route.device_id, bed = %route.bed, observations = n as i64, seq_first = Empty,
        seq_last = Empty, outcome = Empty, otel.status_code = Empty);
    let traceparent = icu_cloud_bridge::trace::traceparent_of(&commit);
    let result = route
        .addr
        .send(IngestObservations {
            dedup: Some((message.header.control_id.clone(), digest(payload))),
            observations: message.observations,
            waveforms,
            receive_time_us: received,
            order: crate::store::WriteOrder::Independent,
            traceparent,
        })
        .instrument(commit.clone())
        .await
        .map(|stored| stored.map_err(|e| store_error_to_hl7(&e)));
    if !commit.is_disabled() {
        match &result {
            Ok(Ok(WriteOutcome::Stored {
                first_seq,
                last_seq,
            })) => {
                commit.record("seq_first", *first_seq as i64);
                commit.record("seq_last", *last_seq as i64);
                commit.record("outcome", "stored");
            }
            Ok(Ok(WriteOutcome::Duplicate { .. })) => {
                commit.record("outcome", "duplicate");
            }
            Ok(Ok(_)) => {
                commit.record("outcome", "other");
            }
            Ok(Err(_)) | Err(_) => {
                commit.record("outcome", "refused");
                commit.record("otel.status_code", "ERROR");
            }
        }
    }
    drop(commit);
    let answer = match result {
        Ok(Ok(outcome)) => {
            if let WriteOutcome::Duplicate {
                first_seq,
                last_seq,
            } = outcome
            {
                tracing::info!(device = %route.device_id, bed = %route.bed, control_id = %header.control_id, first_seq, last_seq,
                    "repeated message recognised; acknowledged without storing it again");
            } else {
                tracing::debug!(device = %route.device_id, bed = %route.bed, observations = n, ?outcome, "message stored");
            }
            ack(ingest, Some(&header), AckCode::AA, None)
        }
        Ok(Err(err)) => {
            tracing::error!(device = %route.device_id, bed = %route.bed, %peer, control_id = %header.control_id, error = %err,
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
    };
    (answer, Some(route.device_id))
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
    tracing::Span::current().record("ack_code", code.as_str());
    build_ack(header, code, err, &ingest.next_ack_id(), chrono::Utc::now())
}

/// An ADT message: census first (its own transaction), then the event for `icu.adt` in the
/// store; AA only when both committed.
async fn handle_adt(
    ingest: &Ingest,
    identity: Option<&crate::tls::PeerIdentity>,
    input: &Input<'_>,
) -> String {
    let (peer, payload, received) = (input.peer, input.raw, input.received);
    let names: Vec<&str> = ingest.adt_cert_names.iter().map(String::as_str).collect();
    if !names.is_empty() && !identity.is_some_and(|id| id.names_any(&names)) {
        ingest
            .stats
            .identity_refused
            .fetch_add(1, Ordering::Relaxed);
        let header = parse_header(payload).ok();
        let presented = identity.map_or("no client certificate".to_owned(), |i| {
            format!("a certificate naming {}", i.describe())
        });
        tracing::warn!(%peer, presented = %presented, "adt message refused: the sender's certificate is not an ADT sender's (adt.cert_names)");
        let err = Hl7Error::new(
            AckCode::AR,
            ErrorCode::ApplicationInternalError,
            None,
            format!(
                "ADT message from {peer} refused: it came with {presented}, not one naming {} (adt.cert_names); the census is unchanged",
                names.join(" or ")
            ),
        );
        return reject(ingest, input, header.as_ref(), None, &err).await;
    }
    if !ingest.adt_allow_from.allows(peer.ip()) {
        ingest.stats.peers_refused.fetch_add(1, Ordering::Relaxed);
        let header = parse_header(payload).ok();
        tracing::warn!(%peer, allow_from = %ingest.adt_allow_from,
            control_id = header.as_ref().map_or("", |h| h.control_id.as_str()),
            "adt message refused: sender address not allowed for ADT");
        let err = Hl7Error::new(
            AckCode::AR,
            ErrorCode::ApplicationInternalError,
            None,
            format!(
                "ADT message from {peer} refused: that address is not allowed to send ADT (adt.allow_from); the census is unchanged"
            ),
        );
        return reject(ingest, input, header.as_ref(), None, &err).await;
    }
    let message = match decode_adt(payload) {
        Ok(m) => m,
        Err(err) => {
            let header = parse_header(payload).ok();
            return reject(ingest, input, header.as_ref(), None, &err).await;
        }
    };
    let header = message.header.clone();
    let applied = ingest
        .census
        .send(ApplyAdt {
            message,
            received_us: received,
            peer: Some(peer.to_string()),
        })
        .await;
    let (outcome, mut event) = match applied {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            let err = e.to_hl7_error();
            return reject(ingest, input, Some(&header), None, &err).await;
        }
        Err(_) => {
            let err = Hl7Error::internal("the ADT census is not running");
            return ack(ingest, Some(&header), err.ack, Some(&err));
        }
    };
    event.peer = peer.to_string();
    tracing::info!(%peer, control_id = %header.control_id, outcome = %outcome, "adt applied");
    if !matches!(outcome, ApplyOutcome::Duplicate { .. }) {
        let stored = ingest.store.send(Append(WriteRequest::Adt(event))).await;
        match stored {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                let err = store_error_to_hl7(&e);
                return ack(ingest, Some(&header), err.ack, Some(&err));
            }
            Err(_) => {
                let err = store_error_to_hl7(&crate::store::StoreError::Closed);
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
) -> Result<(Pcd01Waveforms, Route), Box<Refused>> {
    let decoded = decode_pcd01_waveforms(payload, received, &ingest.terminology, &ingest.waveforms)
        .map_err(|err| {
            let header = parse_header(payload).ok();
            let device = header
                .as_ref()
                .and_then(|h| ingest.route(None, h))
                .map(|r| r.device_id);
            Box::new(Refused {
                err,
                header,
                device,
            })
        })?;
    let message = &decoded.message;
    match ingest.route(message.equipment_id.as_deref(), &message.header) {
        Some(route) => Ok((decoded, route)),
        None => {
            let id = message
                .equipment_id
                .clone()
                .unwrap_or_else(|| message.header.sending_application.clone());
            Err(Box::new(Refused {
                err: Hl7Error::unknown_device(id),
                header: Some(message.header.clone()),
                device: None,
            }))
        }
    }
}

/// Dead-letters a rejected input and builds its AE/AR. If even the dead letter cannot be
/// stored, the answer is still AE/AR (never AA) and the failure is logged.
async fn reject(
    ingest: &Ingest,
    input: &Input<'_>,
    header: Option<&MessageHeader>,
    device_id: Option<String>,
    err: &Hl7Error,
) -> String {
    let bed = device_id.as_deref().and_then(|d| ingest.bed_of(d));
    tracing::warn!(peer = %input.peer, device = device_id.as_deref().unwrap_or("unknown"),
        bed = bed.as_deref().unwrap_or("unknown"), offset = input.offset, code = err.code.code(),
        location = ?err.location.as_ref().map(|l| l.to_string()),
        reason = %err.message, "mllp input rejected");
    let letter = DeadLetter {
        ack_code: err.ack.as_str().into(),
        error_code: err.code.code(),
        location: err.location.as_ref().map(|l| l.to_string()),
        ..input.dead_letter(device_id, err.message.clone())
    };
    store_dead_letter(ingest, letter).await;
    ack(ingest, header, err.ack, Some(err))
}

/// Stores a dead letter; a failure is logged (the caller's answer, if any, is never AA).
pub(super) async fn store_dead_letter(ingest: &Ingest, letter: DeadLetter) {
    let peer = letter.peer.clone();
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
}

/// The HL7 answer for a store failure: AR, application internal error, saying why (the sender
/// keeps the message and resends it).
pub fn store_error_to_hl7(e: &crate::store::StoreError) -> Hl7Error {
    Hl7Error::new(
        AckCode::AR,
        ErrorCode::ApplicationInternalError,
        None,
        format!("{e}; please resend later"),
    )
}
