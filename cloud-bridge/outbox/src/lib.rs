//! The outbox contract between the gateway's store and the cloud bridge: records waiting to be
//! forwarded.
//!
//! Owns: the [`Stream`]s the bridge forwards (observations, alarms, ADT events, audit-trail
//! entries, dead letters),
//! the [`Outbox`] trait the store (`icu-store`, `SqliteOutbox`) implements over SQLite and the
//! bridge (`icu-cloud-bridge`) drains, the [`OutboxRecord`] it returns, its error
//! ([`OutboxError`]), the drain policy of one fetch ([`FetchRequest`], [`fetch_in_drain_order`])
//! shared by every implementation, and [`MemoryOutbox`], an in-memory implementation for tests.
//!
//! Layering: this crate does no I/O and depends only on `icu-protos` (the stored record),
//! `serde` and `thiserror`; the store and the bridge both depend on it and neither on the other.
//!
//! # The outbox as a state machine
//!
//! Every record is identified by `(stream, device_id, seq)`; with the gateway id that is also its
//! dedup key in Kafka (`(gateway, device, seq)` headers). A record is in exactly one of three
//! states:
//!
//! ```text
//!             commit_batch                fetch_unsent + produce            delivery report OK
//!  (ingest) ──────────────▶ STORED ─────────────────────────────▶ IN FLIGHT ────────────────▶ SENT
//!                          sent = 0  ◀─────────────────────────────  (bridge    mark_sent     sent = 1
//!                                     delivery failed / timed out /  memory      (idempotent)
//!                                     mapping failed / crash /       only)
//!                                     later record of the device failed
//! ```
//!
//! - **Stored** (in the gateway's SQLite store: its row has `sent = 0` and its seq is past the
//!   row's `sent_upto`; a row holds the records of one message): committed by the store's group commit; only now is the
//!   sender acknowledged (HL7 `AA`, MQTT PUBACK). Survives a crash (and, with
//!   `synchronous = FULL`, power loss).
//! - **In flight**: returned by [`Outbox::fetch_unsent`], mapped, signed and handed to the Kafka
//!   producer; the bridge awaits its delivery report. This state exists only in the bridge's
//!   memory: nothing is written to the database, so a crash, a restart or a failed cycle returns
//!   the record to *stored* by doing nothing.
//! - **Sent** (its row has `sent = 1`, or it is at or before the row's `sent_upto`): Kafka reported the record durable (`acks=all`, idempotent
//!   producer) and the bridge called [`Outbox::mark_sent`] for its range. Final: a sent record is
//!   never fetched again. (It may later be pruned to free disk; see the store's budget policy.)
//!
//! **Durability of the sent mark.** A *stored* record must survive power loss (the writer's
//! `synchronous = FULL` commit, before the sender's ack); a *sent* mark need not. The gateway's
//! SQLite outbox marks records sent inside the writer's group commit (so with the writer's
//! setting, sharing the fsync of the readings committed with it); without a writer to go
//! through, on its own connection with `synchronous = NORMAL` (WAL): a mark
//! committed there survives a crash of the process at once, and power loss once the log is next
//! synced (the writer's next `FULL` commit or a checkpoint). A mark lost to power loss returns
//! its records to *stored*, exactly like a process crash between Kafka's delivery report and
//! `mark_sent`: they are fetched and produced again under the same `(gateway, device, seq)` keys
//! with byte-identical observations (invariant 4), and the consumer deduplicates them. What is
//! lost is always a *suffix* of the marks: the log is replayed in order and stops at the first
//! frame that did not reach the disk, so *sent is a prefix* holds after recovery, and no record
//! can be pruned (a later, `FULL` commit of the writer) while the mark that allowed it is lost.
//! This saves one fsync per mark (20 marks: 106 ms with `FULL`, 4 ms with `NORMAL` on the
//! benchmark machine) and never weakens the promise.
//!
//! Transitions: *stored → in flight* (fetch); *in flight → sent* (delivery report OK, then
//! `mark_sent`); *in flight → stored* (delivery error, `message.timeout.ms` expired, "possibly
//! persisted", a mapping error, an earlier record of the same device failed, the outbox call
//! failed, the process died). There is no other transition; in particular no *stored → sent*
//! without a delivery report and no *sent → stored*.
//!
//! Invariants (checked by the gateway's model-based test, `gateway/tests/outbox_model.rs`):
//!
//! 1. **Gapless, durable seqs.** Per `(stream, device)`, committed seqs are `1..next_seq` with no
//!    gap, and a commit that failed consumed none. A crash loses no committed record.
//! 2. **Sent is a prefix.** Per `(stream, device)`, no unsent record lies behind a sent one: the
//!    bridge fetches each device from its lowest unsent seq and marks a device's bundles only up
//!    to its first undelivered one (`icu_cloud_bridge::bridge::plan::markable`). The one exception is a
//!    record whose body does not belong to its stream, or that has none (corruption or a foreign
//!    writer; never written by the store; a stored row that does not decode gives records
//!    without a body): the bridge cannot forward it, leaves it unsent, counts and logs it. The
//!    SQLite store records "sent" per row up to a seq, so the records after such a record in
//!    the same row stay unsent as well and are produced again each cycle (same keys); later
//!    rows are marked as usual.
//! 3. **Nothing unsent is deleted**, except by the store's documented disk-budget policy (sent
//!    records first, then the oldest numerics, alarms last), which counts what it drops.
//! 4. **At least once, same key.** A record that left *in flight* without a delivery report is
//!    fetched and produced again, with the same `(gateway, device, seq)` key and byte-identical
//!    value (the mapping is deterministic), so a consumer deduplicates it.
//! 5. **`mark_sent` is idempotent**: marking a range again, or a range containing sent records,
//!    changes nothing else. [`Outbox::mark_sent_many`] marks several ranges at once (the SQLite
//!    outbox in one transaction: all or nothing).
//!
//! # Drain policy (one fetch)
//!
//! [`Outbox::fetch_unsent`] takes a [`FetchRequest`] and returns at most `limit` records, each
//! device's run starting at its lowest unsent seq, in this priority:
//!
//! 1. **Alarms**, every device's, before anything else (bounded only by `limit`);
//! 2. **ADT events**, so the census reaches the cloud before the readings that refer to it;
//! 3. **audit-trail entries** (one chain, the gateway's), so an observation backlog never holds
//!    back the record of who did what (they are few: human actions and reads of patient data);
//! 4. **live observations**: a device is *live* when its oldest unsent observation was received
//!    within the live window (`received_us >= live_since_us`); live devices are served first and
//!    in full (up to `limit`), shared fairly across devices;
//! 5. **backlog observations**: devices whose oldest unsent observation is older share at most
//!    `backlog_budget` records (the bridge's token bucket of `backlog_rate` observations/s),
//!    fairly across devices;
//! 6. **dead letters**, with what is left of `limit`.
//!
//! **The audit stream** is stored differently: its records are the rows of the gateway's
//! append-only audit trail (`audit_log`), read in place, and "sent" is one forwarded-up-to seq
//! beside it (the SQLite outbox's `audit_forwarded`), advanced only by `mark_sent` over a range
//! that starts at the first unforwarded entry, so *sent is a prefix* holds the same way. A seq
//! missing from the trail (a deleted row: tampering, which `audit verify` names) is not waited
//! for: the entries around it are forwarded and the gap shows on `icu.audit`. Audit entries are
//! never pruned (invariant 3 has no exception for them).
//!
//! "Live" is decided per device, by the age of its *head*, never per record: a device's records
//! always leave in seq order (per-device order, and so per Kafka key), and a device with a
//! backlog catches up at its share of `backlog_rate` until its head is recent again, when it
//! becomes live. So a device that never lost contact is not delayed by other devices' backlog
//! after an outage, and the backlog cannot use more than `backlog_rate` of the uplink. Live
//! devices are never throttled; a flood of live data beyond what the bridge forwards ages into
//! backlog by itself. The receive time is the gateway's clock: a clock step only changes which
//! devices count as live, never order or delivery.
//!
//! "Fairly" is water-filling: each device in the class gets `budget / devices` (at least one),
//! and what devices with less to send leave over is shared again among those that had more.
//!
//! Both calls may block (SQLite); the bridge runs them on `tokio::task::spawn_blocking`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use icu_protos::v1::{stored_record::Body, StoredRecord};

