//! The durable store of the ICU edge gateway (crate `icu-store`): SQLite in WAL mode, written
//! with group commit.
//!
//! Owns: the database file, per-device `seq` assignment, the outbox (records not yet delivered
//! to Kafka; [`SqliteOutbox`] implements the `icu_outbox::Outbox` contract) and the dead-letter
//! table; and [`db::open_connection`], the one SQLite opener the gateway's census and clinician
//! limits use too.
//!
//! Layering: depends on `icu-outbox` (the contract), `icu-protos`, SQLite and actix only, never
//! on the gateway or the cloud bridge (no rdkafka, no fhir-sdk). The gateway re-exports it as
//! `icu_gateway::store`; its metrics read [`StoreStats`].
//!
//! Shape: [`Store`] is an async actor that callers `send().await` to; it gathers the requests
//! that arrive while the disk is busy and hands them as one batch to [`StoreWriter`], a
//! `SyncArbiter` actor that owns the only writing connection. So at low load each request is
//! committed at once, and at high load many requests share one commit (group commit).
//!
//! Guarantees: a caller gets `Ok` only after the `COMMIT` that holds its whole request returned
//! (the MLLP ACK is sent after that); a request is stored whole or not at all; the number of
//! requests waiting for the disk is bounded (`store.max_pending`), beyond which requests are
//! refused (and counted), never dropped silently.
//!
//! # Disk budget policy
//!
//! `[store] disk_budget_mb` bounds the store. **Bytes in use** are the database pages in use,
//! `(page_count - freelist_count) * page_size`, plus the write-ahead log counted at its
//! allowance (1/16 of the budget, between 64 KiB and 64 MiB; the log is checkpointed and
//! truncated at that size). Deleted records therefore count as freed at once (SQLite reuses
//! their pages; the file itself does not shrink, it stays at its high-water size).
//!
//! 1. **High-water mark** (`high_water_pct`, default 90 % of the budget): pruning starts and
//!    goes on until the **low-water mark** (`low_water_pct`, default 80 %). Pruning runs in the
//!    writer, at the start of a batch (and every second when idle), one bounded round of about
//!    4096 records per batch (whole rows: a slice may end up to 63 records past it) (up to 8 rounds when the budget itself is reached), so the write
//!    path never stalls for long. Each round deletes, in this order:
//!    1. delivered waveform segments, oldest first (curves go before anything else);
//!    2. records already delivered to Kafka (`sent = 1`) of the observation and dead-letter
//!       streams, oldest first, with the dead-letter table rows already forwarded and the
//!       `messages` dedup rows (left by older gateways) whose readings are all gone;
//!    3. only if none of those is left: delivered alarm state changes and ADT events;
//!    4. only if nothing delivered is left: the oldest **unsent** waveform segments, whatever
//!       `on_full` says (readings and alarms win over curves). Curves lost: each device's seq
//!       range is logged as a warning and counted (`waveforms.pruned_unsent`). They come after
//!       delivered readings, not before: a delivered record is safe in Kafka, so deleting it
//!       loses nothing, while an unsent curve is lost for good;
//!    5. only if nothing delivered is left and `on_full = "drop_oldest_unsent"`: the oldest
//!       **unsent** observations (oldest device first, from its lowest seq, so what remains of
//!       each device is a gapless run of its newest readings). This is data loss: each range is
//!       logged as a warning with the device id and seq range, counted
//!       (`pruned_unsent_observations`), and raised as a high-priority technical alarm.
//!
//!    Unsent alarm state changes, ADT events and dead letters are never pruned.
//!
//!    **Waveform limit** (`[store] waveform_budget_percent`, default 50 % of the budget):
//!    waveform segments are admitted only while the bytes in use are below it. At or above it
//!    a message's readings are still stored but its segments are not (counted in
//!    `waveforms.segments_not_stored` and `samples_not_stored`, logged as a warning at most
//!    once a minute per device with how many were not kept), and each batch first deletes one
//!    chunk of delivered waveform segments, oldest first, to make room for new ones. So curves
//!    never take more than their share, and the readings always have the rest.
//!
//!    **Waveform retention** (`[store] waveform_retention_h`, default 24): delivered waveform
//!    segments received longer ago are deleted, once a minute, at most 4096 per pass (sooner
//!    again while there is more), each device's stream from its head. Unsent ones are kept.
//!
//!    What counts is the whole file: the records, the dead-letter table, and the tables other
//!    parts keep in it through their own connections (the census, the clinicians' limit rows).
//! 2. **Budget** (100 %): an observation batch that finds the bytes in use at or over the
//!    budget is refused whole (`StoreError::BudgetExceeded`: the MLLP sender gets AR with
//!    ERR 207, an MQTT publish is held unacknowledged and retried by the gateway's MQTT transport), counted
//!    (`requests_refused_budget`), and the store raises its technical alarm. A dead letter is
//!    refused already at the **high-water mark** (counted in `refused_dead_letters` too, logged):
//!    rejected input never takes the room between that mark and the budget from readings, so a
//!    sender flooding bad input cannot fill the disk nor lock readings out. A sender's retry of a message already stored (one
//!    of the device's last 256) is still answered as stored. Nothing acknowledged is ever half-stored or silently lost.
//! 3. **Alarm reserve** (`alarm_reserve_pct`, default 2 % above the budget): alarm state
//!    changes and ADT events are still stored until the bytes in use reach
//!    `budget * (100 + reserve) / 100`, so the `icu.alarms` and `icu.adt` record of the episode
//!    is kept while observations are refused. The alarm path itself (engine, page events, MQTT
//!    alarm topic, PCD-04) never waits for or depends on a store write.
//!
//! `on_full` (what happens when delivered records alone cannot make room):
//! - `"refuse"` (**default**): keep every acknowledged reading and refuse new ones. This keeps
//!   the gateway's promise (every reading acknowledged reaches Kafka); the sender is told at
//!   once (AR / no PUBACK), so it can buffer, retry or alert, and a refused reading is still
//!   shown and alarmed on locally. Recovery is automatic: once the bridge has delivered the
//!   backlog, delivered records are pruned and readings are accepted again.
//! - `"drop_oldest_unsent"`: keep accepting the newest readings and delete the oldest unsent
//!   ones (step 1.5). For sites that prefer recent data over a complete record; acknowledged
//!   readings can then be lost, loudly.
//!
//! **Technical alarm** `gateway:store-budget`, raised through the alarm engine on the
//! pseudo-bed and device `gateway` (so it is on `/api/alarms`, the page's event stream, the
//! MQTT alarm topic `icu/<gateway>/alarms/gateway`, PCD-04 and `icu.alarms`): medium priority
//! while observations are refused ("store full: new readings refused ..."), escalated to high
//! once unsent observations were deleted ("... unsent readings deleted ..."; high-priority
//! alarms latch until acknowledged). It clears when the bytes in use are back at the low-water
//! mark. Routine pruning of delivered records is normal operation and raises nothing.
//!
//! **Figures** ([`StoreStats`], on `/api/status` under `store_writes.budget`): budget, marks,
//! bytes in use, `pruning`, `full`, `requests_refused_budget`, `pruned_sent_records`,
//! `pruned_unsent_observations`, `pruned_dead_letters`, `refused_dead_letters`, `prune_rounds`;
//! and under `store_writes.waveforms` ([`WaveformCounts`]) the waveform limit, segments stored
//! and not stored, and those pruned (delivered, unsent) and expired.
//!
//! # Ordered writes
//!
//! A transport that keeps several messages of one device in flight and retries refused ones
//! itself (MQTT) writes them as [`WriteOrder::InOrder`]: once one is refused, the device is held
//! back and its later `InOrder` writes are refused with [`StoreError::Deferred`] (within a batch
//! by the writer, across batches here) until a [`WriteOrder::Retry`] with `release` is stored. So
//! a refused message, when retried, is stored before every later message of its device, and the
//! per-device seq order is the arrival order. MLLP and serial writes are
//! [`WriteOrder::Independent`] (their senders wait for each answer).

