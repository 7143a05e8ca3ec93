//! Prometheus metrics (`GET /metrics`) and the figures behind them.
//!
//! Owns: the ingest counters of every transport ([`IngestStats`], counted by the device actor
//! when the store's commit returned, the single place that knows both the transport and the
//! outcome) with the ACK-latency histograms, the recent-rate window ([`RateWindow`]: 60
//! one-second buckets, for the "hours of buffer left" estimate [`buffer_hours_left`]) and the
//! exposition ([`render`]): the `prometheus` crate's registry and text encoder (format 0.0.4,
//! what Prometheus and `promtool check metrics` read). The HTTP handler (`http::metrics`)
//! gathers a [`Figures`] snapshot (the SQLite part on the blocking pool, never on the actix
//! thread) and renders it; the counters and gauges are built from that snapshot at each scrape,
//! the histograms are the long-lived ones the hot paths observe into.
//!
//! Conventions: base units (seconds, bytes), counters end in `_total`, rates are left to
//! PromQL (`rate(icu_ingest_observations_total[1m])`). Histogram observations are lock-free
//! atomics on pre-resolved handles (no label lookup, no allocation per message).
//!
//! Every family below is always present (zeros when a part is not configured, e.g. the bridge
//! counters without `[kafka]`), so dashboards and alerts need no special cases; the per-device
//! families have one series per configured device (an unknown sender never makes one).
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `icu_gateway_info` | gauge | `gateway_id` | always 1; carries the gateway id |
//! | `icu_gateway_uptime_seconds` | gauge | | seconds since the gateway started |
//! | `icu_ingest_observations_total` | counter | `transport` (`mllp`, `serial`, `mqtt`) | observations committed to the store (so acknowledged upstream) |
//! | `icu_ingest_messages_total` | counter | `transport` | messages (HL7 message, serial reading set, MQTT publish) committed to the store |
//! | `icu_ingest_duplicate_messages_total` | counter | `transport` | retried messages recognised as already stored (acknowledged, not stored again) |
//! | `icu_ingest_refused_total` | counter | `transport`, `reason` (`budget`, `overload`, `io`, `closed`, `other`) | messages the store refused (the sender got AR or no PUBACK and sends again) |
//! | `icu_ack_latency_seconds` | histogram | `transport` | receipt to acknowledgement: MLLP frame read to its ACK written (every answered frame: AA, AE or AR); MQTT publish handed over to its PUBACK released after the commit (stored messages; rejected ones are not counted); serial (no ACK) reading decoded to its commit |
//! | `icu_store_commit_latency_seconds` | histogram | | one group commit (batch handed to the writer thread to its answer) |
//! | `icu_alarm_path_latency_seconds` | histogram | | reading receipt to the alarm state change it caused, handed to the outputs |
//! | `icu_bridge_delivery_latency_seconds` | histogram | | reading receipt to the Kafka delivery report, per observation marked sent |
//! | `icu_device_up` | gauge | `device`, `bed` | 1 while the device sends (data within its `silent_after`), else 0 (silent or never heard from) |
//! | `icu_device_last_seen_timestamp_seconds` | gauge | `device`, `bed` | Unix time of the device's last message (absent until it sent one) |
//! | `icu_device_messages_total` | counter | `device`, `bed` | messages received from the device (first sight; retries not counted) |
//! | `icu_device_errors_total` | counter | `device`, `bed` | its messages refused or rejected (decode errors, refused senders, store refusals) |
//! | `icu_outbox_unsent_records` | gauge | `stream` (`observations`, `alarms`, `adt`, `deadletter`) | outbox depth: records stored and not yet confirmed by Kafka |
//! | `icu_outbox_oldest_unsent_age_seconds` | gauge | | age (gateway receive time) of the oldest unsent record; 0 when the outbox is empty |
//! | `icu_bridge_state` | gauge | `state` (`disabled`, `connecting`, `online`, `offline`, `topic_missing`, `auth_failed`, `tls_failed`) | 1 for the bridge's current state, 0 for the others |
//! | `icu_bridge_forwarded_records_total` | counter | | Kafka records (bundles) delivered and marked sent |
//! | `icu_bridge_forwarded_observations_total` | counter | | observations in those records |
//! | `icu_bridge_in_flight_records` | gauge | | Kafka records produced and awaiting their delivery report |
//! | `icu_bridge_delivery_errors_total` | counter | | Kafka records whose delivery failed (retried from the outbox) |
//! | `icu_bridge_broker_errors_total` | counter | | forwarding cycles that failed before producing (brokers unreachable, topic missing) |
//! | `icu_bridge_outbox_errors_total` | counter | | failed outbox reads or mark-sent calls of the bridge |
//! | `icu_store_up` | gauge | | 1 when the store answered the metrics query, else 0 (the store gauges below are then absent) |
//! | `icu_store_commits_total` | counter | | group commits run |
//! | `icu_store_write_failures_total` | counter | | write requests that failed (disk budget, I/O), nothing of them stored |
//! | `icu_store_refused_overload_total` | counter | | write requests refused because too many were waiting for the disk |
//! | `icu_store_records` | gauge | | records in the store (sent and unsent, every stream) |
//! | `icu_dead_letters_stored` | gauge | | rejected inputs kept in the dead-letter table |
//! | `icu_store_refused_budget_total` | counter | | write requests refused because the disk budget was reached (part of the write failures) |
//! | `icu_store_pruned_sent_records_total` | counter | | forwarded records deleted to stay under the budget |
//! | `icu_store_pruned_unsent_observations_total` | counter | | unsent observations deleted to make room (`store.on_full = "drop_oldest_unsent"` only): data lost |
//! | `icu_store_pruned_dead_letters_total` | counter | | forwarded dead-letter rows deleted to stay under the budget |
//! | `icu_store_refused_dead_letters_total` | counter | | dead letters refused at the budget's high-water mark: rejected input not kept (part of the budget refusals) |
//! | `icu_waveform_segments_not_stored_total` | counter | | waveform segments of stored messages not kept: the store was at its waveform limit (`store.waveform_budget_percent`) |
//! | `icu_waveform_rows_pruned_unsent_total` | counter | | unsent waveform segments deleted to make room for readings and alarms: curves lost |
//! | `icu_store_disk_usage_bytes` | gauge | | bytes in use as the disk budget counts them (pages in use plus the write-ahead log) |
//! | `icu_store_file_bytes` | gauge | | bytes of the store's files (database plus write-ahead log; freed pages are reused, not returned, so it stays at its high-water mark) |
//! | `icu_store_disk_budget_bytes` | gauge | | the disk budget (`store.disk_budget_mb`) |
//! | `icu_store_high_water_bytes` | gauge | | above this many bytes in use the store prunes forwarded records |
//! | `icu_store_budget_full` | gauge | | 1 while the budget is reached and new readings are refused |
//! | `icu_store_pruning` | gauge | | 1 from crossing the high-water mark until back at the low-water mark |
//! | `icu_store_bytes_per_record` | gauge | | bytes one stored record takes (pages in use / records; 256 until 1000 records are stored, never below 64) |
//! | `icu_store_free_budget_bytes` | gauge | | budget bytes left for unsent readings: budget − bytes in use + forwarded records × bytes per record (the store prunes those to make room), at most the budget |
//! | `icu_buffer_left_seconds` | gauge | | seconds until the free budget is full at the current ingest rate: free budget bytes / (observations/s of all transports over the last 60 s × bytes per record); `+Inf` when nothing is being ingested, 0 when nothing is free (was `icu_buffer_hours_left`, in hours) |
//! | `icu_mllp_connections_refused_total` | counter | `reason` (`max_connections`, `per_address`) | MLLP connections closed at once because a cap was reached |
//! | `icu_mllp_connections_timed_out_total` | counter | `reason` (`frame`, `idle`) | MLLP connections closed by the frame or idle timeout |
//! | `icu_mllp_accept_errors_total` | counter | | failed `accept` calls of the MLLP listener (each followed by a pause) |
//! | `icu_mllp_peers_refused_total` | counter | | messages refused because their sender's address is not allowed (`allow_from`) |
//! | `icu_tls_certificate_expiry_seconds` | gauge | `cert` (`gateway`) | seconds until the gateway's TLS certificate (`tls.cert_file`) expires, negative once expired; only when one is configured (`gateway:tls-cert-expiry` technical alarm `tls.expiry_warning_days` before) |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_start_time_seconds`, `process_threads` | counter / gauge | | the gateway process, from `/proc/self` |
//!
//! The `*_per_second` gauges of earlier versions are gone: the same figures are
//! `rate(icu_ingest_observations_total[1m])`, `rate(icu_bridge_forwarded_records_total[1m])`
//! and `rate(icu_bridge_forwarded_observations_total[1m])`. `icu_buffer_hours_left` is now
//! `icu_buffer_left_seconds` (base unit; `/ 3600` gives the hours).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use icu_cloud_bridge::bridge::{BridgeState, BridgeStats};
use icu_outbox::Stream;
use prometheus::{Histogram, HistogramOpts, HistogramVec};