pub use error::OutboxError;

mod error;

/// A stream of records: each has its own per-device seq and its own Kafka topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Alarm state changes (`icu.alarms`). Ordered first: after an outage alarms drain first.
    Alarms,
    /// ADT events (`icu.adt`), one Patient + Encounter per event. Ordered before observations,
    /// so after an outage the census reaches the cloud before the readings that refer to it.
    Adt,
    /// Audit-trail entries (`icu.audit`), one FHIR AuditEvent per entry. Not kept in the
    /// store's `records`: the SQLite outbox reads them straight from the audit trail's own
    /// append-only table (the source of truth, never copied and never pruned) and keeps only a
    /// forwarded-up-to seq, so a stream with one "device" (`AUDIT_DEVICE`) whose seq is the
    /// entry's own. Ordered after alarms and ADT events and before observations: entries are
    /// few (human actions and reads of patient data), small and never pruned, so an observation
    /// backlog of hours must not hold back the record of who did what; the census (ADT) stays
    /// ahead because readings refer to it, and nothing refers to an audit entry.
    Audit,
    /// Observations (`icu.observations`).
    Observations,
    /// Waveform segments (`icu.waveforms`): the curves, one FHIR Observation with
    /// `valueSampledData` per segment. Ordered after observations: after an outage alarms and
    /// numerics drain first; and the first stream the disk budget prunes.
    Waveforms,
    /// Rejected inputs and why (`icu.deadletter`), one per Kafka record, as plain JSON (not
    /// FHIR). Ordered last: clinical data drains before the diagnostics.
    DeadLetters,
}

