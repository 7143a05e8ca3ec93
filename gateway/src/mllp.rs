//! The HL7v2/MLLP listener (PCD-01 from monitors).
//!
//! Owns: TCP connections from senders, framing (the shared `icu_drivers::mllp` codec),
//! routing each decoded message to its device actor, dead-lettering what is rejected, and the
//! ACK. Guarantees: AA is sent only after the store committed every observation of the message;
//! every rejected frame or message gets AE/AR with an ERR segment naming the problem, lands in
//! the dead-letter table, and the connection keeps serving the next frame; one connection's
//! bad input never affects another's. Every ACK answers exactly one message the sender sent:
//! bytes outside a frame (line noise) are logged and dead-lettered but never answered.
//!
//! Hostile or broken peers cannot starve the listener: connections are bounded in total
//! (`mllp.max_connections`) and per source address (`mllp.max_connections_per_address`), a
//! connection over either cap is closed at once; a frame that does not complete within
//! `mllp.frame_timeout_s` and a connection silent for `mllp.idle_timeout_s` are closed (what
//! arrived of the frame is dead-lettered); a failing `accept` (file descriptors exhausted)
//! backs off from 10 ms to 1 s instead of spinning. A message is accepted only from the
//! addresses its device (`devices[].allow_from`) or the ADT feed (`adt.allow_from`) allows.
//!
//! Tracing (on only with `[tracing] otlp_endpoint`): each framing event is one trace whose root
//! span `mllp.receive` (device, bed, control id, observation count, ACK code) has the children
//! `hl7.decode`, `store.commit` (hand-off to the device actor until the commit holding the
//! message returned; its context is stored with the records) and `mllp.ack` (writing the ACK).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use icu_drivers::mllp::{encode_frame, MllpCodec, MllpEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::codec::Decoder;

use crate::clock::now_us;

mod handle;
mod ingest;
mod limits;
mod settings;
pub use handle::store_error_to_hl7;
use handle::{handle_event, store_dead_letter, Input};
pub use ingest::{Ingest, ListenerTls, MllpStats, Route};
use limits::Throttle;
pub use limits::{AcceptBackoff, AddressSlot, PerAddress};
pub use settings::{MllpConfig, MllpSettings};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;

/// How long a connection may take (from [`MllpConfig`]).
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    frame: Duration,
    idle: Duration,
}

