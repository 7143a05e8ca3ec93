//! What the store is asked to write and what it answers: requests, outcomes, errors, and the
//! disk-budget policy and status.

use icu_protos::v1::{Alarm, Observation, WaveformSegment};

/// Why a write was refused. Every variant means: nothing of that request was stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store write failed ({path}): {message}")]
    Sqlite { path: String, message: String },
    #[error(
        "store disk budget reached: {used_mib} MiB used of {budget_mib} MiB; reading not stored"
    )]
    BudgetExceeded { used_mib: u64, budget_mib: u64 },
    #[error("store overloaded: {pending} writes already waiting for the disk; reading not stored")]
    Overloaded { pending: usize },
    #[error("store is shut down")]
    Closed,
    /// An ordered write ([`WriteOrder::InOrder`]) of a device whose earlier write was refused:
    /// refused too, so that the earlier one, when retried, is stored first.
    #[error("an earlier message of device '{device_id}' is waiting to be stored; this one waits behind it")]
    Deferred { device_id: String },
}

/// How an observation write relates to the same device's other writes.
///
/// A transport that keeps several messages of one device in flight (MQTT, pipelined) and
/// retries a refused one itself must not let a later message be stored before it: its writes
/// are [`WriteOrder::InOrder`]. Once one of them is refused (budget, overload, I/O, or itself
/// deferred) the device is *held back*: its further `InOrder` writes are refused with
/// [`StoreError::Deferred`] (within the same batch by [`super::StoreDb::commit_batch`], across batches
/// by the [`crate::Store`] actor) until a [`WriteOrder::Retry`] with `release` is stored. The
/// transport retries its refused messages, oldest first, as `Retry`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteOrder {
    /// The sender waits for each answer and retries on its own (MLLP, serial): no ordering
    /// between writes is kept by the store.
    #[default]
    Independent,
    /// One of a device's pipelined writes: refused while the device is held back; a refusal
    /// holds the device back.
    InOrder,
    /// The retry of the device's oldest refused write: passes the hold. Stored with `release`
    /// (the transport has nothing older left to retry), it ends the hold; refused, it holds
    /// the device back again.
    Retry { release: bool },
}

impl WriteOrder {
    /// Whether a refusal of this write holds its device back.
    pub fn is_ordered(self) -> bool {
        self != WriteOrder::Independent
    }
}

/// Readings from one device to store as one unit.
#[derive(Debug, Clone)]
pub struct ObservationBatch {
    pub device_id: String,
    pub bed: String,
    /// `(MSH-10, digest of the message bytes)`: recognises a sender's retry.
    pub dedup: Option<(String, i64)>,
    /// Shared with the alarm actor (the device actor hands both the same readings).
    pub observations: std::sync::Arc<[Observation]>,
    /// Ordering against the device's other writes (see [`WriteOrder`]).
    pub order: WriteOrder,
    /// The W3C trace context of the span that commits this message, stored with each of its
    /// records (`StoredRecord.traceparent`) for the bridge's delivery span; `None` with
    /// tracing off.
    pub traceparent: Option<String>,
    /// The message's waveform segments (issue 19), stored in the same savepoint as its
    /// readings, on the device's `waveforms` stream with its own seqs. Empty for most messages.
    pub waveforms: std::sync::Arc<[WaveformSegment]>,
}

/// A rejected input, kept for the biomedical engineer.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub received_us: i64,
    pub transport: String,
    pub peer: String,
    pub device_id: Option<String>,
    pub stream_offset: u64,
    pub ack_code: String,
    pub error_code: u16,
    pub location: Option<String>,
    pub reason: String,
    pub raw: Vec<u8>,
    pub raw_len: usize,
}

/// One alarm state change of a device (its own stream, `icu.alarms`).
#[derive(Debug, Clone)]
pub struct AlarmWrite {
    pub device_id: String,
    pub bed: String,
    pub alarm: Alarm,
}

/// The curves of a bed around an alarm's start (issue 19), stored on the alarm stream of the
/// device whose alarm started (`icu.alarms`), after its start record.
#[derive(Debug, Clone)]
pub struct SnippetWrite {
    pub device_id: String,
    pub bed: String,
    pub snippet: icu_protos::v1::AlarmSnippet,
}

