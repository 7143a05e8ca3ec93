//! Observable state and counters of the bridge, shared with the gateway's HTTP API and metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

/// Where the bridge stands, as shown on the local page and in `/api` (`{"state": "online"}`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BridgeState {
    /// No Kafka configured (or the bridge was not started).
    Disabled,
    /// Started, no cycle finished yet.
    Connecting,
    /// The last cycle forwarded everything it fetched.
    Online,
    /// The last cycle failed; records stay in the outbox and are retried with backoff.
    Offline { reason: String },
    /// The topic does not exist on the brokers; records stay in the outbox.
    TopicMissing { topic: String },
    /// The brokers refused the SASL login (wrong user name or password); records stay in the
    /// outbox. The reason names the setting to fix.
    AuthFailed { reason: String },
    /// The TLS handshake with the brokers failed (a broker certificate not signed by the
    /// configured CA, a wrong host name, a refused client certificate); records stay in the
    /// outbox. The reason names the setting to fix.
    TlsFailed { reason: String },
}

impl BridgeState {
    /// The `state` tag (`"online"`, `"auth_failed"`, ...), as on `/api/status` and `/metrics`.
    pub fn name(&self) -> &'static str {
        match self {
            BridgeState::Disabled => "disabled",
            BridgeState::Connecting => "connecting",
            BridgeState::Online => "online",
            BridgeState::Offline { .. } => "offline",
            BridgeState::TopicMissing { .. } => "topic_missing",
            BridgeState::AuthFailed { .. } => "auth_failed",
            BridgeState::TlsFailed { .. } => "tls_failed",
        }
    }
}

/// Where a forwarding cycle spends its time (cumulative, in `/api/status` as
/// `backbone.time_us`): what limits forwarding when it does not keep up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the cycle's records to be fetched, mapped and signed (on the blocking pool;
    /// while a backlog drains, prepared during the previous cycle's delivery, so only the part
    /// that did not overlap it).
    Preparing,
    /// From the first record produced to the last delivery report of a stream's bundles.
    Delivering,
    /// Marking the delivered records sent in the store (one transaction; waits for the store's
    /// write lock).
    Marking,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::Preparing, Phase::Delivering, Phase::Marking];

    fn name(self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::Delivering => "delivering",
            Phase::Marking => "marking_sent",
        }
    }
}

/// Upper bounds (seconds) of the delivery-latency histogram: 10 ms to 1 h (a reading kept
/// through a broker outage is delivered minutes or hours after it arrived).
pub const DELIVERY_LATENCY_BUCKETS: [f64; 16] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0,
];

fn delivery_latency_histogram() -> prometheus::Histogram {
    let opts = prometheus::HistogramOpts::new(
        "icu_bridge_delivery_latency_seconds",
        "Seconds from a reading's receipt by the gateway to the Kafka delivery report of the record that carries it, per observation marked sent.",
    )
    .buckets(DELIVERY_LATENCY_BUCKETS.to_vec());
    prometheus::Histogram::with_opts(opts).expect("valid histogram options")
}

/// Counters and state of one bridge. Cheap to read from any thread.
#[derive(Debug)]
pub struct BridgeStats {
    /// `icu_bridge_delivery_latency_seconds` (see [`Self::delivery_latency`]).
    delivery_latency: prometheus::Histogram,
    forwarded_records: AtomicU64,
    forwarded_observations: AtomicU64,
    delivery_errors: AtomicU64,
    broker_errors: AtomicU64,
    outbox_errors: AtomicU64,
    in_flight: AtomicU64,
    skipped_records: AtomicU64,
    cycles: AtomicU64,
    /// Microseconds spent per [`Phase`], in [`Phase::ALL`] order.
    phase_us: [AtomicU64; 3],
    state: Mutex<BridgeState>,
    /// How the bridge reaches the brokers (`"plaintext"`, `"sasl_ssl SCRAM-SHA-512 as gw"`).
    security: Mutex<String>,
    /// The protobuf topic, when configured.
    protobuf: Mutex<ProtobufStats>,
    /// The waveform topic while it is missing: the curves are held in the outbox (alarms and
    /// readings forward as usual).
    held_topic: Mutex<Option<String>>,
}

