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

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use bytes::BytesMut;
use icu_drivers::hl7::{
    build_ack, decode_adt, decode_pcd01, parse_header, AckCode, ErrorCode, Hl7Error, MessageHeader,
    Pcd01Message,
};
use icu_drivers::mllp::{encode_frame, MllpCodec, MllpEvent};
use icu_drivers::terminology::Terminology;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::codec::Decoder;

use crate::allow::AllowList;
use crate::census::actor::{ApplyAdt, CensusActor};
use crate::census::ApplyOutcome;
use crate::clock::now_us;
use crate::device::{DeviceActor, IngestObservations};
use crate::live::LiveState;
use crate::store::{db::digest, Append, DeadLetter, Store, WriteOutcome, WriteRequest};

mod settings;
pub use settings::{MllpConfig, MllpSettings};

/// Most bytes of a rejected input kept in its dead letter.
const DEAD_LETTER_MAX_RAW: usize = 64 * 1024;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;

/// Counters of the MLLP transport (shown under `mllp` in `/api/status`).
#[derive(Debug, Default)]
pub struct MllpStats {
    pub connections: AtomicU64,
    /// Closed at once: `mllp.max_connections` open already.
    pub connections_refused: AtomicU64,
    /// Closed at once: `mllp.max_connections_per_address` open from that address already.
    pub connections_refused_per_address: AtomicU64,
    /// Failed `accept` calls (each followed by a pause).
    pub accept_errors: AtomicU64,
    /// Connections closed because a frame did not complete within `mllp.frame_timeout_s`.
    pub frame_timeouts: AtomicU64,
    /// Connections closed after `mllp.idle_timeout_s` without a byte.
    pub idle_timeouts: AtomicU64,
    pub frames: AtomicU64,
    /// Runs of bytes outside a frame: dead-lettered, never answered.
    pub noise: AtomicU64,
    /// Messages refused because their sender's address is not allowed (`allow_from`).
    pub peers_refused: AtomicU64,
    pub acks_aa: AtomicU64,
    pub acks_ae: AtomicU64,
    pub acks_ar: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Connections over TLS (handshake completed).
    pub tls_connections: AtomicU64,
    /// TLS handshakes that failed (no or an untrusted, expired or wrong client certificate...).
    pub tls_handshake_failures: AtomicU64,
    /// Plain-text connections closed on a TLS-only listener (`tls.mllp = "required"`).
    pub tls_plaintext_refused: AtomicU64,
    /// Messages refused because they claim another device than the client certificate names
    /// (or an ADT sender without the `adt.cert_names` certificate).
    pub identity_refused: AtomicU64,
}

impl MllpStats {
    /// The counters `/metrics` shows.
    pub fn figures(&self) -> crate::metrics::MllpFigures {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        crate::metrics::MllpFigures {
            refused_max_connections: n(&self.connections_refused),
            refused_per_address: n(&self.connections_refused_per_address),
            frame_timeouts: n(&self.frame_timeouts),
            idle_timeouts: n(&self.idle_timeouts),
            accept_errors: n(&self.accept_errors),
            peers_refused: n(&self.peers_refused),
        }
    }

    pub fn snapshot(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "connections": n(&self.connections),
            "connections_refused": n(&self.connections_refused),
            "connections_refused_per_address": n(&self.connections_refused_per_address),
            "accept_errors": n(&self.accept_errors),
            "frame_timeouts": n(&self.frame_timeouts),
            "idle_timeouts": n(&self.idle_timeouts),
            "frames": n(&self.frames),
            "noise": n(&self.noise),
            "peers_refused": n(&self.peers_refused),
            "acks_aa": n(&self.acks_aa),
            "acks_ae": n(&self.acks_ae),
            "acks_ar": n(&self.acks_ar),
            "dead_letters": n(&self.dead_letters),
            "tls_connections": n(&self.tls_connections),
            "tls_handshake_failures": n(&self.tls_handshake_failures),
            "tls_plaintext_refused": n(&self.tls_plaintext_refused),
            "identity_refused": n(&self.identity_refused),
        })
    }
}