pub mod db;
mod settings;
pub mod waveform_codec;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use icu_outbox::{FetchRequest, Fetched, InFlightRuns, Outbox, OutboxError, OutboxRecord};
use icu_protos::v1::StoredRecord;
use icu_protos::Message as _;
use tokio::sync::oneshot;

pub use settings::{StoreConfig, StoreSettings};

pub use db::{
    AlarmWrite, BudgetPolicy, BudgetStatus, DeadLetter, ObservationBatch, OnFull, ReaderDb,
    SnippetWrite, StoreDb, StoreError, WaveformCounts, WriteOrder, WriteOutcome, WriteRequest,
};

/// Upper bounds (seconds) of the commit-latency histogram: 0.5 ms to 10 s.
pub const COMMIT_LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// `icu_store_commit_latency_seconds`: how long one group commit takes, from the batch handed
/// to the writer thread to its answer (the `COMMIT` and the disk-budget measure with it). One
/// lock-free observation per batch.
#[derive(Debug, Clone)]
pub struct CommitLatency(pub prometheus::Histogram);

impl Default for CommitLatency {
    fn default() -> Self {
        let opts = prometheus::HistogramOpts::new(
            "icu_store_commit_latency_seconds",
            "Seconds one group commit of the store takes (batch handed to the writer thread to its answer).",
        )
        .buckets(COMMIT_LATENCY_BUCKETS.to_vec());
        Self(prometheus::Histogram::with_opts(opts).expect("valid histogram options"))
    }
}