/// What happened on the protobuf topic (`/api/status` `backbone.protobuf`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ProtobufStats {
    pub topic: Option<String>,
    /// Records the broker took.
    pub delivered: u64,
    /// Records the broker refused for good (its schema registry: INVALID_RECORD), each kept as
    /// a dead letter.
    pub rejected: u64,
    /// `ok`, or `rejecting` while the last record sent was refused (the schema in the broker's
    /// registry and the gateway's disagree: see the dead letters).
    pub state: &'static str,
    pub last_rejection: Option<ProtobufRejection>,
}

/// The last record the protobuf topic refused.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProtobufRejection {
    pub device_id: String,
    pub seq_first: u64,
    pub seq_last: u64,
    pub reason: String,
    pub at_us: i64,
}

impl BridgeStats {
    /// Fresh stats in state [`BridgeState::Disabled`].
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            delivery_latency: delivery_latency_histogram(),
            forwarded_records: AtomicU64::new(0),
            forwarded_observations: AtomicU64::new(0),
            delivery_errors: AtomicU64::new(0),
            broker_errors: AtomicU64::new(0),
            outbox_errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            skipped_records: AtomicU64::new(0),
            cycles: AtomicU64::new(0),
            phase_us: Default::default(),
            state: Mutex::new(BridgeState::Disabled),
            security: Mutex::new("plaintext".into()),
            protobuf: Mutex::new(ProtobufStats::default()),
            held_topic: Mutex::new(None),
        })
    }

    /// The protobuf topic's counters (`topic` is `None` when none is configured).
    pub fn protobuf(&self) -> ProtobufStats {
        self.protobuf
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_protobuf_topic(&self, topic: Option<String>) {
        let mut p = self.protobuf.lock().unwrap_or_else(|e| e.into_inner());
        p.topic = topic;
        p.state = "ok";
    }

    pub(crate) fn add_protobuf_delivered(&self, n: u64) {
        if n > 0 {
            let mut p = self.protobuf.lock().unwrap_or_else(|e| e.into_inner());
            p.delivered += n;
            p.state = "ok";
        }
    }

    pub(crate) fn add_protobuf_rejection(&self, rejection: ProtobufRejection) {
        let mut p = self.protobuf.lock().unwrap_or_else(|e| e.into_inner());
        p.rejected += 1;
        p.state = "rejecting";
        p.last_rejection = Some(rejection);
    }

    /// Current state.
    pub fn state(&self) -> BridgeState {
        self.lock_state().clone()
    }

    /// Receipt (the reading's `receive_time_us`) to delivery report, one observation per
    /// reading marked sent (so its count follows `forwarded_observations`).
    pub fn delivery_latency(&self) -> &prometheus::Histogram {
        &self.delivery_latency
    }

    /// Kafka records (bundles) delivered and marked sent.
    pub fn forwarded_records(&self) -> u64 {
        self.forwarded_records.load(Ordering::Relaxed)
    }

    /// Observations in those records.
    pub fn forwarded_observations(&self) -> u64 {
        self.forwarded_observations.load(Ordering::Relaxed)
    }

    /// Kafka records whose delivery failed (or could not be enqueued, or mapped).
    pub fn delivery_errors(&self) -> u64 {
        self.delivery_errors.load(Ordering::Relaxed)
    }

    /// Cycles that failed before producing: brokers unreachable or topic missing.
    pub fn broker_errors(&self) -> u64 {
        self.broker_errors.load(Ordering::Relaxed)
    }

    /// Failed outbox calls (fetch or mark sent).
    pub fn outbox_errors(&self) -> u64 {
        self.outbox_errors.load(Ordering::Relaxed)
    }

    /// Kafka records produced and awaiting their delivery report.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records of the last fetch left in the outbox because their kind is not forwarded yet.
    pub fn skipped_records(&self) -> u64 {
        self.skipped_records.load(Ordering::Relaxed)
    }

    /// Forwarding cycles run (successful or not).
    pub fn cycles(&self) -> u64 {
        self.cycles.load(Ordering::Relaxed)
    }

    /// Time spent in `phase` so far.
    pub fn phase_time(&self, phase: Phase) -> Duration {
        Duration::from_micros(self.phase_us[phase as usize].load(Ordering::Relaxed))
    }

    /// All counters and the state as JSON.
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "state": self.state(),
            "forwarded_records": self.forwarded_records(),
            "forwarded_observations": self.forwarded_observations(),
            "delivery_errors": self.delivery_errors(),
            "broker_errors": self.broker_errors(),
            "outbox_errors": self.outbox_errors(),
            "in_flight": self.in_flight(),
            "skipped_records": self.skipped_records(),
            "cycles": self.cycles(),
            "time_us": Phase::ALL
                .iter()
                .map(|&p| (p.name().to_owned(), serde_json::json!(self.phase_time(p).as_micros() as u64)))
                .collect::<serde_json::Map<_, _>>(),
            "protobuf": self.protobuf(),
            "curves_held_for_topic": self.held_topic(),
            "security": self.security(),
            "encrypted": !self.security().starts_with("plaintext")
                && !self.security().starts_with("sasl_plaintext"),
        })
    }

    /// How the bridge reaches the brokers (`[kafka.security]` described; `"plaintext"` when
    /// the section is absent).
    pub fn security(&self) -> String {
        self.security
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The waveform topic while it is missing and the curves are held, else `None`.
    pub fn held_topic(&self) -> Option<String> {
        self.held_topic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_held_topic(&self, topic: Option<String>) {
        *self.held_topic.lock().unwrap_or_else(|e| e.into_inner()) = topic;
    }

    pub(crate) fn set_security(&self, description: String) {
        *self.security.lock().unwrap_or_else(|e| e.into_inner()) = description;
    }

    /// Sets the state; returns the previous one when it changed.
    pub(crate) fn set_state(&self, state: BridgeState) -> Option<BridgeState> {
        let mut current = self.lock_state();
        if *current == state {
            None
        } else {
            Some(std::mem::replace(&mut *current, state))
        }
    }

    pub(crate) fn add_forwarded(&self, records: u64, observations: u64) {
        self.forwarded_records.fetch_add(records, Ordering::Relaxed);
        self.forwarded_observations
            .fetch_add(observations, Ordering::Relaxed);
    }

    pub(crate) fn add_delivery_errors(&self, n: u64) {
        self.delivery_errors.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_broker_error(&self) {
        self.broker_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_outbox_error(&self) {
        self.outbox_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_in_flight(&self, n: u64) {
        self.in_flight.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn sub_in_flight(&self, n: u64) {
        self.in_flight.fetch_sub(n, Ordering::Relaxed);
    }

    pub(crate) fn set_skipped(&self, n: u64) {
        self.skipped_records.store(n, Ordering::Relaxed);
    }

    pub(crate) fn add_phase(&self, phase: Phase, took: Duration) {
        self.phase_us[phase as usize].fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_cycle(&self) {
        self.cycles.fetch_add(1, Ordering::Relaxed);
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, BridgeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_serializes_tagged_and_snapshot_has_every_counter() {
        let stats = BridgeStats::new();
        assert_eq!(stats.state(), BridgeState::Disabled);
        assert_eq!(
            stats.set_state(BridgeState::TopicMissing { topic: "t".into() }),
            Some(BridgeState::Disabled)
        );
        assert_eq!(
            stats.set_state(BridgeState::TopicMissing { topic: "t".into() }),
            None
        );
        stats.add_forwarded(2, 150);
        stats.add_delivery_errors(1);
        stats.add_phase(Phase::Marking, Duration::from_millis(3));
        stats.add_phase(Phase::Marking, Duration::from_micros(250));
        let snap = stats.snapshot();
        assert_eq!(
            snap["state"],
            serde_json::json!({"state": "topic_missing", "topic": "t"})
        );
        assert_eq!(snap["forwarded_records"], 2);
        assert_eq!(snap["forwarded_observations"], 150);
        assert_eq!(snap["delivery_errors"], 1);
        assert_eq!(
            snap["time_us"],
            serde_json::json!({"preparing": 0, "delivering": 0, "marking_sent": 3250})
        );
        for key in [
            "in_flight",
            "broker_errors",
            "outbox_errors",
            "skipped_records",
            "cycles",
        ] {
            assert_eq!(snap[key], 0, "{key}");
        }
        let offline = serde_json::to_value(BridgeState::Offline { reason: "x".into() }).unwrap();
        assert_eq!(
            offline,
            serde_json::json!({"state": "offline", "reason": "x"})
        );
    }
}