/// A device as the listener routes to it.
#[derive(Clone)]
pub struct Route {
    pub device_id: String,
    pub addr: Addr<DeviceActor>,
    /// Where its messages may come from (`devices[].allow_from`; empty: anywhere).
    pub allow_from: AllowList,
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
    /// Where ADT messages may come from (`adt.allow_from`; empty: anywhere).
    pub adt_allow_from: AllowList,
    /// Names an ADT sender's client certificate must carry (`adt.cert_names`; empty: any or none).
    pub adt_cert_names: Vec<String>,
    /// TLS on the listener (`[tls] mllp`), if on.
    pub tls: Option<ListenerTls>,
    ack_counter: AtomicU64,
}

/// TLS on the MLLP listener: the reloadable server configuration and the modes.
#[derive(Clone)]
pub struct ListenerTls {
    pub config: Arc<crate::tls::Reloadable>,
    pub mode: crate::tls::Mode,
    pub client_certs: crate::tls::Mode,
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
            adt_allow_from: AllowList::default(),
            adt_cert_names: Vec::new(),
            tls: None,
            ack_counter: AtomicU64::new(0),
        }
    }

    /// TLS on the listener.
    pub fn with_tls(mut self, tls: Option<ListenerTls>) -> Self {
        self.tls = tls;
        self
    }

    /// ADT messages only from a client certificate naming one of these.
    pub fn with_adt_cert_names(mut self, names: Vec<String>) -> Self {
        self.adt_cert_names = names;
        self
    }

    /// Accept ADT messages only from these addresses.
    pub fn with_adt_allow_from(mut self, allow: AllowList) -> Self {
        self.adt_allow_from = allow;
        self
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

/// Pauses after failed `accept` calls: 10 ms after the first failure of a burst, doubling up
/// to 1 s, so that exhausted file descriptors (EMFILE) never become a busy loop while open
/// connections finish and free theirs. Pure, so that it is tested without sockets.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    pub const MIN: Duration = Duration::from_millis(10);
    pub const MAX: Duration = Duration::from_secs(1);

    /// A failed accept: how long to pause, and whether it starts a burst (log it then only).
    pub fn failed(&mut self) -> (Duration, bool) {
        let first = self.failures == 0;
        let pause = Self::MIN
            .saturating_mul(1u32 << self.failures.min(16))
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        (pause, first)
    }

    /// An accept succeeded: the length of the burst of failures it ends, if there was one.
    pub fn succeeded(&mut self) -> Option<u32> {
        Some(std::mem::take(&mut self.failures)).filter(|&n| n > 0)
    }
}

/// Open connections per source address, bounded by `cap`.
#[derive(Debug)]
pub struct PerAddress {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of an address; dropping it frees the slot.
#[derive(Debug)]
pub struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when `cap` are open from it.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            ip,
        })
    }

    /// Connections open from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Rate-limits a repeated warning: at most one line per second, carrying how many were