/// Counters of the store, shared with the API (`/api/status` `store_writes`) and `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub commits: AtomicU64,
    /// Duration of each group commit (`/metrics`).
    pub commit_latency: CommitLatency,
    pub requests_stored: AtomicU64,
    pub requests_failed: AtomicU64,
    pub requests_refused_overload: AtomicU64,
    /// The bridge's sent marks committed by the writer (not counted in `requests_stored`).
    pub sent_marks: AtomicU64,
    pub largest_batch: AtomicU64,
    /// The disk budget (`store.disk_budget_mb`) and its marks, in bytes.
    pub budget_bytes: AtomicU64,
    pub high_water_bytes: AtomicU64,
    pub low_water_bytes: AtomicU64,
    pub reserve_limit_bytes: AtomicU64,
    /// Bytes in use as the budget counts them (pages in use plus the write-ahead log), as the
    /// writer last measured them (after every batch, and every second when idle).
    pub used_bytes: AtomicU64,
    /// Between the high-water mark and getting back to the low-water mark.
    pub pruning: AtomicBool,
    /// New observations are being refused (or would be): the budget is reached.
    pub full: AtomicBool,
    /// Write requests refused because of the budget (a subset of `requests_failed`).
    pub requests_refused_budget: AtomicU64,
    /// Forwarded records (every stream) deleted to stay under the budget.
    pub pruned_sent_records: AtomicU64,
    /// Unsent observations deleted to make room (`on_full = "drop_oldest_unsent"`): data lost.
    pub pruned_unsent_observations: AtomicU64,
    /// Forwarded rows of the dead-letter table deleted.
    pub pruned_dead_letters: AtomicU64,
    /// Dead letters refused at the high-water mark (rejected input not kept; a subset of
    /// `requests_refused_budget`).
    pub refused_dead_letters: AtomicU64,
    pub prune_rounds: AtomicU64,
    /// The waveform figures as the writer last published them.
    pub waveforms: Mutex<WaveformCounts>,
}

impl StoreStats {
    pub fn snapshot(&self) -> serde_json::Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let waveforms = self.waveforms.lock().map(|w| *w).unwrap_or_default();
        serde_json::json!({
            "commits": n(&self.commits),
            "requests_stored": n(&self.requests_stored),
            "requests_failed": n(&self.requests_failed),
            "requests_refused_overload": n(&self.requests_refused_overload),
            "sent_marks": n(&self.sent_marks),
            "largest_batch": n(&self.largest_batch),
            "budget": {
                "budget_bytes": n(&self.budget_bytes),
                "used_bytes": n(&self.used_bytes),
                "high_water_bytes": n(&self.high_water_bytes),
                "low_water_bytes": n(&self.low_water_bytes),
                "reserve_limit_bytes": n(&self.reserve_limit_bytes),
                "pruning": self.pruning.load(Ordering::Relaxed),
                "full": self.full.load(Ordering::Relaxed),
                "requests_refused_budget": n(&self.requests_refused_budget),
                "pruned_sent_records": n(&self.pruned_sent_records),
                "pruned_unsent_observations": n(&self.pruned_unsent_observations),
                "pruned_dead_letters": n(&self.pruned_dead_letters),
                "refused_dead_letters": n(&self.refused_dead_letters),
                "prune_rounds": n(&self.prune_rounds),
            },
            "waveforms": waveforms,
        })
    }

    /// Publishes the writer's latest measurement and counters.
    pub fn publish(&self, s: &BudgetStatus) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.budget_bytes, s.budget_bytes);
        set(&self.high_water_bytes, s.high_water_bytes);
        set(&self.low_water_bytes, s.low_water_bytes);
        set(&self.reserve_limit_bytes, s.reserve_limit_bytes);
        set(&self.used_bytes, s.used_bytes);
        set(&self.requests_refused_budget, s.refused_requests);
        set(&self.pruned_sent_records, s.pruned_sent_records);
        set(
            &self.pruned_unsent_observations,
            s.pruned_unsent_observations,
        );
        set(&self.pruned_dead_letters, s.pruned_dead_letters);
        set(&self.refused_dead_letters, s.refused_dead_letters);
        set(&self.prune_rounds, s.prune_rounds);
        if let Ok(mut w) = self.waveforms.lock() {
            *w = s.waveforms;
        }
        self.pruning.store(s.pruning, Ordering::Relaxed);
        self.full.store(s.full, Ordering::Relaxed);
    }
}

/// The store's technical condition as the alarm engine should show it (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreCondition {
    /// Raised (true) or cleared.
    pub active: bool,
    /// `PH` once unsent observations were deleted, else `PM`.
    pub priority: &'static str,
    pub text: String,
}

/// The alarm source (technical condition id) of the store's disk-budget alarm.
pub const STORE_BUDGET_CONDITION: &str = "gateway:store-budget";
/// The pseudo-bed and device id the gateway's own technical alarms are raised under.
pub const GATEWAY_SOURCE: &str = "gateway";