use crate::domain::Protocol;
use crate::store::StoreError;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the ACK, commit and alarm-path histograms: 0.5 ms to 10 s, the
/// same for all three so they compare (`le="1"` is the "acknowledged within 1 s" SLO).
pub use crate::store::COMMIT_LATENCY_BUCKETS as LATENCY_BUCKETS;

/// `icu_alarm_path_latency_seconds` over [`LATENCY_BUCKETS`] (the alarm actor's
/// `AlarmPathStats` holds the one that counts), not registered anywhere: `/metrics` registers
/// it at each scrape.
pub fn alarm_path_latency_histogram() -> Histogram {
    let opts = HistogramOpts::new(
        "icu_alarm_path_latency_seconds",
        "Seconds from a reading's receipt to the alarm state change it caused, handed to the alarm outputs.",
    );
    Histogram::with_opts(opts.buckets(LATENCY_BUCKETS.to_vec())).expect("valid histogram options")
}

/// Seconds covered by a [`RateWindow`].
pub const RATE_WINDOW_S: u64 = 60;

/// Bytes per record assumed until enough records are stored to measure it.
pub const DEFAULT_BYTES_PER_RECORD: f64 = 256.0;
/// Records needed before the measured bytes per record replace the default (below that the
/// schema's fixed pages dominate the measure).
pub const MIN_RECORDS_TO_MEASURE: u64 = 1000;
/// The smallest bytes per record ever used (an encoded observation with its key is larger).
pub const MIN_BYTES_PER_RECORD: f64 = 64.0;