impl Stream {
    /// Every stream, in drain order.
    pub const ALL: [Stream; 6] = [
        Stream::Alarms,
        Stream::Adt,
        Stream::Audit,
        Stream::Observations,
        Stream::Waveforms,
        Stream::DeadLetters,
    ];

    /// The number the gateway store keeps in `records.kind`.
    pub fn code(self) -> i64 {
        match self {
            Stream::Observations => 1,
            Stream::Alarms => 2,
            Stream::Adt => 3,
            Stream::DeadLetters => 4,
            Stream::Audit => 5,
            Stream::Waveforms => 6,
        }
    }

    pub fn from_code(code: i64) -> Option<Stream> {
        match code {
            1 => Some(Stream::Observations),
            2 => Some(Stream::Alarms),
            3 => Some(Stream::Adt),
            4 => Some(Stream::DeadLetters),
            5 => Some(Stream::Audit),
            6 => Some(Stream::Waveforms),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Observations => "observations",
            Stream::Alarms => "alarms",
            Stream::Adt => "adt",
            Stream::DeadLetters => "deadletter",
            Stream::Audit => "audit",
            Stream::Waveforms => "waveforms",
        }
    }
}

/// The one "device" of [`Stream::Audit`]: the gateway's audit trail is a single chain, its seq
/// the entry's own (header `icu-device-id: audit`; the Kafka key is the gateway id).
pub const AUDIT_DEVICE: &str = "audit";

/// One stored record waiting to be forwarded.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRecord {
    pub stream: Stream,
    pub device_id: String,
    /// Per-device sequence number assigned at commit.
    pub seq: u64,
    /// Bed the device is assigned to.
    pub bed: String,
    pub record: StoredRecord,
}

/// What one bridge cycle asks of the outbox (see "Drain policy" in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchRequest {
    /// Most records returned, all streams together.
    pub limit: usize,
    /// A device whose oldest unsent observation was received at or after this instant (µs since
    /// the Unix epoch, the store's `received_us`) is live; an older head makes it backlog.
    pub live_since_us: i64,
    /// Most observations of backlog devices in this fetch (the bridge's token bucket).
    pub backlog_budget: usize,
    /// A stream left out of this fetch, its records kept for later: the waveform stream while
    /// its topic is missing, so curves never hold up alarms and readings.
    pub held: Option<Stream>,
}

