//! Prometheus metrics (`GET /metrics`) and the figures behind them.
//!
//! Owns: the ingest counters of every transport ([`IngestStats`], counted by the device actor
//! when the store's commit returned, the single place that knows both the transport and the
//! outcome), the recent-rate windows ([`RateWindow`]: 60 one-second buckets), the forward-rate
//! sampler ([`ForwardRates`]), the "hours of buffer left" estimate ([`buffer_hours_left`]) and
//! the text exposition format ([`render`], version 0.0.4, written by hand: `# HELP`, `# TYPE`,
//! one line per sample). The HTTP handler (`http::metrics`) gathers a [`Figures`] snapshot (the
//! SQLite part on the blocking pool, never on the actix thread) and renders it.
//!
//! Every family below is always present (zeros when a part is not configured, e.g. the bridge
//! counters without `[kafka]`), so dashboards and alerts need no special cases.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `icu_gateway_info` | gauge | `gateway_id` | always 1; carries the gateway id |
//! | `icu_gateway_uptime_seconds` | gauge | | seconds since the gateway started |
//! | `icu_ingest_observations_total` | counter | `transport` (`mllp`, `serial`, `mqtt`) | observations committed to the store (so acknowledged upstream) |
//! | `icu_ingest_messages_total` | counter | `transport` | messages (HL7 message, serial reading set, MQTT publish) committed to the store |
//! | `icu_ingest_duplicate_messages_total` | counter | `transport` | retried messages recognised as already stored (acknowledged, not stored again) |
//! | `icu_ingest_refused_total` | counter | `transport`, `reason` (`budget`, `overload`, `io`, `closed`, `other`) | messages the store refused (the sender got AR or no PUBACK and sends again) |
//! | `icu_ingest_observations_per_second` | gauge | `transport` | observations committed per second over the last 60 s (since start when younger) |
//! | `icu_outbox_unsent_records` | gauge | `stream` (`observations`, `alarms`, `adt`, `deadletter`) | outbox depth: records stored and not yet confirmed by Kafka |
//! | `icu_outbox_oldest_unsent_age_seconds` | gauge | | age (gateway receive time) of the oldest unsent record; 0 when the outbox is empty |
//! | `icu_bridge_state` | gauge | `state` (`disabled`, `connecting`, `online`, `offline`, `topic_missing`) | 1 for the bridge's current state, 0 for the others |
//! | `icu_bridge_forwarded_records_total` | counter | | Kafka records (bundles) delivered and marked sent |
//! | `icu_bridge_forwarded_observations_total` | counter | | observations in those records |
//! | `icu_bridge_forwarded_records_per_second` | gauge | | forward rate in Kafka records over the last 60 s |
//! | `icu_bridge_forwarded_observations_per_second` | gauge | | forward rate in observations over the last 60 s |
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
//! | `icu_store_disk_usage_bytes` | gauge | | bytes in use as the disk budget counts them (pages in use plus the write-ahead log) |
//! | `icu_store_file_bytes` | gauge | | bytes of the store's files (database plus write-ahead log; freed pages are reused, not returned, so it stays at its high-water mark) |
//! | `icu_store_disk_budget_bytes` | gauge | | the disk budget (`store.disk_budget_mb`) |
//! | `icu_store_high_water_bytes` | gauge | | above this many bytes in use the store prunes forwarded records |
//! | `icu_store_budget_full` | gauge | | 1 while the budget is reached and new readings are refused |
//! | `icu_store_pruning` | gauge | | 1 from crossing the high-water mark until back at the low-water mark |
//! | `icu_store_bytes_per_record` | gauge | | bytes one stored record takes (pages in use / records; 256 until 1000 records are stored, never below 64) |
//! | `icu_store_free_budget_bytes` | gauge | | budget bytes left for unsent readings: budget − bytes in use + forwarded records × bytes per record (the store prunes those to make room), at most the budget |
//! | `icu_buffer_hours_left` | gauge | | hours until the free budget is full at the current ingest rate: free budget bytes / (observations/s of all transports over the last 60 s × bytes per record) / 3600; `+Inf` when nothing is being ingested, 0 when nothing is free |
//! | `icu_mllp_connections_refused_total` | counter | `reason` (`max_connections`, `per_address`) | MLLP connections closed at once because a cap was reached |
//! | `icu_mllp_connections_timed_out_total` | counter | `reason` (`frame`, `idle`) | MLLP connections closed by the frame or idle timeout |
//! | `icu_mllp_accept_errors_total` | counter | | failed `accept` calls of the MLLP listener (each followed by a pause) |
//! | `icu_mllp_peers_refused_total` | counter | | messages refused because their sender's address is not allowed (`allow_from`) |

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use icu_cloud_bridge::bridge::{BridgeState, BridgeStats};
use icu_cloud_bridge::outbox::Stream;