/// Accepts connections until `shutdown` turns true.
///
/// Connections are spread round-robin over a pool of worker arbiters (one per CPU, at most 8),
/// so decoding one sender's messages never queues behind another's on a single thread, and
/// never on the system arbiter that runs the device actors. A connection over the total or the
/// per-address cap is closed at once (counted, logged at most once a second). On shutdown the
/// listener waits (up to 10 s) for open connections to finish their current message before
/// stopping the pool.
pub async fn serve(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    config: MllpConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let pool: Vec<actix::Arbiter> = (0..workers).map(|_| actix::Arbiter::new()).collect();
    let mut next_worker = 0usize;
    let max_connections = config.max_connections;
    let slots = Arc::new(Semaphore::new(max_connections));
    let per_address = PerAddress::new(config.max_connections_per_address);
    let timeouts = Timeouts {
        frame: config.frame_timeout,
        idle: config.idle_timeout,
    };
    let mut backoff = AcceptBackoff::default();
    let mut refusals = Throttle::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                if let Some(n) = backoff.succeeded() {
                    tracing::info!(failures = n, "mllp accept works again");
                }
                a
            }
            Err(e) => {
                ingest.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                let (pause, first) = backoff.failed();
                if first {
                    tracing::warn!(error = %e, "mllp accept failed; retrying with a pause of 10 ms growing to 1 s");
                }
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        let Some(address_slot) = per_address.try_open(peer.ip()) else {
            ingest
                .stats
                .connections_refused_per_address
                .fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = refusals.ready(Instant::now()) {
                tracing::warn!(%peer, max_connections_per_address = config.max_connections_per_address,
                    suppressed, "mllp connection refused: too many open connections from this address");
            }
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            ingest
                .stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = refusals.ready(Instant::now()) {
                tracing::warn!(%peer, max_connections, suppressed,
                    "mllp connection refused: too many open connections");
            }
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
                Ok(stream) => match ingest.tls.clone() {
                    None => {
                        let _ = stream.set_nodelay(true);
                        connection(stream, peer, None, ingest, timeouts, shutdown).await
                    }
                    Some(tls) => serve_tls(stream, peer, tls, ingest, timeouts, shutdown).await,
                },
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "mllp connection could not be registered")
                }
            }
            drop(permit);
            drop(address_slot);
        });
        if !spawned {
            tracing::error!(%peer, "mllp worker stopped: connection closed");
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

/// A connection on a TLS listener: tells TLS from plain MLLP by the first byte (a ClientHello
/// record starts with 0x16, an MLLP frame with 0x0B), refuses plain text when TLS is required,
/// completes the handshake within the frame timeout and reads the client certificate's names.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    tls: ListenerTls,
    ingest: Arc<Ingest>,
    timeouts: Timeouts,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(timeouts.frame, stream.peek(&mut first)).await;
    let is_tls = match peeked {
        Ok(Ok(1)) => first[0] == 0x16,
        Ok(_) => return,
        Err(_) => {
            ingest.stats.frame_timeouts.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if !is_tls {
        if tls.mode == crate::tls::Mode::Required {
            ingest
                .stats
                .tls_plaintext_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, first_byte = first[0],
                "mllp connection refused: plain text on a TLS-only listener (tls.mllp = \"required\")");
            return;
        }
        return connection(stream, peer, None, ingest, timeouts, shutdown).await;
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.current());
    let accepted = tokio::time::timeout(timeouts.frame, acceptor.accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ingest
                .stats
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, error = %e, client_certs = ?tls.client_certs,
                "mllp TLS handshake failed (a client certificate missing, untrusted or expired, or no TLS)");
            return;
        }
        Err(_) => {
            ingest
                .stats
                .tls_handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, frame_timeout_s = timeouts.frame.as_secs(), "mllp TLS handshake did not finish within the frame timeout");
            return;
        }
    };
    ingest.stats.tls_connections.fetch_add(1, Ordering::Relaxed);
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::tls::identity_of(c));
    connection(stream, peer, identity, ingest, timeouts, shutdown).await
}

/// Why a connection ended.
enum Closed {
    Eof,
    Shutdown,
    Error,
    TimedOut,
}

/// Serves one connection: reads, frames with the shared codec, answers each message, and
/// enforces the frame and idle timeouts (the codec does no I/O, so the clock is kept here).
async fn connection<S>(
    mut stream: S,
    peer: SocketAddr,
    identity: Option<crate::tls::PeerIdentity>,
    ingest: Arc<Ingest>,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tracing::info!(%peer, certificate = identity.as_ref().map(|i| i.describe()).unwrap_or_default(),
        "mllp connection opened");
    let identity = identity.as_ref();
    let mut codec = MllpCodec::new(ingest.max_frame_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // Since when bytes are held that do not form a whole frame yet (the frame timeout runs).
    let mut pending_since: Option<Instant> = None;
    // The last byte received or ACK sent (the idle timeout runs from here).
    let mut last_activity = Instant::now();
    let closed = 'conn: loop {
        let mut events = 0usize;
        loop {
            let event = match codec.decode(&mut buf) {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "mllp connection failed");
                    break 'conn Closed::Error;
                }
            };
            events += 1;
            if !answer(&ingest, peer, identity, event, &mut stream, timeouts).await {
                break 'conn Closed::Error;
            }
        }
        if events > 0 {
            last_activity = Instant::now();
        }
        pending_since = if buf.is_empty() && !codec.mid_event() {
            None
        } else if events > 0 {
            // The rest of the last read follows the frames just answered: its clock starts
            // now, so time the gateway spent answering is never held against the sender.
            Some(last_activity)
        } else {
            // Still the frame that was pending, or one begun by the last read.
            pending_since.or(Some(last_activity))
        };
        let deadline = match pending_since {
            Some(since) => since + timeouts.frame,
            None => last_activity + timeouts.idle,
        };
        buf.reserve(READ_CHUNK);
        let read = tokio::select! {
            _ = shutdown.changed() => break Closed::Shutdown,
            r = tokio::time::timeout_at(deadline.into(), stream.read_buf(&mut buf)) => r,
        };
        match read {
            Ok(Ok(0)) => break Closed::Eof,
            Ok(Ok(_)) => last_activity = Instant::now(),
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "mllp connection failed");
                break Closed::Error;
            }
            Err(_elapsed) => {
                if pending_since.is_some() {
                    frame_timed_out(&ingest, peer, &mut codec, &mut buf, timeouts.frame).await;
                } else {
                    ingest.stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%peer, offset = codec.stream_offset(), idle_timeout_s = timeouts.idle.as_secs(),
                        "mllp connection closed: no byte within the idle timeout (mllp.idle_timeout_s)");
                }
                break Closed::TimedOut;
            }
        }
    };
    if let Closed::Eof = closed {
        // Whatever was cut short by the end of the stream is reported, as ever.
        while let Ok(Some(event)) = codec.decode_eof(&mut buf) {
            if !answer(&ingest, peer, identity, event, &mut stream, timeouts).await {
                break;
            }
        }
    }
    let how = match closed {
        Closed::Eof => "by the peer",
        Closed::Shutdown => "for shutdown",
        Closed::Error => "after an error",
        Closed::TimedOut => "by a timeout",
    };
    tracing::info!(%peer, how, "mllp connection closed");
}