impl FetchRequest {
    /// Everything up to `limit`, every device counted as live (no throttling): for tools and
    /// tests that want the plain "oldest unsent first" view.
    pub fn all(limit: usize) -> Self {
        Self {
            limit,
            live_since_us: i64::MIN,
            backlog_budget: limit,
            held: None,
        }
    }
}

/// The result of one fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched<R = OutboxRecord> {
    /// Ordered by `(stream, device_id, seq)`; each device's run starts at its lowest unsent seq
    /// and has no hole.
    pub records: Vec<R>,
    /// How many of `records` are backlog observations (debited from the bridge's token bucket).
    pub backlog: usize,
}

impl<R> Default for Fetched<R> {
    fn default() -> Self {
        Self {
            records: Vec::new(),
            backlog: 0,
        }
    }
}

/// The oldest unsent record of one device's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub stream: Stream,
    pub device_id: String,
    /// Lowest unsent seq.
    pub seq: u64,
    /// When the gateway received that record (µs since the Unix epoch).
    pub received_us: i64,
}

/// The two cheap reads a fetch is built from; implemented over SQLite by the gateway and over a
/// map by [`MemoryOutbox`], so both follow [`fetch_in_drain_order`] exactly.
pub trait FetchSource {
    type Row;
    type Error;
    /// Every `(stream, device)` that has an unsent record, with its head.
    fn heads(&mut self) -> Result<Vec<Head>, Self::Error>;
    /// Up to `n` unsent records of one device's stream with `seq >= from_seq`, ascending.
    fn read(
        &mut self,
        stream: Stream,
        device_id: &str,
        from_seq: u64,
        n: usize,
    ) -> Result<Vec<Self::Row>, Self::Error>;
    /// The seq of a row `read` returned.
    fn seq_of(row: &Self::Row) -> u64;
    /// The `(stream, device_id, seq)` order key of a row.
    fn key_of(row: &Self::Row) -> (Stream, &str, u64);
}

/// One fetch following the drain policy of the module docs: alarms, ADT events, audit entries, live
/// observations, backlog observations (at most `backlog_budget`), dead letters; at most
/// `limit` records; each class shared fairly across its devices.
pub fn fetch_in_drain_order<S: FetchSource>(
    source: &mut S,
    request: &FetchRequest,
) -> Result<Fetched<S::Row>, S::Error> {
    fetch_in_drain_order_after(source, request, &InFlightRuns::new())
}

/// Per `(stream, device)`, the highest seq already in flight (fetched by a cycle whose delivery
/// reports are still awaited, see [`Outbox::fetch_unsent_after`]).
pub type InFlightRuns = BTreeMap<(Stream, String), u64>;

/// [`fetch_in_drain_order`] as if every record of `in_flight` were already sent: a device in
/// it is read from the seq after its in-flight run instead of from its head. Its class (live or
/// backlog) is still decided by its head, the oldest unsent record.
pub fn fetch_in_drain_order_after<S: FetchSource>(
    source: &mut S,
    request: &FetchRequest,
    in_flight: &InFlightRuns,
) -> Result<Fetched<S::Row>, S::Error> {
    let mut heads = source.heads()?;
    for head in &mut heads {
        if let Some(last) = in_flight.get(&(head.stream, head.device_id.clone())) {
            head.seq = head.seq.max(last.saturating_add(1));
        }
    }
    heads.sort_by(|a, b| (a.stream, &a.device_id).cmp(&(b.stream, &b.device_id)));
    let mut out = Fetched::default();
    let mut remaining = request.limit;
    for stream in Stream::ALL {
        if request.held == Some(stream) {
            continue;
        }
        let class: Vec<&Head> = heads.iter().filter(|h| h.stream == stream).collect();
        if stream == Stream::Observations {
            let (live, backlog): (Vec<&Head>, Vec<&Head>) = class
                .into_iter()
                .partition(|h| h.received_us >= request.live_since_us);
            remaining -= take_fairly(source, &live, remaining, &mut out.records)?;
            let budget = remaining.min(request.backlog_budget);
            let taken = take_fairly(source, &backlog, budget, &mut out.records)?;
            remaining -= taken;
            out.backlog = taken;
        } else {
            remaining -= take_fairly(source, &class, remaining, &mut out.records)?;
        }
    }
    out.records.sort_by(|a, b| S::key_of(a).cmp(&S::key_of(b)));
    Ok(out)
}