use crate::domain::Protocol;
use crate::store::StoreError;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
        Self {
            transports: [one(), one(), one()],
        }
    }

    pub fn transport(&self, t: Transport) -> &TransportCounters {
        &self.transports[t.index()]
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

/// The bridge's recent forward rate, sampled from its cumulative counters once a second.
#[derive(Debug)]
pub struct ForwardRates {
    records: RateWindow,
    observations: RateWindow,
    last: Mutex<(u64, u64)>,
}

impl ForwardRates {
    pub fn new_at(started_ms: u64) -> Self {
        Self {
            records: RateWindow::new(started_ms),
            observations: RateWindow::new(started_ms),
            last: Mutex::new((0, 0)),
        }
    }

    /// Records what was forwarded since the previous sample, given the cumulative totals.
    pub fn sample_at(&self, now_ms: u64, records_total: u64, observations_total: u64) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        self.records
            .add_at(now_ms, records_total.saturating_sub(last.0));
        self.observations
            .add_at(now_ms, observations_total.saturating_sub(last.1));
        *last = (records_total, observations_total);
    }

    /// `(records/s, observations/s)` over the last 60 s.
    pub fn rates_at(&self, now_ms: u64) -> (f64, f64) {
        (
            self.records.rate_at(now_ms),
            self.observations.rate_at(now_ms),
        )
    }

    /// Starts sampling `bridge` every second on the current runtime, for as long as it runs.
    pub fn start(bridge: Arc<BridgeStats>) -> Arc<Self> {
        let rates = Arc::new(Self::new_at(mono_ms()));
        let sampler = rates.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                sampler.sample_at(
                    mono_ms(),
                    bridge.forwarded_records(),
                    bridge.forwarded_observations(),
                );
            }
        });
        rates
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
    pub records_per_s: f64,
    pub observations_per_s: f64,
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
            records_per_s: 0.0,
            observations_per_s: 0.0,
            in_flight: 0,
            delivery_errors: 0,
            broker_errors: 0,
            outbox_errors: 0,
        }
    }

    pub fn of(stats: &BridgeStats, rates: Option<&ForwardRates>, now_ms: u64) -> Self {
        let (records_per_s, observations_per_s) =
            rates.map(|r| r.rates_at(now_ms)).unwrap_or((0.0, 0.0));
        Self {
            state: stats.state(),
            forwarded_records: stats.forwarded_records(),
            forwarded_observations: stats.forwarded_observations(),
            records_per_s,
            observations_per_s,
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

/// A sample value as the text format writes it (`+Inf`, `-Inf`, `NaN`, integers without a
/// fraction).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Escapes a label value (backslash, double quote, line feed).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text being written.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write as _;
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        use std::fmt::Write as _;
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(val));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", format_value(v));
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }

    /// A family with one sample per transport.
    fn per_transport(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        ingest: &[TransportFigures],
        value: impl Fn(&TransportFigures) -> f64,
    ) {
        self.family(name, kind, help);
        for t in ingest {
            self.sample(name, &[("transport", t.transport.as_str())], value(t));
        }
    }
}

fn state_label(s: &BridgeState) -> &'static str {
    match s {
        BridgeState::Disabled => "disabled",
        BridgeState::Connecting => "connecting",
        BridgeState::Online => "online",
        BridgeState::Offline { .. } => "offline",
        BridgeState::TopicMissing { .. } => "topic_missing",
    }
}