/// Told when the store's technical condition changes; returns whether it was delivered (if not,
/// the store tries again after its next batch or idle check).
pub type ConditionListener = Box<dyn Fn(&StoreCondition) -> bool + Send>;

/// One batch for the writer thread (empty: only prune and measure).
struct CommitBatch(Vec<WriteRequest>);

impl actix::Message for CommitBatch {
    type Result = (Vec<Result<WriteOutcome, StoreError>>, BudgetStatus);
}

/// Owns the writing connection; runs on a `SyncArbiter` thread.
pub struct StoreWriter {
    db: StoreDb,
    stats: Arc<StoreStats>,
}

impl Actor for StoreWriter {
    type Context = SyncContext<Self>;
}

impl Handler<CommitBatch> for StoreWriter {
    type Result = MessageResult<CommitBatch>;

    fn handle(&mut self, msg: CommitBatch, _: &mut Self::Context) -> Self::Result {
        let results = self.db.commit_batch(&msg.0);
        let status = self.db.budget_status().clone();
        self.stats.publish(&status);
        MessageResult((results, status))
    }
}

/// Store one request durably. Resolves after the commit that holds it.
#[derive(Message)]
#[rtype(result = "Result<WriteOutcome, StoreError>")]
pub struct Append(pub WriteRequest);

/// Who gets told after a commit (the bridge, so it forwards at once instead of at its next poll).
pub type CommitListener = Box<dyn Fn() + Send>;

type Pending = (
    WriteRequest,
    oneshot::Sender<Result<WriteOutcome, StoreError>>,
);

/// The device and order of an ordered observation write (see [`WriteOrder`]).
fn ordered_write(req: &WriteRequest) -> Option<(String, WriteOrder)> {
    match req {
        WriteRequest::Observations(b) if b.order.is_ordered() => {
            Some((b.device_id.clone(), b.order))
        }
        _ => None,
    }
}

/// The async front of the store (see the module docs).
pub struct Store {
    writer: Addr<StoreWriter>,
    pending: Vec<Pending>,
    busy: bool,
    max_batch: usize,
    max_pending: usize,
    stats: Arc<StoreStats>,
    on_commit: Option<CommitListener>,
    on_condition: Option<ConditionListener>,
    /// The condition as last delivered to the listener.
    condition: Option<&'static str>,
    /// Unsent observations pruned when the condition was last evaluated.
    unsent_pruned_seen: u64,
    /// Devices held back: an ordered write of theirs was refused and its retry has not released
    /// them yet (see [`WriteOrder`]); their `InOrder` writes are deferred.
    held_back: HashSet<String>,
}

/// How often an idle store prunes and measures (so the budget alarm clears once the bridge has
/// forwarded enough, even when no reading arrives).
const IDLE_CHECK: Duration = Duration::from_secs(1);

impl Store {
    /// Opens the database and starts the writer thread. Fails if the file cannot be opened
    /// for writing.
    pub fn start(
        cfg: &StoreConfig,
        gateway_id: &str,
        stats: Arc<StoreStats>,
        on_commit: Option<CommitListener>,
    ) -> Result<Addr<Store>, StoreError> {
        Self::start_with(cfg, gateway_id, stats, on_commit, None)
    }

    /// As [`Store::start`], telling `on_condition` when the disk-budget technical condition is
    /// raised, escalated or cleared.
    pub fn start_with(
        cfg: &StoreConfig,
        gateway_id: &str,
        stats: Arc<StoreStats>,
        on_commit: Option<CommitListener>,
        on_condition: Option<ConditionListener>,
    ) -> Result<Addr<Store>, StoreError> {
        let db = StoreDb::open_with_policy(
            &cfg.path,
            gateway_id,
            cfg.synchronous_full,
            cfg.budget_policy(),
        )?;
        stats.publish(db.budget_status());
        let unsent_pruned_seen = db.budget_status().pruned_unsent_observations;
        let cell = Mutex::new(Some(db));
        let writer_stats = stats.clone();
        let writer = SyncArbiter::start(1, move || StoreWriter {
            db: cell
                .lock()
                .expect("store writer cell")
                .take()
                .expect("the store writer is started exactly once"),
            stats: writer_stats.clone(),
        });
        let store = Store {
            writer,
            pending: Vec::new(),
            busy: false,
            max_batch: cfg.max_batch,
            max_pending: cfg.max_pending,
            stats,
            on_commit,
            on_condition,
            condition: None,
            unsent_pruned_seen,
            held_back: HashSet::new(),
        };
        Ok(Store::create(|ctx| {
            ctx.set_mailbox_capacity(cfg.max_pending);
            store
        }))
    }