/// Water-filling: every device gets `budget / devices` (at least 1) from its head; what devices
/// with less leave over goes round again to those that filled their share. Returns the count.
fn take_fairly<S: FetchSource>(
    source: &mut S,
    heads: &[&Head],
    mut budget: usize,
    out: &mut Vec<S::Row>,
) -> Result<usize, S::Error> {
    let start = budget;
    let mut active: Vec<(&Head, u64)> = heads.iter().map(|h| (*h, h.seq)).collect();
    while budget > 0 && !active.is_empty() {
        let share = (budget / active.len()).max(1);
        let mut still = Vec::with_capacity(active.len());
        for (head, from) in active {
            if budget == 0 {
                break;
            }
            let n = share.min(budget);
            let rows = source.read(head.stream, &head.device_id, from, n)?;
            budget -= rows.len();
            if rows.len() == n {
                if let Some(last) = rows.last() {
                    still.push((head, S::seq_of(last) + 1));
                }
            }
            out.extend(rows);
        }
        active = still;
    }
    Ok(start - budget)
}

/// Records waiting for Kafka. Implementations may block; they must be thread safe.
pub trait Outbox: Send + Sync + 'static {
    /// Unsent records in drain order (see the module docs), at most `request.limit`, ordered by
    /// `(stream, device_id, seq)`; each device's run starts at its lowest unsent seq.
    fn fetch_unsent(&self, request: &FetchRequest) -> Result<Fetched, OutboxError>;
    /// As [`Outbox::fetch_unsent`] while the records of `in_flight` (per device, up to the
    /// given seq) are still awaiting their delivery reports: each such device's run starts
    /// after its in-flight records, so the bridge can prepare its next cycle while the current
    /// one is being delivered. The caller uses the result only once everything in flight was
    /// delivered and marked sent (else it discards it), so sent stays a prefix.
    ///
    /// The default fetches as usual and drops the in-flight records (it may return fewer than
    /// it could, and `backlog` may count some of the dropped ones).
    fn fetch_unsent_after(
        &self,
        request: &FetchRequest,
        in_flight: &InFlightRuns,
    ) -> Result<Fetched, OutboxError> {
        let mut fetched = self.fetch_unsent(request)?;
        fetched.records.retain(|r| {
            in_flight
                .get(&(r.stream, r.device_id.clone()))
                .is_none_or(|last| r.seq > *last)
        });
        Ok(fetched)
    }

    /// Marks [first_seq, last_seq] of one device's stream as sent (called only after Kafka's
    /// delivery report). Idempotent.
    fn mark_sent(
        &self,
        stream: Stream,
        device_id: &str,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), OutboxError>;

    /// Marks every range of `ranges` sent (one bridge phase's delivered bundles). The caller
    /// passes, per `(stream, device)`, only a prefix of that device's in-flight bundles in seq
    /// order (`icu_cloud_bridge::bridge::plan::markable`), so whatever part of the call takes effect
    /// keeps *sent is a prefix*.
    ///
    /// The default marks range by range and stops at the first error (a per-device prefix may
    /// then be marked); the SQLite outbox marks all ranges in one transaction (all or nothing,
    /// one commit instead of one per bundle). Idempotent.
    fn mark_sent_many(&self, ranges: &[SentRange]) -> Result<(), OutboxError> {
        for r in ranges {
            self.mark_sent(r.stream, &r.device_id, r.first_seq, r.last_seq)?;
        }
        Ok(())
    }

    /// Keeps a record the backbone refused for good (a schema registry's INVALID_RECORD) as a
    /// dead letter of the gateway, like a rejected input: on the dead-letter stream, with its
    /// own seq, forwarded to `icu.deadletter` and shown where dead letters are. Blocks until
    /// committed. The default (outboxes without a dead-letter stream) refuses.
    fn dead_letter(&self, letter: BackboneDeadLetter) -> Result<(), OutboxError> {
        Err(OutboxError::new(
            "dead_letter",
            format!(
                "this outbox keeps no dead letters (record of {} refused: {})",
                letter.device_id, letter.reason
            ),
        ))
    }
}