/// suppressed since the last one (a flood of refused connections must not flood the log).
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(suppressed since the last line)` when a line may be written now.
    fn ready(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

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
    let Some(ack) = handle_event(ingest, peer, identity, event).await else {
        return true;
    };
    // A peer that does not read its ACKs must not hold the connection forever either.
    let frame = encode_frame(ack.as_bytes());
    match tokio::time::timeout(timeouts.frame, stream.write_all(&frame)).await {
        Ok(Ok(())) => true,
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
    store_dead_letter(
        ingest,
        DeadLetter {
            received_us: now_us(),
            transport: "mllp".into(),
            peer: peer.to_string(),
            device_id: None,
            stream_offset: offset,
            ack_code: String::new(),
            error_code: 0,
            location: None,
            reason,
            raw: head,
            raw_len: len,
        },
    )
    .await;
}

/// Handles one framing event and returns the ACK text to send, if any: bytes outside a frame
/// are dead-lettered but never answered, so that every ACK answers a message the sender sent.
async fn handle_event(
    ingest: &Ingest,
    peer: SocketAddr,
    identity: Option<&crate::tls::PeerIdentity>,
    event: MllpEvent,
) -> Option<String> {
    let received = now_us();
    match event {
        MllpEvent::Frame { offset, payload } => {
            ingest.stats.frames.fetch_add(1, Ordering::Relaxed);
            Some(handle_frame(ingest, peer, identity, offset, &payload, received).await)
        }
        MllpEvent::Garbage { offset, len, head } => {
            ingest.stats.noise.fetch_add(1, Ordering::Relaxed);
            let reason = format!(
                "{len} bytes outside an MLLP frame (expected 0x0B) at stream offset {offset} from {peer} were discarded, not answered"
            );
            tracing::warn!(%peer, offset, len, "mllp noise outside a frame discarded (not answered)");
            store_dead_letter(
                ingest,
                DeadLetter {
                    received_us: received,
                    transport: "mllp".into(),
                    peer: peer.to_string(),
                    device_id: None,
                    stream_offset: offset,
                    ack_code: String::new(),
                    error_code: 0,
                    location: None,
                    reason,
                    raw: head.to_vec(),
                    raw_len: len,
                },
            )
            .await;
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
            Some(reject(ingest, peer, None, None, offset, &head, len, &err, received).await)
        }
    }
}

async fn handle_frame(
    ingest: &Ingest,
    peer: SocketAddr,
    identity: Option<&crate::tls::PeerIdentity>,
    offset: u64,
    payload: &[u8],
    received: i64,
) -> String {
    if parse_header(payload).is_ok_and(|h| h.message_type == "ADT") {
        return handle_adt(ingest, peer, identity, offset, payload, received).await;
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
    // With a client certificate, the message must claim the device the certificate names.
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
            tracing::warn!(%peer, device = %route.device_id, certificate = %id.describe(),
                control_id = %header.control_id, "message refused: its device is not the one its TLS client certificate names");
            let err = Hl7Error::new(
                AckCode::AR,
                ErrorCode::ApplicationInternalError,
                None,
                format!(
                    "message for device {} refused: the sender's certificate names {} (the certificate's subject or SAN must name the device id or EUI-64)",
                    route.device_id,
                    id.describe()
                ),
            );
            ingest.live.record_error(&route.device_id, &err.to_string());
            return reject(
                ingest,
                peer,
                Some(&header),
                Some(route.device_id),
                offset,
                payload,
                payload.len(),
                &err,
                received,
            )
            .await;
        }
    }
    if !route.allow_from.allows(peer.ip()) {
        ingest.stats.peers_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%peer, device = %route.device_id, allow_from = %route.allow_from,
            control_id = %header.control_id, "message refused: sender address not allowed for its device");
        let err = Hl7Error::new(
            AckCode::AR,
            ErrorCode::ApplicationInternalError,
            None,
            format!(
                "message for device {} from {peer} refused: that address is not allowed for this device (devices[].allow_from)",
                route.device_id
            ),
        );
        ingest.live.record_error(&route.device_id, &err.to_string());
        return reject(
            ingest,
            peer,
            Some(&header),
            Some(route.device_id),
            offset,
            payload,
            payload.len(),
            &err,
            received,
        )
        .await;
    }
    let n = message.observations.len();
    let result = route
        .addr
        .send(IngestObservations {
            dedup: Some((message.header.control_id.clone(), digest(payload))),
            observations: message.observations,
            receive_time_us: received,
            order: crate::store::WriteOrder::Independent,
        })
        .await
        .map(|stored| stored.map_err(|e| store_error_to_hl7(&e)));
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
    identity: Option<&crate::tls::PeerIdentity>,
    offset: u64,
    payload: &[u8],
    received: i64,
) -> String {
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
            peer: Some(peer.to_string()),
        })
        .await;
    let (outcome, mut event) = match applied {
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
    store_dead_letter(ingest, letter).await;
    ack(ingest, header, err.ack, Some(err))
}

/// Stores a dead letter; a failure is logged (the caller's answer, if any, is never AA).
async fn store_dead_letter(ingest: &Ingest, letter: DeadLetter) {
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

#[cfg(test)]
mod tests;