    /// Raises, escalates or clears the disk-budget technical condition from the writer's latest
    /// measurement: `PH` once unsent observations were deleted, `PM` while new observations are
    /// refused, cleared when the bytes in use are back at the low-water mark.
    fn evaluate_condition(&mut self, s: &BudgetStatus) {
        let lost = s.pruned_unsent_observations > self.unsent_pruned_seen;
        let want = if lost || (self.condition == Some("PH") && s.used_bytes > s.low_water_bytes) {
            Some("PH")
        } else if s.full || (self.condition.is_some() && s.used_bytes > s.low_water_bytes) {
            Some("PM")
        } else {
            None
        };
        let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
        let text = match want {
            Some("PH") => format!(
                "store full: {} unsent readings deleted to make room (oldest first, see the gateway log); {:.1} of {:.1} MiB used",
                s.pruned_unsent_observations,
                mib(s.used_bytes),
                mib(s.budget_bytes)
            ),
            Some(_) => format!(
                "store full: new readings refused until forwarded data can be pruned; {:.1} of {:.1} MiB used",
                mib(s.used_bytes),
                mib(s.budget_bytes)
            ),
            None => format!(
                "store back under its low-water mark; {:.1} of {:.1} MiB used",
                mib(s.used_bytes),
                mib(s.budget_bytes)
            ),
        };
        if want == self.condition {
            self.unsent_pruned_seen = s.pruned_unsent_observations;
            return;
        }
        let cond = StoreCondition {
            active: want.is_some(),
            priority: want.or(self.condition).unwrap_or("PM"),
            text,
        };
        if cond.active {
            tracing::error!(priority = cond.priority, text = %cond.text, "store technical alarm raised");
        } else {
            tracing::info!(text = %cond.text, "store technical alarm cleared");
        }
        let delivered = match &self.on_condition {
            Some(f) => f(&cond),
            None => true,
        };
        if delivered {
            self.condition = want;
            self.unsent_pruned_seen = s.pruned_unsent_observations;
        }
    }

    /// When idle: one empty batch, so the writer prunes and measures.
    fn idle_check(&mut self, ctx: &mut Context<Self>) {
        if self.busy || !self.pending.is_empty() {
            return;
        }
        self.busy = true;
        let fut = self
            .writer
            .send(CommitBatch(Vec::new()))
            .into_actor(self)
            .map(|res, act, ctx| {
                act.busy = false;
                if let Ok((_, status)) = res {
                    act.evaluate_condition(&status);
                }
                act.flush(ctx);
            });
        ctx.spawn(fut);
    }

    /// The device whose `InOrder` write `req` is, if that device is held back.
    fn deferred(&self, req: &WriteRequest) -> Option<StoreError> {
        match req {
            WriteRequest::Observations(b)
                if b.order == WriteOrder::InOrder && self.held_back.contains(&b.device_id) =>
            {
                Some(StoreError::Deferred {
                    device_id: b.device_id.clone(),
                })
            }
            _ => None,
        }
    }

    /// Holds back or releases the device of an ordered write after its answer.
    fn track_order(
        &mut self,
        (device_id, order): &(String, WriteOrder),
        result: &Result<WriteOutcome, StoreError>,
    ) {
        match (order, result) {
            (WriteOrder::Independent, _) => {}
            (_, Err(_)) => {
                if self.held_back.insert(device_id.clone()) {
                    tracing::info!(device = %device_id, "store: device held back until its refused message is retried");
                }
            }
            (WriteOrder::Retry { release: true }, Ok(_)) => {
                if self.held_back.remove(device_id) {
                    tracing::info!(device = %device_id, "store: device released, its refused messages are stored");
                }
            }
            (_, Ok(_)) => {}
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.busy || self.pending.is_empty() {
            return;
        }
        let take = self.pending.len().min(self.max_batch);
        let mut batch: Vec<Pending> = Vec::with_capacity(take);
        for (req, reply) in self.pending.drain(..take).collect::<Vec<_>>() {
            // Held back since it was queued: refused here, never reaching the disk.
            match self.deferred(&req) {
                Some(e) => {
                    self.stats.requests_failed.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Err(e));
                }
                None => batch.push((req, reply)),
            }
        }
        if batch.is_empty() {
            return self.flush(ctx);
        }
        let (requests, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        self.busy = true;
        self.stats
            .largest_batch
            .fetch_max(requests.len() as u64, Ordering::Relaxed);
        let n = requests.len();
        // The requests go to the writer thread; their kind and order stay here for the answers.
        let ordered: Vec<Option<(String, WriteOrder)>> =
            requests.iter().map(ordered_write).collect();
        let marks: Vec<bool> = requests
            .iter()
            .map(|r| matches!(r, WriteRequest::MarkSent(_)))
            .collect();
        let committing = std::time::Instant::now();
        let fut = self
            .writer
            .send(CommitBatch(requests))
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.busy = false;
                act.stats
                    .commit_latency
                    .0
                    .observe(committing.elapsed().as_secs_f64());
                let results = match res {
                    Ok((results, status)) => {
                        act.evaluate_condition(&status);
                        results
                    }
                    Err(_) => (0..n).map(|_| Err(StoreError::Closed)).collect(),
                };
                act.stats.commits.fetch_add(1, Ordering::Relaxed);
                let mut any_stored = false;
                for (((reply, result), req), mark) in
                    replies.into_iter().zip(results).zip(&ordered).zip(&marks)
                {
                    if let Some(req) = req {
                        act.track_order(req, &result);
                    }
                    match &result {
                        Ok(_) if *mark => {
                            act.stats.sent_marks.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            any_stored = true;
                            act.stats.requests_stored.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e @ StoreError::Deferred { .. }) => {
                            act.stats.requests_failed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(error = %e, "store write deferred");
                        }
                        Err(e) => {
                            act.stats.requests_failed.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(error = %e, "store write refused");
                        }
                    }
                    let _ = reply.send(result);
                }
                if any_stored {
                    if let Some(f) = &act.on_commit {
                        f();
                    }
                }
                act.flush(ctx);
            });
        // spawn, not wait: new requests keep arriving (and queue up) while the disk is busy.
        ctx.spawn(fut);
    }
}