/// A record the backbone refused for good, for [`Outbox::dead_letter`].
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneDeadLetter {
    pub received_us: i64,
    /// `kafka:<topic>`.
    pub transport: String,
    /// The brokers.
    pub peer: String,
    pub device_id: String,
    /// What was refused, e.g. `icu.observations.pb seq 7-9`.
    pub location: String,
    pub reason: String,
    /// The refused value (at most 64 KiB kept) and its whole length.
    pub raw: Vec<u8>,
    pub raw_len: usize,
}

/// One delivered range of one device's stream, `[first_seq, last_seq]`, for
/// [`Outbox::mark_sent_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRange {
    pub stream: Stream,
    pub device_id: String,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// The records of a [`MemoryOutbox`] by `(stream, device, seq)`, with their sent flag.
type MemoryRecords = BTreeMap<(Stream, String, u64), (OutboxRecord, bool)>;

/// An in-memory [`Outbox`] for tests (here and in the gateway), with the same drain policy as
/// the SQLite outbox. A record's receive time (for live vs backlog) is the one the store keeps:
/// an observation's `receive_time_us`, an alarm's or ADT event's `event_time_us`, a dead
/// letter's `received_us`.
#[derive(Debug, Default)]
pub struct MemoryOutbox {
    records: Mutex<MemoryRecords>,
    fail_fetch: AtomicBool,
    fail_mark: AtomicBool,
}

/// The receive time the gateway store records for a record (`records.received_us`).
pub fn received_us(record: &StoredRecord) -> i64 {
    match &record.body {
        Some(Body::Observation(o)) => o.receive_time_us,
        Some(Body::Alarm(a)) => a.event_time_us,
        Some(Body::AdtEvent(e)) => e.event_time_us,
        Some(Body::DeadLetter(d)) => d.received_us,
        Some(Body::AuditEntry(e)) => e.time_us,
        Some(Body::Waveform(w)) => w.receive_time_us,
        Some(Body::AlarmSnippet(s)) => s.built_time_us,
        Some(Body::DeviceStatus(_)) | None => 0,
    }
}