/// Milliseconds on a monotonic clock (from the first call in this process).
pub fn mono_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Counts per second over the last [`RATE_WINDOW_S`] seconds, in a ring of one-second buckets.
#[derive(Debug)]
pub struct RateWindow {
    started_ms: u64,
    ring: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    /// The second each bucket holds (`u64::MAX`: never used).
    second: [u64; RATE_WINDOW_S as usize],
    count: [u64; RATE_WINDOW_S as usize],
}

impl RateWindow {
    /// A window whose rate counts from `started_ms` (on the [`mono_ms`] clock) while younger
    /// than the window.
    pub fn new(started_ms: u64) -> Self {
        Self {
            started_ms,
            ring: Mutex::new(Ring {
                second: [u64::MAX; RATE_WINDOW_S as usize],
                count: [0; RATE_WINDOW_S as usize],
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `n` events at `now_ms`.
    pub fn add_at(&self, now_ms: u64, n: u64) {
        let sec = now_ms / 1000;
        let i = (sec % RATE_WINDOW_S) as usize;
        let mut ring = self.lock();
        if ring.second[i] != sec {
            ring.second[i] = sec;
            ring.count[i] = 0;
        }
        ring.count[i] += n;
    }

    /// Events per second over the window ending at `now_ms` (over the time since the start
    /// when that is shorter; at least one second).
    pub fn rate_at(&self, now_ms: u64) -> f64 {
        let sec = now_ms / 1000;
        let first = sec.saturating_sub(RATE_WINDOW_S - 1);
        let sum: u64 = {
            let ring = self.lock();
            ring.second
                .iter()
                .zip(ring.count.iter())
                .filter(|(s, _)| **s != u64::MAX && **s >= first && **s <= sec)
                .map(|(_, c)| *c)
                .sum()
        };
        let from_ms = (first * 1000).max(self.started_ms);
        let span_s = (now_ms.saturating_sub(from_ms) as f64 / 1000.0).max(1.0);
        sum as f64 / span_s
    }

    pub fn rate(&self) -> f64 {
        self.rate_at(mono_ms())
    }
}

/// The transport a device's readings arrive on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Mllp,
    Serial,
    Mqtt,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Mllp, Transport::Serial, Transport::Mqtt];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mllp => "mllp",
            Transport::Serial => "serial",
            Transport::Mqtt => "mqtt",
        }
    }

