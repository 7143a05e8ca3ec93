//! What every MLLP connection shares: the routes to the device actors, the store, the census,
//! the counters, and the listener's TLS.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::Addr;
use icu_drivers::hl7::MessageHeader;
use icu_drivers::terminology::Terminology;

use crate::allow::AllowList;
use crate::census::actor::CensusActor;
use crate::device::DeviceActor;
use crate::live::LiveState;
use crate::store::Store;
use crate::swap::Swap;

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
    /// The bed the device is assigned to (named with the device on every log line and span).
    pub bed: String,
    pub addr: Addr<DeviceActor>,
    /// Where its messages may come from (`devices[].allow_from`; empty: anywhere).
    pub allow_from: AllowList,
}

/// What every connection needs.
pub struct Ingest {
    /// Device actors by every identifier that recognises them (`devices[].match`); a
    /// configuration reload replaces the table, connections keep going.
    pub routes: Arc<Swap<HashMap<String, Route>>>,
    pub store: Addr<Store>,
    pub live: Arc<LiveState>,
    pub terminology: Arc<Terminology>,
    /// What the PCD-01 waveform decoder accepts (`[waveforms]`).
    pub waveforms: Arc<icu_drivers::hl7::WaveformConfig>,
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
    /// `icu_ack_latency_seconds{transport="mllp"}`: frame read to its ACK written.
    pub ack_latency: prometheus::Histogram,
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
        routes: Arc<Swap<HashMap<String, Route>>>,
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
            waveforms: Arc::default(),
            max_frame_bytes,
            stats,
            census,
            adt_allow_from: AllowList::default(),
            adt_cert_names: Vec::new(),
            tls: None,
            ack_latency: crate::metrics::IngestStats::default()
                .ack_latency(crate::metrics::Transport::Mllp)
                .clone(),
            ack_counter: AtomicU64::new(0),
        }
    }

    /// Where the ACK latency is counted (the gateway's `IngestStats`).
    pub fn with_ack_latency(mut self, h: prometheus::Histogram) -> Self {
        self.ack_latency = h;
        self
    }

    /// What the PCD-01 waveform decoder accepts.
    pub fn with_waveforms(mut self, config: Arc<icu_drivers::hl7::WaveformConfig>) -> Self {
        self.waveforms = config;
        self
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
    pub(super) fn route(
        &self,
        msg_equipment: Option<&str>,
        header: &MessageHeader,
    ) -> Option<Route> {
        let msh3 = &header.sending_application;
        let mut comps = msh3.split('^');
        let ns = comps.next().unwrap_or_default();
        let uid = comps.next().unwrap_or_default();
        let routes = self.routes.load();
        [msg_equipment.unwrap_or_default(), uid, ns, msh3.as_str()]
            .into_iter()
            .filter(|k| !k.is_empty())
            .find_map(|k| routes.get(k).cloned())
    }

    /// The bed of a configured device (for a log line about a message refused before routing).
    pub(super) fn bed_of(&self, device_id: &str) -> Option<String> {
        self.routes
            .load()
            .values()
            .find(|r| r.device_id == device_id)
            .map(|r| r.bed.clone())
    }

    pub(super) fn next_ack_id(&self) -> String {
        format!(
            "GWACK{}",
            self.ack_counter.fetch_add(1, Ordering::Relaxed) + 1
        )
    }
}