impl MemoryOutbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an unsent record.
    pub fn push(&self, record: OutboxRecord) {
        let key = (record.stream, record.device_id.clone(), record.seq);
        self.lock().insert(key, (record, false));
    }

    /// Number of records not yet marked sent.
    pub fn unsent_len(&self) -> usize {
        self.lock().values().filter(|(_, sent)| !sent).count()
    }

    /// The seqs of `device_id` marked sent, ascending (all streams).
    pub fn sent_seqs(&self, device_id: &str) -> Vec<u64> {
        self.lock()
            .iter()
            .filter(|((_, device, _), (_, sent))| device == device_id && *sent)
            .map(|((_, _, seq), _)| *seq)
            .collect()
    }

    /// The seqs of one device's stream marked sent, ascending.
    pub fn sent_seqs_of(&self, stream: Stream, device_id: &str) -> Vec<u64> {
        self.lock()
            .iter()
            .filter(|((s, device, _), (_, sent))| *s == stream && device == device_id && *sent)
            .map(|((_, _, seq), _)| *seq)
            .collect()
    }

    /// Makes `fetch_unsent` fail (to test the bridge's error path).
    pub fn set_fail_fetch(&self, fail: bool) {
        self.fail_fetch.store(fail, Ordering::SeqCst);
    }

    /// Makes `mark_sent` fail (to test the bridge's error path).
    pub fn set_fail_mark(&self, fail: bool) {
        self.fail_mark.store(fail, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryRecords> {
        // A panic while holding the lock cannot leave the map half-updated (single inserts).
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// [`FetchSource`] over a locked [`MemoryRecords`] map.
struct MemorySource<'a>(&'a MemoryRecords);

impl FetchSource for MemorySource<'_> {
    type Row = OutboxRecord;
    type Error = std::convert::Infallible;

    fn heads(&mut self) -> Result<Vec<Head>, Self::Error> {
        let mut heads: Vec<Head> = Vec::new();
        for ((stream, device, seq), (record, sent)) in self.0.iter() {
            let same = heads
                .last()
                .is_some_and(|h| h.stream == *stream && h.device_id == *device);
            if *sent || same {
                continue;
            }
            heads.push(Head {
                stream: *stream,
                device_id: device.clone(),
                seq: *seq,
                received_us: received_us(&record.record),
            });
        }
        Ok(heads)
    }

    fn read(
        &mut self,
        stream: Stream,
        device_id: &str,
        from_seq: u64,
        n: usize,
    ) -> Result<Vec<OutboxRecord>, Self::Error> {
        let device = device_id.to_owned();
        Ok(self
            .0
            .range((stream, device.clone(), from_seq)..=(stream, device, u64::MAX))
            .filter(|(_, (_, sent))| !sent)
            .take(n)
            .map(|(_, (record, _))| record.clone())
            .collect())
    }

    fn seq_of(row: &OutboxRecord) -> u64 {
        row.seq
    }

    fn key_of(row: &OutboxRecord) -> (Stream, &str, u64) {
        (row.stream, &row.device_id, row.seq)
    }
}

impl Outbox for MemoryOutbox {
    fn fetch_unsent(&self, request: &FetchRequest) -> Result<Fetched, OutboxError> {
        if self.fail_fetch.load(Ordering::SeqCst) {
            return Err(OutboxError {
                operation: "fetch_unsent",
                reason: "injected failure".into(),
            });
        }
        let records = self.lock();
        let Ok(fetched) = fetch_in_drain_order(&mut MemorySource(&records), request);
        Ok(fetched)
    }

    fn fetch_unsent_after(
        &self,
        request: &FetchRequest,
        in_flight: &InFlightRuns,
    ) -> Result<Fetched, OutboxError> {
        if self.fail_fetch.load(Ordering::SeqCst) {
            return Err(OutboxError {
                operation: "fetch_unsent",
                reason: "injected failure".into(),
            });
        }
        let records = self.lock();
        let Ok(fetched) =
            fetch_in_drain_order_after(&mut MemorySource(&records), request, in_flight);
        Ok(fetched)
    }

    fn mark_sent(
        &self,
        stream: Stream,
        device_id: &str,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), OutboxError> {
        if self.fail_mark.load(Ordering::SeqCst) {
            return Err(OutboxError {
                operation: "mark_sent",
                reason: "injected failure".into(),
            });
        }
        let mut records = self.lock();
        let range =
            (stream, device_id.to_owned(), first_seq)..=(stream, device_id.to_owned(), last_seq);
        for (_, (_, sent)) in records.range_mut(range) {
            *sent = true;
        }
        Ok(())
    }

    /// All ranges under one lock: all or nothing, like the SQLite outbox's one transaction.
    fn mark_sent_many(&self, ranges: &[SentRange]) -> Result<(), OutboxError> {
        if self.fail_mark.load(Ordering::SeqCst) {
            return Err(OutboxError {
                operation: "mark_sent_many",
                reason: "injected failure".into(),
            });
        }
        let mut records = self.lock();
        for r in ranges.iter().filter(|r| r.first_seq <= r.last_seq) {
            let range = (r.stream, r.device_id.clone(), r.first_seq)
                ..=(r.stream, r.device_id.clone(), r.last_seq);
            for (_, (_, sent)) in records.range_mut(range) {
                *sent = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