#[derive(Debug, Clone)]
pub enum WriteRequest {
    Observations(ObservationBatch),
    Alarm(AlarmWrite),
    /// An alarm's waveform snippet: waveform data, so it counts against the disk budget like
    /// readings (not the alarms' reserve).
    Snippet(SnippetWrite),
    /// An ADT event as applied to the census (for `icu.adt`), under the source id `adt`.
    Adt(icu_protos::v1::AdtEvent),
    DeadLetter(DeadLetter),
    /// The bridge's delivered ranges, marked sent inside the writer's group commit (see
    /// `SqliteOutbox::mark_through`): the bridge never waits for the write lock the writer holds
    /// almost continuously at full ingest. Never refused for the disk budget (it frees room).
    MarkSent(Vec<icu_outbox::SentRange>),
}

/// The outbox source id of ADT events.
pub const ADT_SOURCE: &str = "adt";
/// The outbox device id of dead letters that no configured device can be blamed for.
pub const UNATTRIBUTED: &str = "unattributed";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored under seqs `first..=last` (empty when the message held no readings: first > last).
    Stored {
        first_seq: u64,
        last_seq: u64,
    },
    /// The same message was stored before under these seqs; nothing new was written.
    Duplicate {
        first_seq: u64,
        last_seq: u64,
    },
    DeadLettered {
        id: i64,
    },
    /// [`WriteRequest::MarkSent`] applied: how many records were unsent before.
    Marked {
        records: usize,
    },
}

/// What the store does when forwarded records alone cannot keep it under its budget
/// (`[store] on_full`; the whole policy is in the `store` module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Keep every acknowledged reading; refuse new observations (the sender gets AR and keeps
    /// or resends them) until the bridge has forwarded enough to prune. The default.
    Refuse,
    /// Delete the oldest unsent observations (data loss: counted, logged with device ids and
    /// seq ranges, raised as a high-priority technical alarm) so new readings keep being stored.
    DropOldestUnsent,
}

impl OnFull {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFull::Refuse => "refuse",
            OnFull::DropOldestUnsent => "drop_oldest_unsent",
        }
    }
}

/// How long the trend rollup keeps its minutes by default: the 24 h a trend shows, plus a day.
pub const DEFAULT_TREND_RETENTION_S: u64 = 48 * 3600;

/// The share of the disk budget waveform segments may be stored in, by default (percent).
pub const DEFAULT_WAVEFORM_BUDGET_PCT: u8 = 50;
/// How long forwarded waveform rows are kept by default: a day.
pub const DEFAULT_WAVEFORM_RETENTION_S: u64 = 24 * 3600;

/// The disk budget and what happens near it (see the `store` module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetPolicy {
    /// Bytes in use (pages in use plus the write-ahead log) above which observations and dead
    /// letters are refused.
    pub budget_bytes: u64,
    /// Pruning starts when the bytes in use reach this percentage of the budget ...
    pub high_water_pct: u8,
    /// ... and stops when they are back at or under this one.
    pub low_water_pct: u8,
    /// Headroom above the budget, in percent of it, kept for alarm state changes and ADT events:
    /// they are stored until `budget * (100 + reserve) / 100`.
    pub alarm_reserve_pct: u8,
    pub on_full: OnFull,
    /// Records deleted per pruning round (one or, when over the budget itself, a few rounds run
    /// at the start of a batch); rows are deleted whole, so a round may go up to `ROW_MAX - 1`
    /// records past it per slice.
    pub prune_chunk: usize,
    /// Minutes of the trend rollup older than this are deleted (`db/trends.rs`).
    pub trend_retention_s: u64,
    /// Waveform segments are stored only while the bytes in use are below this percentage of
    /// the budget (`[store] waveform_budget_percent`); at or above it a message's readings are
    /// still stored but its segments are not, and forwarded waveform rows are pruned (see the
    /// `store` module docs, "Disk budget policy"). 0: segments are never stored.
    pub waveform_budget_pct: u8,
    /// Forwarded waveform rows received longer ago than this are deleted
    /// (`[store] waveform_retention_h`).
    pub waveform_retention_s: u64,
}

impl BudgetPolicy {
    /// The defaults (90 % / 80 %, 2 % headroom, refuse) for a budget.
    pub fn with_budget(budget_bytes: u64) -> Self {
        Self {
            budget_bytes,
            high_water_pct: 90,
            low_water_pct: 80,
            alarm_reserve_pct: 2,
            on_full: OnFull::Refuse,
            prune_chunk: 4096,
            trend_retention_s: DEFAULT_TREND_RETENTION_S,
            waveform_budget_pct: DEFAULT_WAVEFORM_BUDGET_PCT,
            waveform_retention_s: DEFAULT_WAVEFORM_RETENTION_S,
        }
    }