impl Actor for Store {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(IDLE_CHECK, |act, ctx| act.idle_check(ctx));
    }
}

impl Handler<Append> for Store {
    type Result = ResponseFuture<Result<WriteOutcome, StoreError>>;

    fn handle(&mut self, msg: Append, ctx: &mut Self::Context) -> Self::Result {
        if let Some(e) = self.deferred(&msg.0) {
            self.stats.requests_failed.fetch_add(1, Ordering::Relaxed);
            return Box::pin(async move { Err(e) });
        }
        // The bridge's sent marks are never refused for load: at most one is waiting (the
        // bridge awaits each), and refusing it would make the bridge send everything again.
        if self.pending.len() >= self.max_pending && !matches!(msg.0, WriteRequest::MarkSent(_)) {
            self.stats
                .requests_refused_overload
                .fetch_add(1, Ordering::Relaxed);
            let pending = self.pending.len();
            let refused = Err(StoreError::Overloaded { pending });
            if let Some(o) = ordered_write(&msg.0) {
                self.track_order(&o, &refused);
            }
            return Box::pin(async move { refused });
        }
        let (tx, rx) = oneshot::channel();
        self.pending.push((msg.0, tx));
        self.flush(ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(StoreError::Closed)) })
    }
}

/// The outbox as the cloud bridge sees it: fetches over its own SQLite connection, marks through
/// the store's writer once [`SqliteOutbox::mark_through`] was called (the gateway does).
///
/// That connection (fetch, and `mark_sent` without a writer) runs with `synchronous = NORMAL`
/// whatever `store.synchronous` says: a sent mark lost to power loss only means its records are
/// sent again under the same keys (see "Durability of the sent mark" in `icu_outbox`),
/// and it saves an fsync per mark. The writer, which commits what senders are acknowledged for,
/// keeps the configured setting. [`SqliteOutbox::counts`] (for `/api/status`) reads through a
/// second connection, so a status request never holds the bridge's.
pub struct SqliteOutbox {
    reader: Mutex<ReaderDb>,
    status: Mutex<ReaderDb>,
    /// The store whose writer marks records sent ([`Self::mark_through`]); until set, marks go
    /// through the reader connection.
    writer: OnceLock<Addr<Store>>,
}

impl SqliteOutbox {
    pub fn open(cfg: &StoreConfig) -> Result<Self, StoreError> {
        Ok(Self {
            reader: Mutex::new(ReaderDb::open(&cfg.path, false)?),
            status: Mutex::new(ReaderDb::open(&cfg.path, false)?),
            writer: OnceLock::new(),
        })
    }

    /// Marks records sent through `store`'s writer, inside its next group commit, instead of a
    /// transaction of the reader connection. At full ingest the writer holds the database's write
    /// lock almost continuously, and the reader connection's mark waited for it (SQLite's busy
    /// handler sleeps 1, 2, 5, 10 ... ms between tries): 0.85 s of every second of the bridge's
    /// time went to marking, and forwarding fell behind ingest. Through the writer a mark waits
    /// at most for the commit in progress and shares the next one's fsync. The callers of
    /// [`Outbox::mark_sent_many`] must then not run on the store's own actix thread (the bridge
    /// calls it on the blocking pool). Set once; later calls are ignored.
    pub fn mark_through(&self, store: Addr<Store>) {
        let _ = self.writer.set(store);
    }

    /// The store's counts (cheap: index seeks, see [`db::StoreCounts`]), on the status
    /// connection.
    pub fn counts(&self) -> Result<db::StoreCounts, StoreError> {
        self.status.lock().map_err(|_| StoreError::Closed)?.counts()
    }

    /// A bed's alarm state changes since `from_us`, newest first ([`db::ReaderDb::alarm_history`]).
    pub fn alarm_history(
        &self,
        bed: &str,
        from_us: i64,
        limit: usize,
    ) -> Result<Vec<icu_protos::v1::Alarm>, StoreError> {
        self.status
            .lock()
            .map_err(|_| StoreError::Closed)?
            .alarm_history(bed, from_us, limit)
    }