/// Renders the figures in the Prometheus text exposition format 0.0.4.
pub fn render(f: &Figures) -> String {
    let mut t = Text(String::with_capacity(8 * 1024));
    t.family("icu_gateway_info", "gauge", "The gateway; always 1.");
    t.sample("icu_gateway_info", &[("gateway_id", &f.gateway_id)], 1.0);
    t.single(
        "icu_gateway_uptime_seconds",
        "gauge",
        "Seconds since the gateway started.",
        f.uptime_s,
    );

    let n = |v: u64| v as f64;
    t.per_transport(
        "icu_ingest_observations_total",
        "counter",
        "Observations committed to the store (acknowledged upstream), per transport.",
        &f.ingest,
        |x| n(x.observations),
    );
    t.per_transport(
        "icu_ingest_messages_total",
        "counter",
        "Messages committed to the store, per transport.",
        &f.ingest,
        |x| n(x.messages),
    );
    t.per_transport(
        "icu_ingest_duplicate_messages_total",
        "counter",
        "Retried messages recognised as already stored (acknowledged, not stored again).",
        &f.ingest,
        |x| n(x.duplicates),
    );
    t.family(
        "icu_ingest_refused_total",
        "counter",
        "Messages the store refused (the sender was told and sends again), per transport and reason.",
    );
    for x in &f.ingest {
        for (i, reason) in REFUSAL_REASONS.iter().enumerate() {
            t.sample(
                "icu_ingest_refused_total",
                &[("transport", x.transport.as_str()), ("reason", reason)],
                n(x.refused[i]),
            );
        }
    }
    t.per_transport(
        "icu_ingest_observations_per_second",
        "gauge",
        "Observations committed per second over the last 60 s, per transport.",
        &f.ingest,
        |x| x.observations_per_s,
    );

    // The outbox and the store's contents (absent when the store did not answer).
    t.single(
        "icu_store_up",
        "gauge",
        "1 when the store answered the metrics query.",
        if f.store.is_some() { 1.0 } else { 0.0 },
    );
    if let Some(s) = &f.store {
        t.family(
            "icu_outbox_unsent_records",
            "gauge",
            "Outbox depth: records stored and not yet confirmed by Kafka, per stream.",
        );
        for stream in Stream::ALL {
            let depth = s
                .unsent
                .iter()
                .filter(|(k, _)| *k == stream)
                .map(|(_, c)| *c)
                .sum::<u64>();
            t.sample(
                "icu_outbox_unsent_records",
                &[("stream", stream.as_str())],
                n(depth),
            );
        }
        let age = s
            .oldest_unsent_us
            .map(|o| (f.now_us.saturating_sub(o)).max(0) as f64 / 1e6)
            .unwrap_or(0.0);
        t.single(
            "icu_outbox_oldest_unsent_age_seconds",
            "gauge",
            "Age of the oldest unsent record (by gateway receive time); 0 when the outbox is empty.",
            age,
        );
        t.single(
            "icu_store_records",
            "gauge",
            "Records in the store, sent and unsent, every stream.",
            n(s.records),
        );
        t.single(
            "icu_dead_letters_stored",
            "gauge",
            "Rejected inputs kept in the dead-letter table.",
            n(s.dead_letters),
        );
    }

    // The bridge.
    let b = &f.bridge;
    t.family(
        "icu_bridge_state",
        "gauge",
        "1 for the bridge's current state (disabled, connecting, online, offline, topic_missing).",
    );
    let current = state_label(&b.state);
    for s in [
        "disabled",
        "connecting",
        "online",
        "offline",
        "topic_missing",
    ] {
        t.sample(
            "icu_bridge_state",
            &[("state", s)],
            if s == current { 1.0 } else { 0.0 },
        );
    }
    t.single(
        "icu_bridge_forwarded_records_total",
        "counter",
        "Kafka records (bundles) delivered and marked sent.",
        n(b.forwarded_records),
    );
    t.single(
        "icu_bridge_forwarded_observations_total",
        "counter",
        "Observations in the Kafka records delivered and marked sent.",
        n(b.forwarded_observations),
    );
    t.single(
        "icu_bridge_forwarded_records_per_second",
        "gauge",
        "Kafka records delivered per second over the last 60 s.",
        b.records_per_s,
    );
    t.single(
        "icu_bridge_forwarded_observations_per_second",
        "gauge",
        "Observations delivered to Kafka per second over the last 60 s.",
        b.observations_per_s,
    );
    t.single(
        "icu_bridge_in_flight_records",
        "gauge",
        "Kafka records produced and awaiting their delivery report.",
        n(b.in_flight),
    );
    t.single(
        "icu_bridge_delivery_errors_total",
        "counter",
        "Kafka records whose delivery failed (they stay in the outbox and are sent again).",
        n(b.delivery_errors),
    );
    t.single(
        "icu_bridge_broker_errors_total",
        "counter",
        "Forwarding cycles that failed before producing (brokers unreachable, topic missing).",
        n(b.broker_errors),
    );
    t.single(
        "icu_bridge_outbox_errors_total",
        "counter",
        "Failed outbox reads or mark-sent calls of the bridge.",
        n(b.outbox_errors),
    );

    // Store writes and the disk budget.
    let c = &f.store_counters;
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    for (name, kind, help, v) in [
        (
            "icu_store_commits_total",
            "counter",
            "Group commits run by the store.",
            n(c.commits),
        ),
        (
            "icu_store_write_failures_total",
            "counter",
            "Write requests that failed (disk budget, I/O); nothing of them was stored.",
            n(c.failed),
        ),
        (
            "icu_store_refused_overload_total",
            "counter",
            "Write requests refused because too many were waiting for the disk.",
            n(c.refused_overload),
        ),
        (
            "icu_store_refused_budget_total",
            "counter",
            "Write requests refused because the disk budget was reached (part of the write failures).",
            n(c.refused_budget),
        ),
        (
            "icu_store_pruned_sent_records_total",
            "counter",
            "Forwarded records deleted to stay under the disk budget.",
            n(c.pruned_sent_records),
        ),
        (
            "icu_store_pruned_unsent_observations_total",
            "counter",
            "Unsent observations deleted to make room (store.on_full = drop_oldest_unsent): data lost.",
            n(c.pruned_unsent_observations),
        ),
        (
            "icu_store_pruned_dead_letters_total",
            "counter",
            "Forwarded dead-letter rows deleted to stay under the disk budget.",
            n(c.pruned_dead_letters),
        ),
        (
            "icu_store_refused_dead_letters_total",
            "counter",
            "Dead letters refused at the disk budget's high-water mark: rejected input not kept (part of the budget refusals).",
            n(c.refused_dead_letters),
        ),
        (
            "icu_store_disk_usage_bytes",
            "gauge",
            "Bytes in use as the disk budget counts them (pages in use plus the write-ahead log).",
            n(c.used_bytes),
        ),
        (
            "icu_store_file_bytes",
            "gauge",
            "Bytes of the store's files (database plus write-ahead log; freed pages are reused, not returned).",
            n(f.file_bytes),
        ),
        (
            "icu_store_disk_budget_bytes",
            "gauge",
            "The store's disk budget (store.disk_budget_mb).",
            n(c.budget_bytes),
        ),
        (
            "icu_store_high_water_bytes",
            "gauge",
            "Above this many bytes in use the store prunes forwarded records.",
            n(c.high_water_bytes),
        ),
        (
            "icu_store_budget_full",
            "gauge",
            "1 while the disk budget is reached and new readings are refused.",
            flag(c.full),
        ),
        (
            "icu_store_pruning",
            "gauge",
            "1 between crossing the high-water mark and getting back to the low-water mark.",
            flag(c.pruning),
        ),
        (
            "icu_store_free_budget_bytes",
            "gauge",
            "Budget bytes left for unsent readings: budget less bytes in use, plus forwarded records (pruned to make room).",
            f.free_budget_bytes(),
        ),
    ] {
        t.single(name, kind, help, v);
    }
    t.single(
        "icu_store_bytes_per_record",
        "gauge",
        "Bytes one stored record takes (pages in use / records; 256 until 1000 records are stored).",
        f.bytes_per_record(),
    );
    t.single(
        "icu_buffer_hours_left",
        "gauge",
        "Hours until the free budget is full at the ingest rate of the last 60 s; +Inf when nothing is ingested.",
        f.buffer_hours_left(),
    );
    let m = &f.mllp;
    for (name, help, label_values) in [
        (
            "icu_mllp_connections_refused_total",
            "MLLP connections closed at once because a cap was reached (mllp.max_connections, mllp.max_connections_per_address).",
            [
                ("max_connections", m.refused_max_connections),
                ("per_address", m.refused_per_address),
            ],
        ),
        (
            "icu_mllp_connections_timed_out_total",
            "MLLP connections closed by the frame or idle timeout (mllp.frame_timeout_s, mllp.idle_timeout_s).",
            [("frame", m.frame_timeouts), ("idle", m.idle_timeouts)],
        ),
    ] {
        t.family(name, "counter", help);
        for (reason, v) in label_values {
            t.sample(name, &[("reason", reason)], n(v));
        }
    }
    t.single(
        "icu_mllp_accept_errors_total",
        "counter",
        "Failed accept calls of the MLLP listener (each followed by a pause of 10 ms to 1 s).",
        n(m.accept_errors),
    );
    t.single(
        "icu_mllp_peers_refused_total",
        "counter",
        "Messages refused because their sender's address is not allowed (devices[].allow_from, adt.allow_from).",
        n(m.peers_refused),
    );
    t.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(rate_obs: u64, budget: u64, used: u64) -> Figures {
        let ingest = IngestStats::new_at(0);
        // `rate_obs` observations per second over a full minute, all on MLLP.
        for s in 0..60 {
            ingest.stored_at(Transport::Mllp, rate_obs, 60_000 + s * 1000);
        }
        ingest.stored_at(Transport::Mqtt, 7, 119_000);
        ingest.duplicate(Transport::Mllp);
        ingest.refused(
            Transport::Serial,
            &StoreError::BudgetExceeded {
                used_mib: 1,
                budget_mib: 1,
            },
        );
        Figures {
            gateway_id: "gw \"1\"".into(),
            uptime_s: 120.0,
            now_us: 10_000_000,
            ingest: ingest.figures(119_999),
            store: Some(StoreFigures {
                records: 10_000,
                // Nothing forwarded yet: all 10 000 records are unsent.
                unsent: vec![(Stream::Observations, 9_998), (Stream::Alarms, 2)],
                dead_letters: 3,
                oldest_unsent_us: Some(4_000_000),
                data_bytes: 2_000_000,
            }),
            store_counters: StoreCounters {
                commits: 5,
                failed: 1,
                refused_budget: 1,
                used_bytes: used,
                budget_bytes: budget,
                high_water_bytes: budget / 10 * 9,
                ..Default::default()
            },
            file_bytes: used + 4096,
            bridge: BridgeFigures::disabled(),
            mllp: MllpFigures {
                refused_per_address: 284,
                frame_timeouts: 16,
                ..Default::default()
            },
        }
    }

    /// `(name, labels, value)` of every sample line; checks every sample has its HELP and TYPE.
    fn parse(text: &str) -> Vec<(String, String, String)> {
        let mut typed = std::collections::HashSet::new();
        let mut helped = std::collections::HashSet::new();
        let mut out = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap().to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let name = it.next().unwrap().to_owned();
                assert!(matches!(it.next(), Some("counter" | "gauge")), "{line}");
                assert!(typed.insert(name), "TYPE twice: {line}");
            } else {
                let (series, value) = line.rsplit_once(' ').expect(line);
                let (name, labels) = match series.split_once('{') {
                    Some((n, l)) => (n, l.trim_end_matches('}')),
                    None => (series, ""),
                };
                assert!(typed.contains(name) && helped.contains(name), "{line}");
                assert!(
                    value == "+Inf" || value.parse::<f64>().is_ok(),
                    "value of {line}"
                );
                out.push((name.to_owned(), labels.to_owned(), value.to_owned()));
            }
        }
        out
    }

    fn value(samples: &[(String, String, String)], name: &str, labels: &str) -> String {
        samples
            .iter()
            .find(|(n, l, _)| n == name && l == labels)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}}"))
            .2
            .clone()
    }

    #[test]
    fn the_text_format_has_every_family_with_help_type_and_values() {
        let f = figures(10, 1 << 30, 1 << 20);
        let text = render(&f);
        assert!(text.ends_with('\n'));
        let s = parse(&text);
        let expected = [
            ("icu_gateway_info", r#"gateway_id="gw \"1\"""#, "1"),
            (
                "icu_ingest_observations_total",
                r#"transport="mllp""#,
                "600",
            ),
            ("icu_ingest_messages_total", r#"transport="mllp""#, "60"),
            (
                "icu_mllp_connections_refused_total",
                r#"reason="per_address""#,
                "284",
            ),
            (
                "icu_mllp_connections_refused_total",
                r#"reason="max_connections""#,
                "0",
            ),
            (
                "icu_mllp_connections_timed_out_total",
                r#"reason="frame""#,
                "16",
            ),
            ("icu_mllp_peers_refused_total", "", "0"),
            ("icu_ingest_observations_total", r#"transport="mqtt""#, "7"),
            (
                "icu_ingest_observations_total",
                r#"transport="serial""#,
                "0",
            ),
            (
                "icu_ingest_duplicate_messages_total",
                r#"transport="mllp""#,
                "1",
            ),
            (
                "icu_ingest_refused_total",
                r#"transport="serial",reason="budget""#,
                "1",
            ),
            (
                "icu_outbox_unsent_records",
                r#"stream="observations""#,
                "9998",
            ),
            ("icu_outbox_unsent_records", r#"stream="alarms""#, "2"),
            ("icu_outbox_unsent_records", r#"stream="deadletter""#, "0"),
            ("icu_outbox_unsent_records", r#"stream="adt""#, "0"),
            ("icu_outbox_oldest_unsent_age_seconds", "", "6"),
            ("icu_dead_letters_stored", "", "3"),
            ("icu_store_records", "", "10000"),
            ("icu_store_bytes_per_record", "", "200"),
            ("icu_store_up", "", "1"),
            ("icu_bridge_state", r#"state="disabled""#, "1"),
            ("icu_bridge_state", r#"state="online""#, "0"),
            ("icu_bridge_forwarded_records_total", "", "0"),
            ("icu_bridge_forwarded_observations_total", "", "0"),
            ("icu_bridge_forwarded_observations_per_second", "", "0"),
            ("icu_bridge_delivery_errors_total", "", "0"),
            ("icu_bridge_broker_errors_total", "", "0"),
            ("icu_bridge_outbox_errors_total", "", "0"),
            ("icu_bridge_in_flight_records", "", "0"),
            ("icu_store_refused_overload_total", "", "0"),
            ("icu_store_write_failures_total", "", "1"),
            ("icu_store_refused_budget_total", "", "1"),
            ("icu_store_pruned_sent_records_total", "", "0"),
            ("icu_store_pruned_unsent_observations_total", "", "0"),
            ("icu_store_pruned_dead_letters_total", "", "0"),
            ("icu_store_refused_dead_letters_total", "", "0"),
            ("icu_store_disk_usage_bytes", "", "1048576"),
            ("icu_store_file_bytes", "", "1052672"),
            ("icu_store_budget_full", "", "0"),
            ("icu_store_pruning", "", "0"),
            ("icu_store_free_budget_bytes", "", "1072693248"),
            ("icu_store_disk_budget_bytes", "", "1073741824"),
        ];
        for (name, labels, want) in expected {
            assert_eq!(value(&s, name, labels), want, "{name}{{{labels}}}");
        }
        let mllp_rate: f64 = value(
            &s,
            "icu_ingest_observations_per_second",
            r#"transport="mllp""#,
        )
        .parse()
        .unwrap();
        assert!((mllp_rate - 10.0).abs() < 0.1, "{mllp_rate}");
        let hours: f64 = value(&s, "icu_buffer_hours_left", "").parse().unwrap();
        assert!(hours.is_finite() && hours > 0.0, "{hours}");
    }

    #[test]
    fn without_a_store_answer_the_store_gauges_are_absent_and_up_is_zero() {
        let mut f = figures(1, 1 << 30, 0);
        f.store = None;
        let s = parse(&render(&f));
        assert_eq!(value(&s, "icu_store_up", ""), "0");
        assert!(!s.iter().any(|(n, _, _)| n == "icu_outbox_unsent_records"));
        assert_eq!(value(&s, "icu_store_bytes_per_record", ""), "256");
    }

    /// The figures with exactly `rate` observations/s (all MLLP).
    fn at_rate(rate: f64, budget: u64, used: u64) -> Figures {
        let mut f = figures(1, budget, used);
        for t in &mut f.ingest {
            t.observations_per_s = if t.transport == Transport::Mllp {
                rate
            } else {
                0.0
            };
        }
        f
    }

    #[test]
    fn buffer_hours_move_with_the_ingest_rate_and_the_budget() {
        let gib = 1u64 << 30;
        let figures = |rate: u64, budget, used| at_rate(rate as f64, budget, used);
        let base = figures(100, gib, gib / 2).buffer_hours_left();
        // 512 MiB free at 100 obs/s × 200 B = 20 000 B/s.
        let expected = (gib / 2) as f64 / 20_000.0 / 3600.0;
        assert!((base - expected).abs() < 1e-9, "{base} vs {expected}");
        let faster = figures(200, gib, gib / 2).buffer_hours_left();
        assert!((faster - base / 2.0).abs() < 1e-9, "double rate halves it");
        let bigger = figures(100, 2 * gib, gib / 2).buffer_hours_left();
        assert!((bigger - base * 3.0).abs() < 1e-9, "1.5 GiB free is 3× 0.5");
        assert_eq!(figures(100, gib, gib).buffer_hours_left(), 0.0, "full");
        assert_eq!(figures(100, gib, 2 * gib).buffer_hours_left(), 0.0);

        // Forwarded records are pruned to make room: 4 000 of them at 200 B free 800 000 B.
        let mut forwarded = figures(100, gib, gib);
        forwarded.store.as_mut().unwrap().unsent = vec![(Stream::Observations, 6_000)];
        assert_eq!(forwarded.free_budget_bytes(), 800_000.0);
        let hours = forwarded.buffer_hours_left();
        assert!(
            (hours - 800_000.0 / 20_000.0 / 3600.0).abs() < 1e-9,
            "{hours}"
        );
        // But never more than the budget.
        assert_eq!(
            free_budget_bytes(1000, 0, 1_000_000, 200.0),
            1000.0,
            "capped"
        );

        // No ingest at all: +Inf, written as `+Inf`.
        let idle = figures(0, gib, 0);
        assert_eq!(idle.buffer_hours_left(), f64::INFINITY);
        let s = parse(&render(&idle));
        assert_eq!(value(&s, "icu_buffer_hours_left", ""), "+Inf");
    }

    #[test]
    fn bytes_per_record_uses_a_default_until_measurable_and_a_floor() {
        assert_eq!(bytes_per_record(1 << 20, 10), DEFAULT_BYTES_PER_RECORD);
        assert_eq!(bytes_per_record(300_000, 1000), 300.0);
        assert_eq!(bytes_per_record(1000, 1000), MIN_BYTES_PER_RECORD);
        assert_eq!(
            buffer_hours_left((1u64 << 30) as f64, 0.0, 10.0),
            (1u64 << 30) as f64 / (10.0 * MIN_BYTES_PER_RECORD) / 3600.0
        );
    }

    #[test]
    fn the_rate_window_counts_the_last_minute_only() {
        let w = RateWindow::new(0);
        assert_eq!(w.rate_at(0), 0.0);
        // Young window: rate since the start (10 events over 2 s).
        w.add_at(500, 4);
        w.add_at(1500, 6);
        assert!((w.rate_at(2000) - 5.0).abs() < 1e-9);
        // A full minute later those are gone.
        assert_eq!(w.rate_at(62_000), 0.0);
        // 120 events spread over the last minute: 2/s.
        for s in 100..160u64 {
            w.add_at(s * 1000 + 10, 2);
        }
        assert!((w.rate_at(159_999) - 2.0).abs() < 0.05);
        // The ring reuses buckets: a minute of silence, then the rate is zero again.
        assert_eq!(w.rate_at(230_000), 0.0);
    }

    #[test]
    fn forward_rates_come_from_cumulative_samples() {
        let r = ForwardRates::new_at(0);
        for s in 0..60u64 {
            r.sample_at(s * 1000 + 999, s * 3, s * 300);
        }
        let (records, obs) = r.rates_at(59_999);
        assert!((records - 177.0 / 59.999).abs() < 1e-3, "{records}");
        assert!((obs - 17_700.0 / 59.999).abs() < 0.1, "{obs}");
    }

    #[test]
    fn readiness_needs_listeners_a_running_readable_store_and_room() {
        assert!(readiness_problems(true, true, None, false, 10, 100).is_empty());
        let full = readiness_problems(true, true, None, true, 95, 100);
        assert_eq!(full.len(), 1, "the writer says full: {full:?}");
        let all = readiness_problems(false, false, Some("disk I/O error"), false, 100, 100);
        assert_eq!(all.len(), 4, "{all:?}");
        assert!(all[0].contains("listeners"));
        assert!(all[1].contains("store writer"));
        assert!(all[2].contains("disk I/O error"));
        assert!(all[3].contains("disk budget"));
    }

    #[test]
    fn values_and_labels_are_written_as_the_format_wants() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(
            Transport::of(Protocol::Medibus).as_str(),
            "serial",
            "serial protocols count as serial"
        );
    }
}