    /// The transport of a configured device's protocol.
    pub fn of(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Pcd01 => Transport::Mllp,
            Protocol::Masimo | Protocol::Medibus => Transport::Serial,
            Protocol::Mqtt => Transport::Mqtt,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why the store refused a message, as the `reason` label says it.
pub const REFUSAL_REASONS: [&str; 5] = ["budget", "overload", "io", "closed", "other"];

fn refusal_index(e: &StoreError) -> usize {
    match e {
        StoreError::BudgetExceeded { .. } => 0,
        StoreError::Overloaded { .. } => 1,
        StoreError::Sqlite { .. } => 2,
        StoreError::Closed => 3,
        #[allow(unreachable_patterns)]
        _ => 4,
    }
}

/// Ingest counters of one transport.
#[derive(Debug)]
pub struct TransportCounters {
    pub observations: AtomicU64,
    pub messages: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused: [AtomicU64; REFUSAL_REASONS.len()],
    pub rate: RateWindow,
}

/// Ingest counters of every transport, shared by the device actors and `/metrics`.
#[derive(Debug)]
pub struct IngestStats {
    transports: [TransportCounters; 3],
    /// `icu_ack_latency_seconds{transport}`, and its three series resolved once (in
    /// [`Transport::ALL`] order) so the transports observe without a label lookup.
    ack_latency: HistogramVec,
    ack: [Histogram; 3],
}

impl Default for IngestStats {
    fn default() -> Self {
        Self::new_at(mono_ms())
    }
}

impl IngestStats {
    /// Counters whose rate windows start at `started_ms` (on the [`mono_ms`] clock).
    pub fn new_at(started_ms: u64) -> Self {
        let one = || TransportCounters {
            observations: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            refused: Default::default(),
            rate: RateWindow::new(started_ms),
        };
        let ack_latency = HistogramVec::new(
            HistogramOpts::new(
                "icu_ack_latency_seconds",
                "Seconds from a message's receipt to its acknowledgement (MLLP ACK written, MQTT PUBACK released after the commit; serial: reading decoded to its commit).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["transport"],
        )
        .expect("valid histogram options");
        let ack = Transport::ALL.map(|t| ack_latency.with_label_values(&[t.as_str()]));
        Self {
            transports: [one(), one(), one()],
            ack_latency,
            ack,
        }
    }

    pub fn transport(&self, t: Transport) -> &TransportCounters {
        &self.transports[t.index()]
    }

    /// The ACK-latency series of transport `t` (clone it into the transport's task).
    pub fn ack_latency(&self, t: Transport) -> &Histogram {
        &self.ack[t.index()]
    }

    /// The whole `icu_ack_latency_seconds` family, for `/metrics`.
    pub fn ack_latency_family(&self) -> HistogramVec {
        self.ack_latency.clone()
    }

    /// A message of `observations` readings was committed at `now_ms`.
    pub fn stored_at(&self, t: Transport, observations: u64, now_ms: u64) {
        let c = self.transport(t);
        c.messages.fetch_add(1, Ordering::Relaxed);
        c.observations.fetch_add(observations, Ordering::Relaxed);
        c.rate.add_at(now_ms, observations);
    }

    pub fn stored(&self, t: Transport, observations: u64) {
        self.stored_at(t, observations, mono_ms());
    }

    /// A retried message was recognised as already stored.
    pub fn duplicate(&self, t: Transport) {
        self.transport(t).duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// The store refused a message.
    pub fn refused(&self, t: Transport, e: &StoreError) {
        self.transport(t).refused[refusal_index(e)].fetch_add(1, Ordering::Relaxed);
    }

    fn figures(&self, now_ms: u64) -> Vec<TransportFigures> {
        Transport::ALL
            .iter()
            .map(|t| {
                let c = self.transport(*t);
                TransportFigures {
                    transport: *t,
                    observations: c.observations.load(Ordering::Relaxed),
                    messages: c.messages.load(Ordering::Relaxed),
                    duplicates: c.duplicates.load(Ordering::Relaxed),
                    refused: std::array::from_fn(|i| c.refused[i].load(Ordering::Relaxed)),
                    observations_per_s: c.rate.rate_at(now_ms),
                }
            })
            .collect()
    }
}

/// Whether the gateway has bound its listeners and is not shutting down (for `/readyz`).
#[derive(Debug, Default)]
pub struct Readiness {
    listening: AtomicBool,
}

impl Readiness {
    pub fn set_listening(&self, on: bool) {
        self.listening.store(on, Ordering::Relaxed);
    }

    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }
}

/// Why the gateway is not ready to take input (empty: ready). `store_read` is the error of a
/// read through the store's connection, if any; `full` is the store writer's own verdict that
/// the disk budget is reached (new readings are refused).
pub fn readiness_problems(
    listening: bool,
    store_running: bool,
    store_read: Option<&str>,
    full: bool,
    used_bytes: u64,
    budget_bytes: u64,
) -> Vec<String> {
    let mut problems = Vec::new();
    if !listening {
        problems.push("listeners are not bound (starting or shutting down)".to_owned());
    }
    if !store_running {
        problems.push("the store writer is not running".to_owned());
    }
    if let Some(e) = store_read {
        problems.push(format!("the store cannot be read: {e}"));
    }
    if full || used_bytes >= budget_bytes {
        problems.push(format!(
            "the store has reached its disk budget ({used_bytes} of {budget_bytes} bytes in use): new readings are refused"
        ));
    }
    problems
}

/// Bytes of the store's files: the database plus its write-ahead log. Freed pages are reused,
/// not returned, so this stays at its high-water mark (the budget counts pages in use instead).
pub fn store_file_bytes(db: &std::path::Path) -> u64 {
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    size(db) + size(std::path::Path::new(&wal))
}

/// Bytes one stored record takes: `data_bytes / records` once [`MIN_RECORDS_TO_MEASURE`]
/// records are stored (never below [`MIN_BYTES_PER_RECORD`]), else the default.
pub fn bytes_per_record(data_bytes: u64, records: u64) -> f64 {
    if records < MIN_RECORDS_TO_MEASURE {
        return DEFAULT_BYTES_PER_RECORD;
    }
    (data_bytes as f64 / records as f64).max(MIN_BYTES_PER_RECORD)
}

/// Budget bytes still available to unsent readings: the budget less the bytes in use, plus the
/// records already forwarded (the store prunes those, oldest first, to make room), at most the
/// budget.
pub fn free_budget_bytes(
    budget_bytes: u64,
    used_bytes: u64,
    forwarded_records: u64,
    bytes_per_record: f64,
) -> f64 {
    let free = budget_bytes.saturating_sub(used_bytes) as f64;
    (free + forwarded_records as f64 * bytes_per_record).min(budget_bytes as f64)
}

/// Hours until the budget is full: free bytes / (observations per second × bytes per record)
/// / 3600. `+Inf` when nothing is being ingested; 0 when nothing is free.
pub fn buffer_hours_left(free_bytes: f64, bytes_per_record: f64, observations_per_s: f64) -> f64 {
    let free = free_bytes;
    if free.is_nan() || free <= 0.0 {
        return 0.0;
    }
    let bytes_per_s = observations_per_s * bytes_per_record.max(MIN_BYTES_PER_RECORD);
    if bytes_per_s.is_nan() || bytes_per_s <= 0.0 {
        return f64::INFINITY;
    }
    free / bytes_per_s / 3600.0
}

/// Ingest figures of one transport.
#[derive(Debug, Clone)]
pub struct TransportFigures {
    pub transport: Transport,
    pub observations: u64,
    pub messages: u64,
    pub duplicates: u64,
    pub refused: [u64; REFUSAL_REASONS.len()],
    pub observations_per_s: f64,
}

/// What the store's read connection says (absent when the query failed).
#[derive(Debug, Clone, Default)]
pub struct StoreFigures {
    pub records: u64,
    pub unsent: Vec<(Stream, u64)>,
    pub dead_letters: u64,
    pub oldest_unsent_us: Option<i64>,
    /// Bytes of the database pages in use.
    pub data_bytes: u64,
}

impl StoreFigures {
    /// Reads the figures through a read connection (blocking: call on the blocking pool).
    pub fn read(db: &crate::store::ReaderDb) -> Result<Self, StoreError> {
        let counts = db.counts()?;
        Ok(Self {
            records: counts.records,
            unsent: db.unsent_by_stream()?,
            dead_letters: counts.dead_letters,
            oldest_unsent_us: counts.oldest_unsent_us,
            data_bytes: db.data_bytes()?,
        })
    }
}

/// The bridge's figures (all zero, state `disabled`, without `[kafka]`).
#[derive(Debug, Clone)]
pub struct BridgeFigures {
    pub state: BridgeState,
    pub forwarded_records: u64,
    pub forwarded_observations: u64,
    pub in_flight: u64,
    pub delivery_errors: u64,
    pub broker_errors: u64,
    pub outbox_errors: u64,
}

impl BridgeFigures {
    pub fn disabled() -> Self {
        Self {
            state: BridgeState::Disabled,
            forwarded_records: 0,
            forwarded_observations: 0,
            in_flight: 0,
            delivery_errors: 0,
            broker_errors: 0,
            outbox_errors: 0,
        }
    }

    pub fn of(stats: &BridgeStats) -> Self {
        Self {
            state: stats.state(),
            forwarded_records: stats.forwarded_records(),
            forwarded_observations: stats.forwarded_observations(),
            in_flight: stats.in_flight(),
            delivery_errors: stats.delivery_errors(),
            broker_errors: stats.broker_errors(),
            outbox_errors: stats.outbox_errors(),
        }
    }
}

/// The store writer's counters and its latest disk-budget measurement.
#[derive(Debug, Clone, Default)]
pub struct StoreCounters {
    pub commits: u64,
    pub failed: u64,
    pub refused_overload: u64,
    pub refused_budget: u64,
    /// Bytes in use as the budget counts them (pages in use plus the write-ahead log).
    pub used_bytes: u64,
    pub budget_bytes: u64,
    pub high_water_bytes: u64,
    pub full: bool,
    pub pruning: bool,
    pub pruned_sent_records: u64,
    pub pruned_unsent_observations: u64,
    pub pruned_dead_letters: u64,
    pub refused_dead_letters: u64,
    pub waveforms: crate::store::WaveformCounts,
}

impl StoreCounters {
    pub fn of(stats: &crate::store::StoreStats) -> Self {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Self {
            commits: n(&stats.commits),
            failed: n(&stats.requests_failed),
            refused_overload: n(&stats.requests_refused_overload),
            refused_budget: n(&stats.requests_refused_budget),
            used_bytes: n(&stats.used_bytes),
            budget_bytes: n(&stats.budget_bytes),
            high_water_bytes: n(&stats.high_water_bytes),
            full: stats.full.load(Ordering::Relaxed),
            pruning: stats.pruning.load(Ordering::Relaxed),
            pruned_sent_records: n(&stats.pruned_sent_records),
            pruned_unsent_observations: n(&stats.pruned_unsent_observations),
            pruned_dead_letters: n(&stats.pruned_dead_letters),
            refused_dead_letters: n(&stats.refused_dead_letters),
            waveforms: stats.waveforms.lock().map(|w| *w).unwrap_or_default(),
        }
    }
}

/// One configured device as `/metrics` shows it (from the live view).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceFigures {
    pub device: String,
    pub bed: String,
    /// Sending: data within its `silent_after`.
    pub up: bool,
    /// Its last message (µs since the Unix epoch), if any.
    pub last_seen_us: Option<i64>,
    pub messages: u64,
    pub errors: u64,
}

/// The long-lived histograms `/metrics` shows (clones share the counts).
#[derive(Debug, Clone)]
pub struct Latencies {
    pub ack: HistogramVec,
    pub commit: Histogram,
    pub alarm_path: Histogram,
    /// The bridge's; a histogram that stays empty without `[kafka]`.
    pub delivery: Histogram,
}

impl Latencies {
    /// Empty histograms (no bridge, nothing observed).
    pub fn empty() -> Self {
        let ingest = IngestStats::new_at(0);
        Self {
            ack: ingest.ack_latency_family(),
            commit: crate::store::CommitLatency::default().0,
            alarm_path: alarm_path_latency_histogram(),
            delivery: icu_cloud_bridge::bridge::BridgeStats::new()
                .delivery_latency()
                .clone(),
        }
    }
}

/// One snapshot of everything `/metrics` shows.
#[derive(Debug, Clone)]
pub struct Figures {
    pub gateway_id: String,
    pub uptime_s: f64,
    pub now_us: i64,
    pub ingest: Vec<TransportFigures>,
    pub store: Option<StoreFigures>,
    pub store_counters: StoreCounters,
    /// Bytes of the store's files (see [`store_file_bytes`]).
    pub file_bytes: u64,
    pub bridge: BridgeFigures,
    /// The MLLP listener's protection counters (filled in by the caller).
    pub mllp: MllpFigures,
    /// The configured devices (filled in by the caller).
    pub devices: Vec<DeviceFigures>,
    /// The histograms (filled in by the caller).
    pub latencies: Latencies,
    /// Seconds until the gateway's TLS certificate expires, when one is configured.
    pub tls_expiry_s: Option<i64>,
}

/// The MLLP listener's counters that `/metrics` shows (from `mllp::MllpStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MllpFigures {
    pub refused_max_connections: u64,
    pub refused_per_address: u64,
    pub frame_timeouts: u64,
    pub idle_timeouts: u64,
    pub accept_errors: u64,
    pub peers_refused: u64,
}

impl Figures {
    /// The in-memory part; the store part and the file sizes are filled in by the caller.
    pub fn gather(
        gateway_id: &str,
        uptime_s: f64,
        ingest: &IngestStats,
        store_counters: StoreCounters,
        bridge: BridgeFigures,
    ) -> Self {
        Self {
            gateway_id: gateway_id.to_owned(),
            uptime_s,
            now_us: crate::clock::now_us(),
            ingest: ingest.figures(mono_ms()),
            store: None,
            store_counters,
            file_bytes: 0,
            bridge,
            mllp: MllpFigures::default(),
            devices: Vec::new(),
            latencies: Latencies::empty(),
            tls_expiry_s: None,
        }
    }

    /// Observations per second over every transport.
    pub fn ingest_rate(&self) -> f64 {
        self.ingest.iter().map(|t| t.observations_per_s).sum()
    }

    pub fn bytes_per_record(&self) -> f64 {
        self.store
            .as_ref()
            .map(|s| bytes_per_record(s.data_bytes, s.records))
            .unwrap_or(DEFAULT_BYTES_PER_RECORD)
    }

    /// See [`free_budget_bytes`]; forwarded records count only when the store answered.
    pub fn free_budget_bytes(&self) -> f64 {
        let forwarded = self
            .store
            .as_ref()
            .map(|s| {
                let unsent: u64 = s.unsent.iter().map(|(_, n)| n).sum();
                s.records.saturating_sub(unsent)
            })
            .unwrap_or(0);
        free_budget_bytes(
            self.store_counters.budget_bytes,
            self.store_counters.used_bytes,
            forwarded,
            self.bytes_per_record(),
        )
    }

    pub fn buffer_hours_left(&self) -> f64 {
        buffer_hours_left(
            self.free_budget_bytes(),
            self.bytes_per_record(),
            self.ingest_rate(),
        )
    }
}

mod render;

pub use render::render;

#[cfg(test)]
mod tests;