    /// Dead letters for the device console ([`db::DeadLetterQuery`]), on the status connection.
    pub fn dead_letters(
        &self,
        query: &db::DeadLetterQuery,
    ) -> Result<Vec<db::DeadLetterRow>, StoreError> {
        self.status
            .lock()
            .map_err(|_| StoreError::Closed)?
            .dead_letters(query)
    }
}

fn outbox_err(operation: &'static str) -> impl Fn(StoreError) -> OutboxError {
    move |e| OutboxError::new(operation, e.to_string())
}

impl Outbox for SqliteOutbox {
    fn fetch_unsent(&self, request: &FetchRequest) -> Result<Fetched, OutboxError> {
        self.fetch_unsent_after(request, &InFlightRuns::new())
    }

    fn fetch_unsent_after(
        &self,
        request: &FetchRequest,
        in_flight: &InFlightRuns,
    ) -> Result<Fetched, OutboxError> {
        let fetched = self
            .reader
            .lock()
            .map_err(|_| outbox_err("fetch_unsent")(StoreError::Closed))?
            .fetch_after(request, in_flight)
            .map_err(outbox_err("fetch_unsent"))?;
        let records = fetched
            .records
            .into_iter()
            .map(|row| {
                let db::UnsentRow {
                    stream,
                    device_id,
                    seq,
                    bed,
                    payload,
                } = row;
                let record = StoredRecord::decode(payload.as_slice()).map_err(|e| {
                    outbox_err("fetch_unsent")(StoreError::Sqlite {
                        path: format!("records({device_id}, {seq})"),
                        message: format!("stored record does not decode: {e}"),
                    })
                })?;
                Ok(OutboxRecord {
                    stream,
                    device_id,
                    seq,
                    bed,
                    record,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Fetched {
            records,
            backlog: fetched.backlog,
        })
    }

    fn mark_sent(
        &self,
        stream: icu_outbox::Stream,
        device_id: &str,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), OutboxError> {
        // One range is a batch of one: through the writer too, once `mark_through` was called.
        self.mark_sent_many(&[icu_outbox::SentRange {
            stream,
            device_id: device_id.to_owned(),
            first_seq,
            last_seq,
        }])
    }

    fn mark_sent_many(&self, ranges: &[icu_outbox::SentRange]) -> Result<(), OutboxError> {
        if let Some(store) = self.writer.get() {
            let request = Append(WriteRequest::MarkSent(ranges.to_vec()));
            return match futures::executor::block_on(store.send(request)) {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(outbox_err("mark_sent_many")(e)),
                Err(_) => Err(outbox_err("mark_sent_many")(StoreError::Closed)),
            };
        }
        self.reader
            .lock()
            .map_err(|_| outbox_err("mark_sent_many")(StoreError::Closed))?
            .mark_sent_many(ranges)
            .map(|_| ())
            .map_err(outbox_err("mark_sent_many"))
    }

    fn dead_letter(&self, letter: icu_outbox::BackboneDeadLetter) -> Result<(), OutboxError> {
        let store = self.writer.get().ok_or_else(|| {
            OutboxError::new(
                "dead_letter",
                "the store's writer is not attached".to_owned(),
            )
        })?;
        let letter = DeadLetter {
            received_us: letter.received_us,
            transport: letter.transport,
            peer: letter.peer,
            device_id: Some(letter.device_id),
            stream_offset: 0,
            ack_code: String::new(),
            error_code: 0,
            location: Some(letter.location),
            reason: letter.reason,
            raw: letter.raw,
            raw_len: letter.raw_len,
        };
        match futures::executor::block_on(store.send(Append(WriteRequest::DeadLetter(letter)))) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(outbox_err("dead_letter")(e)),
            Err(_) => Err(outbox_err("dead_letter")(StoreError::Closed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use icu_protos::v1::Observation;

    fn write(device: &str, msg: &str, order: WriteOrder) -> Append {
        Append(WriteRequest::Observations(ObservationBatch {
            device_id: device.into(),
            bed: "bed-1".into(),
            dedup: Some((msg.into(), db::digest(msg.as_bytes()))),
            observations: vec![Observation {
                mdc_code: 150456,
                value: Some(97.0),
                ..Default::default()
            }]
            .into(),
            order,
            traceparent: None,
            waveforms: Default::default(),
        }))
    }

    fn kind(r: &Result<WriteOutcome, StoreError>) -> &'static str {
        match r {
            Ok(WriteOutcome::Stored { .. }) => "stored",
            Ok(_) => "other",
            Err(StoreError::Deferred { .. }) => "deferred",
            Err(_) => "refused",
        }
    }

    /// A 1 GiB store in `dir` with `max_pending` requests waiting at most.
    fn config(dir: &tempfile::TempDir, max_pending: usize) -> StoreConfig {
        StoreConfig {
            path: dir.path().join("s.db"),
            disk_budget_bytes: 1 << 30,
            high_water_pct: 90,
            low_water_pct: 80,
            alarm_reserve_pct: 2,
            on_full: OnFull::Refuse,
            synchronous_full: false,
            max_batch: 64,
            max_pending,
            trend_retention_s: 48 * 3600,
            waveform_budget_pct: 50,
            waveform_retention_s: 24 * 3600,
        }
    }

    /// With [`SqliteOutbox::mark_through`], the bridge's marks are committed by the writer (in
    /// its group commit): the records are sent afterwards, the mark is counted as a mark and not
    /// as a stored request, and a mark is accepted even with the pending queue full.
    #[actix_rt::test]
    async fn sent_marks_go_through_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir, 0);
        let stats = Arc::new(StoreStats::default());
        let store = Store::start(&cfg, "gw", stats.clone(), None).unwrap();
        // max_pending 0: every write is refused for load; store three directly.
        let mut db = StoreDb::open(&cfg.path, "gw", false, u64::MAX).unwrap();
        for msg in ["m1", "m2", "m3"] {
            let Append(req) = write("mon", msg, WriteOrder::Independent);
            assert!(db.commit_batch(&[req])[0].is_ok());
        }
        drop(db);
        assert_eq!(
            kind(
                &store
                    .send(write("mon", "m4", WriteOrder::Independent))
                    .await
                    .unwrap()
            ),
            "refused",
            "the queue is full for writes"
        );
        let outbox = Arc::new(SqliteOutbox::open(&cfg).unwrap());
        outbox.mark_through(store.clone());
        let marker = outbox.clone();
        tokio::task::spawn_blocking(move || {
            marker.mark_sent_many(&[icu_outbox::SentRange {
                stream: icu_outbox::Stream::Observations,
                device_id: "mon".into(),
                first_seq: 1,
                last_seq: 2,
            }])
        })
        .await
        .unwrap()
        .expect("the mark is committed by the writer");
        let unsent = outbox
            .fetch_unsent(&FetchRequest {
                limit: 10,
                live_since_us: 0,
                backlog_budget: 10,
                held: None,
            })
            .unwrap();
        let seqs: Vec<u64> = unsent.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [3]);
        assert_eq!(stats.sent_marks.load(Ordering::Relaxed), 1);
        assert_eq!(stats.requests_stored.load(Ordering::Relaxed), 0);
    }

    /// A device whose ordered write was refused is held back across batches, even once the disk
    /// takes writes again, until its retry with `release` is stored; other devices and
    /// independent writes never are. So the retried message is stored before every later one.
    #[actix_rt::test]
    async fn a_refused_ordered_write_holds_its_device_back_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(&dir, 64);
        let store = Store::start(&cfg, "gw", Arc::default(), None).unwrap();
        let other = rusqlite::Connection::open(&cfg.path).unwrap();
        // A real SQLite failure of device a's writes (and only of them).
        other
            .execute_batch(
                "CREATE TRIGGER fail BEFORE INSERT ON records WHEN NEW.device_id = 'a'
                 BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END;",
            )
            .unwrap();
        let send = |device: &str, msg: &str, order| store.send(write(device, msg, order));
        assert_eq!(
            kind(&send("a", "a1", WriteOrder::InOrder).await.unwrap()),
            "refused"
        );
        assert_eq!(
            kind(&send("a", "a2", WriteOrder::InOrder).await.unwrap()),
            "deferred"
        );
        assert_eq!(
            kind(&send("b", "b1", WriteOrder::InOrder).await.unwrap()),
            "stored"
        );
        assert_eq!(
            kind(&send("a", "x", WriteOrder::Independent).await.unwrap()),
            "refused"
        );
        // The disk takes device a's writes again: a is still held back.
        other.execute_batch("DROP TRIGGER fail").unwrap();
        assert_eq!(
            kind(&send("a", "a3", WriteOrder::InOrder).await.unwrap()),
            "deferred"
        );
        // The retries, oldest first; the last one releases the device. Seqs are arrival order.
        let retry = |release| WriteOrder::Retry { release };
        let stored = |seq| {
            Some(WriteOutcome::Stored {
                first_seq: seq,
                last_seq: seq,
            })
        };
        assert_eq!(send("a", "a1", retry(false)).await.unwrap().ok(), stored(1));
        assert_eq!(
            kind(&send("a", "a3", WriteOrder::InOrder).await.unwrap()),
            "deferred"
        );
        assert_eq!(send("a", "a2", retry(false)).await.unwrap().ok(), stored(2));
        assert_eq!(send("a", "a3", retry(true)).await.unwrap().ok(), stored(3));
        assert_eq!(
            send("a", "a4", WriteOrder::InOrder).await.unwrap().ok(),
            stored(4)
        );
    }
}