/// Handles one framing event and writes its ACK, if it gets one; false when the ACK could not
/// be written (the connection is then closed).
async fn answer<S>(
    ingest: &Ingest,
    peer: SocketAddr,
    identity: Option<&crate::tls::PeerIdentity>,
    event: MllpEvent,
    stream: &mut S,
    timeouts: Timeouts,
) -> bool
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let received = Instant::now();
    use tracing::{field::Empty, Instrument as _};
    // The message's trace (disabled, and free, unless tracing is on): a root of its own.
    let receipt = tracing::info_span!(target: icu_cloud_bridge::trace::TARGET, parent: None,
        "mllp.receive", otel.kind = "server", transport = "mllp", %peer, device = Empty,
        bed = Empty, control_id = Empty, observations = Empty, ack_code = Empty);
    let Some(ack) = handle_event(ingest, peer, identity, event)
        .instrument(receipt.clone())
        .await
    else {
        return true;
    };
    let ack_span = tracing::info_span!(target: icu_cloud_bridge::trace::TARGET,
        parent: &receipt, "mllp.ack", bytes = ack.len() as i64);
    // A peer that does not read its ACKs must not hold the connection forever either.
    let frame = encode_frame(ack.as_bytes());
    let written = tokio::time::timeout(timeouts.frame, stream.write_all(&frame))
        .instrument(ack_span)
        .await;
    match written {
        Ok(Ok(())) => {
            ingest.ack_latency.observe(received.elapsed().as_secs_f64());
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "mllp ack could not be written");
            false
        }
        Err(_) => {
            tracing::warn!(%peer, frame_timeout_s = timeouts.frame.as_secs(),
                "mllp ack could not be written within the frame timeout: the peer does not read");
            false
        }
    }
}

/// A frame (or a run of noise) did not complete in time: log it with peer and offset and
/// dead-letter what arrived. Nothing is answered: the connection is closed.
async fn frame_timed_out(
    ingest: &Ingest,
    peer: SocketAddr,
    codec: &mut MllpCodec,
    buf: &mut BytesMut,
    frame_timeout: Duration,
) {
    ingest.stats.frame_timeouts.fetch_add(1, Ordering::Relaxed);
    let (offset, len, head) = match codec.decode_eof(buf) {
        Ok(Some(MllpEvent::Garbage { offset, len, head }))
        | Ok(Some(MllpEvent::Oversized { offset, len, head })) => (offset, len, head.to_vec()),
        Ok(Some(MllpEvent::Frame { offset, payload })) => {
            // Not reached: complete frames are answered before the timeout runs.
            (offset, payload.len() + 3, payload.to_vec())
        }
        Ok(None) | Err(_) => (codec.stream_offset(), 0, Vec::new()),
    };
    let reason = format!(
        "MLLP frame of {len} bytes at stream offset {offset} from {peer} was not complete after {} s (mllp.frame_timeout_s); connection closed, nothing answered",
        frame_timeout.as_secs()
    );
    tracing::warn!(%peer, offset, len, frame_timeout_s = frame_timeout.as_secs(), "mllp frame timed out; connection closed");
    let input = Input {
        peer,
        offset,
        raw: &head,
        raw_len: len,
        received: now_us(),
    };
    store_dead_letter(ingest, input.dead_letter(None, reason)).await;
}

#[cfg(test)]
mod tests;