    /// Waveform segments are stored while the bytes in use are below this.
    pub fn waveform_limit_bytes(&self) -> u64 {
        self.pct(u64::from(self.waveform_budget_pct))
    }

    /// [`BudgetPolicy::waveform_retention_s`] in µs.
    pub fn waveform_retention_us(&self) -> i64 {
        (self.waveform_retention_s.min(i64::MAX as u64 / 1_000_000) * 1_000_000) as i64
    }

    fn pct(&self, pct: u64) -> u64 {
        ((u128::from(self.budget_bytes) * u128::from(pct)) / 100).min(u128::from(u64::MAX)) as u64
    }

    pub fn high_water_bytes(&self) -> u64 {
        self.pct(u64::from(self.high_water_pct))
    }

    pub fn low_water_bytes(&self) -> u64 {
        self.pct(u64::from(self.low_water_pct))
    }

    /// Alarm state changes and ADT events are stored while the bytes in use are below this.
    pub fn reserve_limit_bytes(&self) -> u64 {
        self.pct(100 + u64::from(self.alarm_reserve_pct))
    }

    /// The write-ahead log allowance: the log is checkpointed and truncated around this size,
    /// and at least this much is counted as in use (so a checkpoint does not make room appear
    /// and vanish). 1/16 of the budget, between 64 KiB and 64 MiB.
    ///
    /// Why up to 64 MiB (SQLite's default is 4 MiB): a checkpoint copies each page once however
    /// many commits changed it, and under load the same few hundred pages (each device's newest
    /// records and index entries) change in every commit. With the 4 MiB log the writer spent a
    /// fifth of its time copying the same pages again (`cargo bench -p icu-tests --bench
    /// store_commit`: 75.6k → 91.9k observations/s, 4.3 → 3.6 KiB written per observation).
    /// [`BudgetPolicy::trend_retention_s`] in µs.
    pub fn trend_retention_us(&self) -> i64 {
        (self.trend_retention_s.min(i64::MAX as u64 / 1_000_000) * 1_000_000) as i64
    }

    pub fn wal_allowance_bytes(&self) -> u64 {
        (self.budget_bytes / 16).clamp(64 << 10, 64 << 20)
    }
}

/// The disk budget as the writer last measured it, with the store's pruning counters (since
/// the gateway started).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BudgetStatus {
    pub budget_bytes: u64,
    /// `(page_count - freelist_count) * page_size` plus the write-ahead log's allowance.
    pub used_bytes: u64,
    /// The write-ahead log file's real size (not counted beyond its allowance).
    pub wal_bytes: u64,
    pub high_water_bytes: u64,
    pub low_water_bytes: u64,
    pub reserve_limit_bytes: u64,
    /// Between crossing the high-water mark and getting back to the low-water mark.
    pub pruning: bool,
    /// The last batch refused an observation for the budget (or the bytes in use are at the
    /// budget).
    pub full: bool,
    /// Forwarded records (every stream) deleted to make room.
    pub pruned_sent_records: u64,
    /// Unsent observations deleted to make room (`on_full = drop_oldest_unsent`): data loss.
    pub pruned_unsent_observations: u64,
    /// Rows of the dead-letter table deleted once forwarded.
    pub pruned_dead_letters: u64,
    /// Dedup rows of the `messages` table (kept by older gateways) deleted with the records
    /// they named.
    pub pruned_messages: u64,
    /// Write requests refused because of the budget.
    pub refused_requests: u64,
    /// Dead letters refused because the bytes in use were at the high-water mark (a subset of
    /// `refused_requests`): rejected input that was not kept.
    pub refused_dead_letters: u64,
    /// Pruning rounds run.
    pub prune_rounds: u64,
    /// The waveform figures.
    pub waveforms: WaveformCounts,
}

/// The store's waveform figures, since the gateway started (`/api/status`
/// `store_writes.waveforms`, `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WaveformCounts {
    /// Segments are stored only below this many bytes in use
    /// ([`BudgetPolicy::waveform_limit_bytes`]).
    pub limit_bytes: u64,
    pub segments_stored: u64,
    /// Segments (and their sample positions) of stored messages not kept because the bytes in
    /// use were at the waveform limit.
    pub segments_not_stored: u64,
    pub samples_not_stored: u64,
    /// Forwarded segments deleted to make room (also in `pruned_sent_records`).
    pub pruned_sent: u64,
    /// Unsent segments deleted to make room for readings and alarms: curves lost, each range
    /// logged with its device and seqs.
    pub pruned_unsent: u64,
    /// Forwarded segments deleted after `waveform_retention_s`.
    pub expired: u64,
}
