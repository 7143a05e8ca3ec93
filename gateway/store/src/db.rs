//! The synchronous SQLite core of the store (no actors, no runtime: tested directly).
//!
//! Guarantees:
//! - a write request is applied whole or not at all (one savepoint per request inside the
//!   batch transaction), and nothing is reported stored before the batch's `COMMIT` returned;
//! - `seq` is assigned per device inside the same transaction, so committed seqs are gapless
//!   and strictly increasing, and a failed commit consumes none;
//! - a retried message (same device, control id and bytes) among the device's last
//!   [`DEDUP_WINDOW`] messages is recognised and not stored twice (see `db/dedup.rs`);
//! - the disk budget ([`BudgetPolicy`], policy in the `store` module docs) is checked before every
//!   request of a batch, on the bytes in use (`(page_count - freelist_count) * page_size` plus
//!   the write-ahead log), so deleted records count as freed; above the high-water mark each
//!   batch first prunes one bounded chunk (forwarded records oldest first, then, only with
//!   `on_full = drop_oldest_unsent`, the oldest unsent observations), never a long stall;
//! - a message's waveform segments are stored in the savepoint of its readings (both or
//!   neither), on the device's waveform stream with their own gapless seqs, packed (see
//!   `db/waveforms.rs`), and only below the waveform limit
//!   ([`BudgetPolicy::waveform_limit_bytes`]); above it the readings are stored without them
//!   (counted, logged), and forwarded waveform rows are pruned a chunk per batch.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use icu_outbox::Stream;
use icu_protos::v1::{stored_record, Observation, StoredRecord};
use icu_protos::Message;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

const SCHEMA: &str = include_str!("schema.sql");

/// `record_seqs`: one line per stored record (`kind, device_id, seq, sent, received_us`), the
/// rows of `records` spread over their seqs, for tools and tests that look into the file
/// (`sqlite3 store.db 'SELECT ... FROM record_seqs'`). A full scan: never on a serving path.
/// Created after [`migrate`], as it names the columns that adds.
const VIEWS: &str = "CREATE VIEW IF NOT EXISTS record_seqs AS
    WITH RECURSIVE spread(kind, device_id, seq, last, sent, sent_upto, received_us) AS (
        SELECT kind, device_id, seq, seq + n - 1, sent, sent_upto, received_us FROM records
        UNION ALL
        SELECT kind, device_id, seq + 1, last, sent, sent_upto, received_us FROM spread
        WHERE seq < last
    )
    SELECT kind, device_id, seq, (sent = 1 OR seq <= sent_upto) AS sent, received_us FROM spread;";

/// Writer connection: the only one that inserts.
pub struct StoreDb {
    conn: Connection,
    path: PathBuf,
    gateway_id: String,
    policy: BudgetPolicy,
    status: BudgetStatus,
    /// After a pruning round that found nothing to delete, the next one waits until then (the
    /// bridge has to forward something first; no need to look on every batch).
    next_prune: Option<std::time::Instant>,
    dedup: Dedup,
    /// Readings committed but not yet in the trend rollup (`db/trends.rs`).
    trends: TrendRollup,
    /// Segments not kept at the waveform limit, per device, for the log.
    not_stored: NotStored,
    /// After a waveform-limit pruning that found nothing forwarded, the next waits until then.
    next_wave_prune: Option<std::time::Instant>,
    /// When the next waveform retention pass runs.
    next_wave_retention: std::time::Instant,
    /// How segment samples are packed (the measured choice unless a benchmark says otherwise).
    wave_packing: WaveformPacking,
}

/// How often the waveform retention runs (sooner while a pass finds more than it may delete).
const WAVE_RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Most waveform segments one retention pass deletes.
const WAVE_RETENTION_CHUNK: u64 = 4096;

fn sqlite_err(path: &Path, e: rusqlite::Error) -> StoreError {
    StoreError::Sqlite {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Opens a connection with the gateway's pragmas.
pub fn open_connection(path: &Path, synchronous_full: bool) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sqlite {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite_err(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| sqlite_err(path, e))?;
    let sync = if synchronous_full { "FULL" } else { "NORMAL" };
    // temp_store = MEMORY: every request of a group commit runs in its own savepoint, and SQLite
    // keeps the before-image of each page a savepoint changes in a statement journal. In a temp
    // file that was a 4 KiB write(2) per page changed: a third of all bytes the writer wrote
    // (`cargo bench -p icu-tests --bench store_commit`: 6.0 KiB written per stored
    // observation before, 4.2 KiB after). It is bounded by the pages one request touches.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON; PRAGMA temp_store=MEMORY;"
    ))
    .map_err(|e| sqlite_err(path, e))?;
    Ok(conn)
}

/// FNV-1a over the message bytes: a stable digest to recognise an identical retry.
pub fn digest(bytes: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

impl StoreDb {
    /// Opens the store with the default [`BudgetPolicy`] for `budget_bytes`.
    pub fn open(
        path: &Path,
        gateway_id: &str,
        synchronous_full: bool,
        budget_bytes: u64,
    ) -> Result<Self, StoreError> {
        Self::open_with_policy(
            path,
            gateway_id,
            synchronous_full,
            BudgetPolicy::with_budget(budget_bytes),
        )
    }

    pub fn open_with_policy(
        path: &Path,
        gateway_id: &str,
        synchronous_full: bool,
        policy: BudgetPolicy,
    ) -> Result<Self, StoreError> {
        let conn = open_connection(path, synchronous_full)?;
        conn.execute_batch(SCHEMA)
            .and_then(|()| migrate(&conn))
            .and_then(|()| conn.execute_batch(VIEWS))
            .map_err(|e| sqlite_err(path, e))?;
        apply_wal_limits(&conn, &policy).map_err(|e| sqlite_err(path, e))?;
        let trends = TrendRollup::recover(&conn, policy.trend_retention_us(), row_records)
            .map_err(|e| sqlite_err(path, e))?;
        let mut db = Self {
            conn,
            path: path.to_owned(),
            gateway_id: gateway_id.to_owned(),
            status: BudgetStatus {
                budget_bytes: policy.budget_bytes,
                high_water_bytes: policy.high_water_bytes(),
                low_water_bytes: policy.low_water_bytes(),
                reserve_limit_bytes: policy.reserve_limit_bytes(),
                waveforms: WaveformCounts {
                    limit_bytes: policy.waveform_limit_bytes(),
                    ..Default::default()
                },
                ..Default::default()
            },
            policy,
            next_prune: None,
            dedup: Dedup::default(),
            trends,
            not_stored: NotStored::default(),
            next_wave_prune: None,
            next_wave_retention: std::time::Instant::now(),
            wave_packing: WaveformPacking::Auto,
        };
        db.dedup.legacy = db
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM messages)", [], |r| r.get(0))
            .map_err(|e| sqlite_err(path, e))?;
        let used = db.used_bytes().map_err(|e| sqlite_err(path, e))?;
        db.status.used_bytes = used;
        db.status.full = used >= db.policy.budget_bytes;
        db.status.pruning = used >= db.policy.high_water_bytes();
        db.status.wal_bytes = file_size(&db.wal_path());
        Ok(db)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn policy(&self) -> &BudgetPolicy {
        &self.policy
    }

    /// Replaces the budget policy (taken into account from the next batch).
    pub fn set_policy(&mut self, policy: BudgetPolicy) {
        if let Err(e) = apply_wal_limits(&self.conn, &policy) {
            tracing::warn!(error = %e, "store: write-ahead log limits not applied");
        }
        self.status.budget_bytes = policy.budget_bytes;
        self.status.high_water_bytes = policy.high_water_bytes();
        self.status.low_water_bytes = policy.low_water_bytes();
        self.status.reserve_limit_bytes = policy.reserve_limit_bytes();
        self.status.waveforms.limit_bytes = policy.waveform_limit_bytes();
        self.policy = policy;
    }

    /// How long committed readings wait in memory before the trend rollup writes them
    /// (`db/trends.rs`; default 5 s; tests and benches use zero: every batch).
    pub fn set_trend_flush_every(&mut self, every: std::time::Duration) {
        self.trends.flush_every = every;
    }

    /// How segment samples are packed from the next batch on (default
    /// [`WaveformPacking::Auto`], the measured choice; `cargo bench -p icu-store --bench
    /// waveform_store` compares it with the others).
    pub fn set_waveform_packing(&mut self, packing: WaveformPacking) {
        self.wave_packing = packing;
    }

    /// The budget as last measured, with the pruning counters.
    pub fn budget_status(&self) -> &BudgetStatus {
        &self.status
    }

    /// Bytes the store files occupy on disk (database plus write-ahead log). Freed pages are
    /// reused, not returned, so this stays at its high-water mark; the budget counts
    /// [`StoreDb::used_bytes`] instead.
    pub fn disk_usage(&self) -> u64 {
        file_size(&self.path) + file_size(&self.wal_path())
    }

    fn wal_path(&self) -> PathBuf {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        PathBuf::from(wal)
    }

    /// Bytes the budget counts: pages in use (`(page_count - freelist_count) * page_size`, as
    /// this connection sees them, so inside a transaction its own inserts and deletes count)
    /// plus the write-ahead log at its allowance ([`BudgetPolicy::wal_allowance_bytes`]: the
    /// log is checkpointed and truncated at that size, so the files stay within the budget
    /// except while a long reader holds the log back; the log's real size is in
    /// [`BudgetStatus::wal_bytes`]).
    pub fn used_bytes(&self) -> rusqlite::Result<u64> {
        Ok(pages_in_use_bytes(&self.conn)? + self.policy.wal_allowance_bytes())
    }

    /// Applies a batch in one transaction; returns one result per request, in order.
    ///
    /// Above the high-water mark it first prunes (see the module docs); each request is then
    /// admitted against the bytes in use at that moment: dead letters below the high-water mark,
    /// observations below the budget, alarm state changes and ADT events below the budget plus
    /// the alarm reserve.
    /// An empty batch only runs the pruning (the store calls it when idle).
    pub fn commit_batch(
        &mut self,
        requests: &[WriteRequest],
    ) -> Vec<Result<WriteOutcome, StoreError>> {
        // The log is counted at its allowance (it is checkpointed and truncated at that size):
        // deleting records cannot shrink a log that a reader keeps from being checkpointed, so
        // neither pruning nor admission chases its transient excess.
        let allowance = self.policy.wal_allowance_bytes();
        self.status.wal_bytes = file_size(&self.wal_path());
        let data = match pages_in_use_bytes(&self.conn) {
            Ok(pages) => pages + allowance,
            Err(e) => {
                let err = sqlite_err(&self.path, e);
                return requests.iter().map(|_| Err(err.clone())).collect();
            }
        };
        self.status.used_bytes = data;
        if data >= self.policy.high_water_bytes() {
            self.status.pruning = true;
        } else if data <= self.policy.low_water_bytes() {
            self.status.pruning = false;
        }
        let now = std::time::Instant::now();
        let trends_due = self.trends.due(now);
        let wave_limit = self.policy.waveform_limit_bytes();
        let wave_prune_due = data >= wave_limit && self.next_wave_prune.is_none_or(|t| now >= t);
        let wave_retention_due = now >= self.next_wave_retention;
        if requests.is_empty()
            && !self.status.pruning
            && !trends_due
            && !wave_prune_due
            && !wave_retention_due
        {
            self.status.full = data >= self.policy.budget_bytes;
            return Vec::new();
        }
        let path = self.path.clone();
        let gateway_id = self.gateway_id.clone();
        let dedup = &mut self.dedup;
        dedup.pending.clear();
        let fail_all = |e: rusqlite::Error| -> Vec<Result<WriteOutcome, StoreError>> {
            let err = sqlite_err(&path, e);
            requests.iter().map(|_| Err(err.clone())).collect()
        };
        // IMMEDIATE: take the write lock up front. A deferred transaction that first reads
        // (dedup lookup) and then writes fails at once with SQLITE_BUSY (snapshot) when another
        // connection (the bridge marking records sent, the census) committed in between; the
        // busy timeout does not cover that case.
        let mut tx = match self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => return fail_all(e),
        };
        let policy = &self.policy;
        let mut data = data;
        let mut pruned = PruneReport::default();
        if trends_due {
            // In its own savepoint: a failure leaves the readings pending for the next batch
            // and must not stop the writes.
            let written = (|| {
                let sp = tx.savepoint()?;
                self.trends.write(&sp, now, policy.trend_retention_us())?;
                sp.commit()
            })();
            if let Err(e) = written {
                tracing::error!(error = %e, "store: trend rollup not written");
            }
        }
        if self.status.pruning && self.next_prune.is_none_or(|t| now >= t) {
            self.next_prune = None;
            // Bounded: one round between the high-water mark and the budget, a few when the
            // budget itself is reached (a round deletes at most `prune_chunk` records).
            for round in 0..MAX_PRUNE_ROUNDS {
                if round > 0 && data < policy.budget_bytes {
                    break;
                }
                let report = (|| {
                    let sp = tx.savepoint()?;
                    let report = prune_round(&sp, policy, dedup.legacy)?;
                    sp.commit()?;
                    Ok::<_, rusqlite::Error>(report)
                })();
                let report = match report {
                    Ok(r) => r,
                    Err(e) => {
                        // Pruning failing must not stop the writes that still fit.
                        tracing::error!(error = %e, "store pruning failed");
                        break;
                    }
                };
                let progress = report.records() > 0;
                pruned.merge(report);
                data = match pages_in_use_bytes(&tx) {
                    Ok(pages) => pages + allowance,
                    Err(e) => return fail_all(e),
                };
                if !progress {
                    self.next_prune = Some(now + PRUNE_RETRY);
                    break;
                }
                if data <= policy.low_water_bytes() {
                    break;
                }
            }
        }
        if wave_prune_due || wave_retention_due {
            // Wall-clock µs since the Unix epoch (receive times are wall clock too).
            let now_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            let cutoff_us = now_us.saturating_sub(policy.waveform_retention_us());
            let done = (|| {
                let sp = tx.savepoint()?;
                let pruned = if wave_prune_due {
                    prune_sent_waveforms(&sp, policy.prune_chunk as u64)?
                } else {
                    0
                };
                let expired = if wave_retention_due {
                    expire_waveforms(&sp, cutoff_us, WAVE_RETENTION_CHUNK)?
                } else {
                    0
                };
                sp.commit()?;
                Ok::<_, rusqlite::Error>((pruned, expired))
            })();
            match done {
                Ok((pruned_waves, expired)) => {
                    if wave_prune_due {
                        self.next_wave_prune = (pruned_waves == 0).then_some(now + PRUNE_RETRY);
                        pruned.sent += pruned_waves;
                        pruned.sent_waveforms += pruned_waves;
                    }
                    if wave_retention_due {
                        let more = expired >= WAVE_RETENTION_CHUNK;
                        self.next_wave_retention = now
                            + if more {
                                PRUNE_RETRY
                            } else {
                                WAVE_RETENTION_EVERY
                            };
                        pruned.expired_waveforms += expired;
                    }
                    data = match pages_in_use_bytes(&tx) {
                        Ok(pages) => pages + allowance,
                        Err(e) => return fail_all(e),
                    };
                }
                // Must not stop the writes.
                Err(e) => {
                    tracing::error!(error = %e, "store: waveform pruning or retention failed")
                }
            }
        }
        let mut used = data;
        let mut results = Vec::with_capacity(requests.len());
        // Waveform segments stored in this batch, and those of stored messages not kept
        // (device, segments, sample positions), accounted once the commit returned.
        let mut waves_stored = 0u64;
        let mut waves_not_stored: Vec<(&str, u64, u64)> = Vec::new();
        let mut refused = 0u64;
        let mut refused_dead_letters = 0u64;
        let mut full = false;
        // Devices whose ordered write was refused in this batch: their later `InOrder` writes
        // in it are deferred (see [`WriteOrder`]).
        let mut held_back: HashSet<&str> = HashSet::new();
        // Observations stored in this batch, for the trend rollup once the commit returned.
        let mut rolled: Vec<(&ObservationBatch, u64)> = Vec::new();
        for req in requests {
            if let WriteRequest::Observations(b) = req {
                if b.order == WriteOrder::InOrder && held_back.contains(b.device_id.as_str()) {
                    results.push(Err(StoreError::Deferred {
                        device_id: b.device_id.clone(),
                    }));
                    continue;
                }
            }
            let hold_on_error = match req {
                WriteRequest::Observations(b) if b.order.is_ordered() => Some(b.device_id.as_str()),
                _ => None,
            };
            // Admission against the bytes in use now (this transaction's inserts and deletes
            // included): alarms and ADT events may use the reserve above the budget; rejected
            // input stops at the high-water mark, so a flood of it leaves the room between that
            // mark and the budget to readings.
            let limit = match req {
                WriteRequest::MarkSent(_) => u64::MAX,
                WriteRequest::DeadLetter(_) => policy.high_water_bytes(),
                WriteRequest::Observations(_) | WriteRequest::Snippet(_) => policy.budget_bytes,
                WriteRequest::Alarm(_) | WriteRequest::Adt(_) => policy.reserve_limit_bytes(),
            };
            if used >= limit {
                // A sender's retry of a message already stored is still answered as stored.
                if let WriteRequest::Observations(b) = req {
                    match dedup.find(&tx, b) {
                        Ok(Some(dup)) => {
                            results.push(Ok(dup));
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            held_back.extend(hold_on_error);
                            results.push(Err(sqlite_err(&path, e)));
                            continue;
                        }
                    }
                    full = true;
                }
                if matches!(req, WriteRequest::DeadLetter(_)) {
                    refused_dead_letters += 1;
                    full |= used >= policy.budget_bytes;
                }
                refused += 1;
                held_back.extend(hold_on_error);
                results.push(Err(StoreError::BudgetExceeded {
                    used_mib: used >> 20,
                    budget_mib: policy.budget_bytes >> 20,
                }));
                continue;
            }
            // The message's segments: stored (true) or not kept at the waveform limit (false).
            let mut waves: Option<bool> = None;
            let outcome = (|| {
                let sp = tx.savepoint()?;
                let out = match req {
                    WriteRequest::MarkSent(ranges) => WriteOutcome::Marked {
                        records: mark_ranges(&sp, ranges)?,
                    },
                    WriteRequest::Observations(b) => match dedup.find(&sp, b)? {
                        Some(dup) => dup,
                        None => {
                            let out = insert_observations(&sp, &gateway_id, b)?;
                            if let WriteOutcome::Stored { first_seq, .. } = out {
                                if self.trends.is_new(&b.device_id) {
                                    TrendRollup::register(&sp, &b.device_id, first_seq)?;
                                }
                            }
                            if !b.waveforms.is_empty() {
                                if used < wave_limit {
                                    insert_waveforms(&sp, &gateway_id, b, self.wave_packing)?;
                                    waves = Some(true);
                                } else {
                                    waves = Some(false);
                                }
                            }
                            out
                        }
                    },
                    WriteRequest::Alarm(a) => {
                        let body = stored_record::Body::Alarm(a.alarm.clone());
                        let (first, last) = insert_records(
                            &sp,
                            &gateway_id,
                            Stream::Alarms,
                            &a.device_id,
                            &a.bed,
                            vec![(a.alarm.event_time_us, body)],
                        )?;
                        WriteOutcome::Stored {
                            first_seq: first,
                            last_seq: last,
                        }
                    }
                    WriteRequest::Snippet(w) => {
                        let mut snippet = w.snippet.clone();
                        // A snippet is one record, alone in its row (see db/waveforms.rs).
                        for seg in &mut snippet.segments {
                            self.wave_packing.pack(seg, 1);
                        }
                        let body = stored_record::Body::AlarmSnippet(snippet);
                        let (first, last) = insert_records(
                            &sp,
                            &gateway_id,
                            Stream::Alarms,
                            &w.device_id,
                            &w.bed,
                            vec![(w.snippet.built_time_us, body)],
                        )?;
                        WriteOutcome::Stored {
                            first_seq: first,
                            last_seq: last,
                        }
                    }
                    WriteRequest::Adt(event) => {
                        let (first, last) = insert_records(
                            &sp,
                            &gateway_id,
                            Stream::Adt,
                            ADT_SOURCE,
                            &event.bed,
                            vec![(
                                event.event_time_us,
                                stored_record::Body::AdtEvent(event.clone()),
                            )],
                        )?;
                        WriteOutcome::Stored {
                            first_seq: first,
                            last_seq: last,
                        }
                    }
                    WriteRequest::DeadLetter(d) => {
                        let out = insert_dead_letter(&sp, d)?;
                        // Also into the outbox, for icu.deadletter.
                        let device = d.device_id.clone().unwrap_or_else(|| UNATTRIBUTED.into());
                        let body = stored_record::Body::DeadLetter(icu_protos::v1::DeadLetter {
                            received_us: d.received_us,
                            transport: d.transport.clone(),
                            peer: d.peer.clone(),
                            device_id: d.device_id.clone().unwrap_or_default(),
                            stream_offset: d.stream_offset,
                            ack_code: d.ack_code.clone(),
                            error_code: u32::from(d.error_code),
                            location: d.location.clone().unwrap_or_default(),
                            reason: d.reason.clone(),
                            raw: d.raw.clone(),
                            raw_len: d.raw_len as u64,
                        });
                        insert_records(
                            &sp,
                            &gateway_id,
                            Stream::DeadLetters,
                            &device,
                            "",
                            vec![(d.received_us, body)],
                        )?;
                        out
                    }
                };
                sp.commit()?;
                if let WriteRequest::Observations(b) = req {
                    dedup.stored(b, &out);
                    if let WriteOutcome::Stored { last_seq, .. } = out {
                        rolled.push((b, last_seq));
                    }
                    match waves {
                        Some(true) => waves_stored += b.waveforms.len() as u64,
                        Some(false) => waves_not_stored.push((
                            &b.device_id,
                            b.waveforms.len() as u64,
                            b.waveforms.iter().map(|w| u64::from(w.sample_count)).sum(),
                        )),
                        None => {}
                    }
                }
                Ok::<_, rusqlite::Error>(out)
            })();
            if outcome.is_err() {
                held_back.extend(hold_on_error);
            }
            results.push(outcome.map_err(|e| sqlite_err(&path, e)));
            if let Ok(pages) = pages_in_use_bytes(&tx) {
                used = pages + allowance;
            }
        }
        if let Err(e) = tx.commit() {
            dedup.pending.clear();
            return fail_all(e);
        }
        dedup.committed();
        if trends_due {
            self.trends.written(now);
        }
        for (b, last) in rolled {
            self.trends
                .committed(&b.device_id, &b.bed, &b.observations, last);
        }
        self.status.refused_requests += refused;
        self.status.waveforms.segments_stored += waves_stored;
        for (device, segments, samples) in waves_not_stored {
            self.status.waveforms.segments_not_stored += segments;
            self.status.waveforms.samples_not_stored += samples;
            self.not_stored.count(device, segments, samples, wave_limit);
        }
        if refused_dead_letters > 0 {
            self.status.refused_dead_letters += refused_dead_letters;
            tracing::warn!(
                count = refused_dead_letters,
                used_bytes = used,
                high_water_bytes = policy.high_water_bytes(),
                "store: dead letters refused (rejected input not kept) at the high-water mark"
            );
        }
        self.account(pruned, full);
        results
    }

    /// Publishes what a committed batch pruned and measures again.
    fn account(&mut self, pruned: PruneReport, full: bool) {
        let s = &mut self.status;
        s.waveforms.pruned_sent += pruned.sent_waveforms;
        s.waveforms.expired += pruned.expired_waveforms;
        if pruned.rounds == 0 && pruned.sent_waveforms > 0 {
            // Waveform-limit pruning outside a budget round.
            s.pruned_sent_records += pruned.sent_waveforms;
        }
        if pruned.rounds > 0 {
            s.prune_rounds += pruned.rounds;
            s.pruned_sent_records += pruned.sent;
            s.pruned_unsent_observations += pruned.unsent;
            s.pruned_dead_letters += pruned.dead_letters;
            s.pruned_messages += pruned.messages;
            s.waveforms.pruned_unsent += pruned.unsent_waveforms;
            tracing::debug!(
                sent = pruned.sent,
                unsent = pruned.unsent,
                dead_letters = pruned.dead_letters,
                "store pruned to stay under its disk budget"
            );
        }
        for (device, (first, last, n)) in &pruned.lost_waveforms {
            tracing::warn!(device = %device, first_seq = first, last_seq = last, count = n,
                "store full: deleted unsent waveform segments to make room for readings and alarms; they will never reach Kafka");
        }
        for (device, (first, last, n)) in &pruned.lost {
            tracing::warn!(device = %device, first_seq = first, last_seq = last, count = n,
                on_full = "drop_oldest_unsent",
                "store full: deleted unsent observations to make room; they will never reach Kafka");
        }
        let allowance = self.policy.wal_allowance_bytes();
        let data = pages_in_use_bytes(&self.conn)
            .map(|p| p + allowance)
            .unwrap_or(self.status.used_bytes);
        let used = data;
        let wal = file_size(&self.wal_path());
        let s = &mut self.status;
        s.used_bytes = used;
        s.wal_bytes = wal;
        s.full = full || used >= self.policy.budget_bytes;
        let was = s.pruning;
        if data >= self.policy.high_water_bytes() {
            s.pruning = true;
        } else if data <= self.policy.low_water_bytes() {
            s.pruning = false;
        }
        if was != s.pruning {
            tracing::info!(
                used_bytes = used,
                budget_bytes = self.policy.budget_bytes,
                pruning = s.pruning,
                "store disk budget: pruning {}",
                if s.pruning {
                    "started (above the high-water mark)"
                } else {
                    "stopped (back at the low-water mark)"
                }
            );
        }
    }
}

/// Most pruning rounds at the start of one batch (only when the budget itself is reached).
const MAX_PRUNE_ROUNDS: usize = 8;
/// After a round that found nothing to prune, the next one waits this long.
const PRUNE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Keeps the write-ahead log near the policy's allowance: checkpoint at that size and truncate
/// the file back to it after a checkpoint (a small budget must not hold a 4 MiB log).
fn apply_wal_limits(conn: &Connection, policy: &BudgetPolicy) -> rusqlite::Result<()> {
    let wal = policy.wal_allowance_bytes();
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages = (wal as i64 / page_size.max(512)).max(16);
    // Both pragmas answer with a row.
    conn.query_row(&format!("PRAGMA wal_autocheckpoint = {pages}"), [], |_| {
        Ok(())
    })?;
    conn.query_row(
        &format!("PRAGMA journal_size_limit = {wal}"),
        [],
        |_| Ok(()),
    )?;
    Ok(())
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// `(page_count - freelist_count) * page_size` as `conn` sees it.
fn pages_in_use_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    // Cached: the writer asks after every request of a batch.
    let q = |sql: &str| {
        conn.prepare_cached(sql)?
            .query_row([], |r| r.get::<_, i64>(0))
    };
    let pages = q("PRAGMA page_count")?;
    let free = q("PRAGMA freelist_count")?;
    let size = q("PRAGMA page_size")?;
    Ok((pages - free).max(0) as u64 * size.max(0) as u64)
}

/// Stores one message's readings (the caller has checked it is not a retry).
fn insert_observations(
    tx: &rusqlite::Savepoint<'_>,
    gateway_id: &str,
    b: &ObservationBatch,
) -> rusqlite::Result<WriteOutcome> {
    let (first, last) = insert_rows(
        tx,
        Stream::Observations,
        &b.device_id,
        &b.bed,
        b.dedup.as_ref().map(|(c, d)| (c.as_str(), *d)),
        b.observations.len(),
        |i, seq, buf| {
            let o = &b.observations[i];
            let traceparent = b.traceparent.as_deref().unwrap_or_default();
            encode_observation_record(gateway_id, &b.device_id, seq, o, traceparent, buf);
            o.receive_time_us
        },
    )?;
    Ok(WriteOutcome::Stored {
        first_seq: first,
        last_seq: last,
    })
}

/// Most bytes of a waveform row's compressed run: what fits in a b-tree cell of the store's
/// 4 KiB pages with the row's other columns (SQLite keeps up to about 1000 bytes of a
/// `WITHOUT ROWID` row in its page; the rest goes to an overflow page of its own, mostly
/// empty: 3 KiB lost per row, measured as 0.3 B per ECG sample).
const WAVE_ROW_BYTES: usize = 900;

/// Stores one message's waveform segments (the caller has checked it is not a retry and that
/// they are admitted) on the device's waveform stream, under the message's control id and
/// digest, each packed (`db/waveforms.rs`); returns their seqs. The segments go into as few
/// rows as keep each row's compressed run within [`WAVE_ROW_BYTES`] (one row for a monitor's
/// usual message; halved until it fits).
fn insert_waveforms(
    tx: &rusqlite::Savepoint<'_>,
    gateway_id: &str,
    b: &ObservationBatch,
    packing: WaveformPacking,
) -> rusqlite::Result<(u64, u64)> {
    let count = b.waveforms.len();
    // Segment `i` as a record under `seq`, packed for a row of `in_row` records.
    let encode = |i: usize, seq: u64, in_row: usize, buf: &mut Vec<u8>| {
        let mut seg = b.waveforms[i].clone();
        seg.seq = seq;
        packing.pack(&mut seg, in_row);
        let received_us = seg.receive_time_us;
        let rec = StoredRecord {
            gateway_id: gateway_id.to_owned(),
            device_id: b.device_id.clone(),
            seq,
            body: Some(stored_record::Body::Waveform(seg)),
            traceparent: b.traceparent.clone().unwrap_or_default(),
        };
        rec.encode(buf).expect("a Vec grows as needed");
        received_us
    };
    // Whether segments `i .. i + n` compress into a row that fits (their seqs do not change
    // the size by more than a few bytes: measured under seq 0).
    let (mut run, mut one, mut frame) = (Vec::new(), Vec::new(), Vec::new());
    let mut fits = |i: usize, n: usize| -> rusqlite::Result<bool> {
        use prost::encoding::{encode_key, encode_varint, WireType};
        run.clear();
        for k in i..i + n {
            one.clear();
            encode(k, 0, n, &mut one);
            encode_key(1, WireType::LengthDelimited, &mut run);
            encode_varint(one.len() as u64, &mut run);
            run.extend_from_slice(&one);
        }
        compress_run(&run, &mut frame)?;
        Ok(frame.len() <= WAVE_ROW_BYTES)
    };
    let mut rows = Vec::new();
    let mut i = 0;
    while i < count {
        let mut n = (count - i).min(ROW_MAX);
        while n > 1 && !fits(i, n)? {
            n /= 2;
        }
        rows.push((i, n));
        i += n;
    }
    let mut seqs = (0, 0);
    for (r, &(start, n)) in rows.iter().enumerate() {
        let dedup = b.dedup.as_ref().map(|(c, d)| (c.as_str(), *d));
        let (first, last) = insert_rows(tx, Stream::Waveforms, &b.device_id, &b.bed, dedup, n, {
            |k, seq, buf: &mut Vec<u8>| encode(start + k, seq, n, buf)
        })?;
        seqs = (if r == 0 { first } else { seqs.0 }, last);
    }
    Ok(seqs)
}

/// Appends records to one device's stream under its next seqs; returns `(first, last)` (first >
/// last when `bodies` is empty). Runs inside the caller's savepoint.
fn insert_records(
    tx: &rusqlite::Savepoint<'_>,
    gateway_id: &str,
    stream: Stream,
    device_id: &str,
    bed: &str,
    bodies: Vec<(i64, stored_record::Body)>,
) -> rusqlite::Result<(u64, u64)> {
    let count = bodies.len();
    let mut bodies = bodies.into_iter();
    insert_rows(tx, stream, device_id, bed, None, count, |_, seq, buf| {
        let (received_us, mut body) = bodies.next().expect("one body per row, in order");
        match &mut body {
            stored_record::Body::Observation(o) => o.seq = seq,
            stored_record::Body::Alarm(a) => a.seq = seq,
            stored_record::Body::Waveform(w) => w.seq = seq,
            stored_record::Body::AlarmSnippet(s) => s.seq = seq,
            stored_record::Body::AdtEvent(_)
            | stored_record::Body::DeviceStatus(_)
            | stored_record::Body::DeadLetter(_)
            | stored_record::Body::AuditEntry(_) => {}
        }
        let rec = StoredRecord {
            gateway_id: gateway_id.to_owned(),
            device_id: device_id.to_owned(),
            seq,
            body: Some(body),
            traceparent: String::new(),
        };
        rec.encode(buf).expect("a Vec grows as needed");
        received_us
    })
}

/// `StoredRecord { gateway_id, device_id, seq, body: Observation { seq, ..o }, traceparent }` encoded into
/// `buf` without cloning the observation (the writer thread did 15 clones of ~10 strings per
/// message). The observation's fields are written as they are with its `seq` field (field 2)
/// appended last: protobuf readers take fields in any order, so it decodes to exactly the same
/// `StoredRecord` as the canonical encoding (test `direct_observation_encoding_decodes_identically`).
fn encode_observation_record(
    gateway_id: &str,
    device_id: &str,
    seq: u64,
    o: &Observation,
    traceparent: &str,
    buf: &mut Vec<u8>,
) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    if o.seq != 0 {
        // Not the store's to overwrite in place: take the canonical way.
        let rec = StoredRecord {
            gateway_id: gateway_id.to_owned(),
            device_id: device_id.to_owned(),
            seq,
            body: Some(stored_record::Body::Observation(Observation {
                seq,
                ..o.clone()
            })),
            traceparent: traceparent.to_owned(),
        };
        rec.encode(buf).expect("a Vec grows as needed");
        return;
    }
    let put_str = |tag: u32, v: &str, buf: &mut Vec<u8>| {
        if !v.is_empty() {
            encode_key(tag, WireType::LengthDelimited, buf);
            encode_varint(v.len() as u64, buf);
            buf.extend_from_slice(v.as_bytes());
        }
    };
    put_str(1, gateway_id, buf);
    put_str(2, device_id, buf);
    if seq != 0 {
        prost::encoding::uint64::encode(3, &seq, buf);
    }
    let seq_len = if seq == 0 {
        0
    } else {
        1 + encoded_len_varint(seq)
    };
    encode_key(10, WireType::LengthDelimited, buf);
    encode_varint((o.encoded_len() + seq_len) as u64, buf);
    o.encode_raw(buf);
    if seq != 0 {
        prost::encoding::uint64::encode(2, &seq, buf);
    }
    put_str(4, traceparent, buf);
}

/// Most records one `records` row holds (a message with more readings takes several rows).
/// Bounded so every query by seq can start its key range at `seq - (ROW_MAX - 1)` and still
/// see the row that holds `seq`.
pub const ROW_MAX: usize = 64;

/// Appends `count` records to one device's stream under its next seqs, each encoded by
/// `encode(index, seq, buffer)` (which returns the record's receive time), as rows of at most
/// [`ROW_MAX`] consecutive records (see `schema.sql`); returns `(first, last)`. Runs inside the
/// caller's savepoint.
///
/// Why rows of several records: each row costs two b-tree inserts (the table and the outbox
/// index) and each commit writes every page it changed. One row per message instead of one per
/// reading took the writer from 11.9 to 8.2 µs per observation and from 3.6 to 2.6 KiB written
/// per observation (`cargo bench -p icu-tests --bench store_commit`).
fn insert_rows(
    tx: &rusqlite::Savepoint<'_>,
    stream: Stream,
    device_id: &str,
    bed: &str,
    dedup: Option<(&str, i64)>,
    count: usize,
    mut encode: impl FnMut(usize, u64, &mut Vec<u8>) -> i64,
) -> rusqlite::Result<(u64, u64)> {
    use prost::encoding::{encode_key, encode_varint, WireType};
    let kind = stream.code();
    let next: i64 = tx
        .prepare_cached("SELECT next_seq FROM devices WHERE device_id = ?1 AND kind = ?2")?
        .query_row(params![device_id, kind], |r| r.get(0))
        .optional()?
        .unwrap_or(1);
    let mut seq = next;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO records (device_id, seq, kind, n, bed, received_us, control_id, digest, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        // `run`: the row's records as an icu.v1.StoredRecordRun (field 1, length-delimited,
        // once per record); a row of one record is stored bare (`run[bare..]`). `one` holds the
        // record being placed; when it does not fit the row (ROW_MAX records, RUN_BYTES), it
        // starts the next row as it is.
        let mut run = Vec::with_capacity(if count > 1 { 8192 } else { 512 });
        let mut one = Vec::new();
        let mut frame = Vec::new();
        let (mut placed, mut one_received) = (true, 0i64);
        let mut i = 0;
        while i < count {
            run.clear();
            let (mut n, mut bare, mut received_us) = (0usize, 0usize, 0i64);
            while i + n < count && n < ROW_MAX {
                if placed {
                    one.clear();
                    one_received = encode(i + n, (seq + n as i64) as u64, &mut one);
                    placed = false;
                }
                if n > 0 && run.len() + RUN_PREFIX + one.len() > RUN_BYTES {
                    break;
                }
                if n == 0 {
                    received_us = one_received;
                }
                encode_key(1, WireType::LengthDelimited, &mut run);
                encode_varint(one.len() as u64, &mut run);
                if n == 0 {
                    bare = run.len();
                }
                run.extend_from_slice(&one);
                placed = true;
                n += 1;
            }
            let payload: &[u8] = if n == 1 {
                &run[bare..]
            } else {
                compress_run(&run, &mut frame)?;
                &frame
            };
            stmt.execute(params![
                device_id,
                seq,
                kind,
                n as i64,
                bed,
                received_us,
                dedup.map(|d| d.0),
                dedup.map(|d| d.1),
                payload
            ])?;
            seq += n as i64;
            i += n;
        }
    }
    tx.prepare_cached(
        "INSERT INTO devices (device_id, kind, next_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT(device_id, kind) DO UPDATE SET next_seq = excluded.next_seq",
    )?
    .execute(params![device_id, kind, seq])?;
    Ok((next as u64, (seq - 1) as u64))
}

/// Marks `ranges` sent on `conn` (inside the caller's transaction); consecutive ranges of one
/// device's stream are merged into one update. Returns how many records were unsent before.
pub(crate) fn mark_ranges(
    conn: &Connection,
    ranges: &[icu_outbox::SentRange],
) -> rusqlite::Result<usize> {
    let mut changed = 0;
    let mut i = 0;
    while i < ranges.len() {
        let r = &ranges[i];
        let mut last = r.last_seq;
        let mut j = i + 1;
        while let Some(next) = ranges.get(j) {
            if next.stream != r.stream
                || next.device_id != r.device_id
                || last.checked_add(1) != Some(next.first_seq)
            {
                break;
            }
            last = next.last_seq;
            j += 1;
        }
        changed += if r.stream == Stream::Audit {
            audit::mark(conn, r.first_seq, last)?
        } else {
            mark_range(conn, r.stream.code(), &r.device_id, r.first_seq, last)?
        };
        i = j;
    }
    Ok(changed)
}

/// Marks `[first, last]` of one stream sent; returns how many records were unsent before.
///
/// A row is changed only when the range starts at or before its first unsent record (so it
/// stays "sent up to" a seq, never sent with a hole), and reaches it: the whole row becomes
/// sent when the range covers its last record, else `sent_upto = last`. A range that starts
/// inside a row's unsent records (the bridge marks each device's bundles in seq order; it does
/// so only after a record it had to skip, see invariant 2 in `icu_outbox`)
/// leaves that row as it was: its records are forwarded again under the same keys rather than
/// marked sent without a delivery report.
fn mark_range(
    conn: &Connection,
    kind: i64,
    device_id: &str,
    first: u64,
    last: u64,
) -> rusqlite::Result<usize> {
    if first > last {
        return Ok(0);
    }
    const MARKABLE: &str = "kind = ?1 AND device_id = ?2 AND seq BETWEEN ?3 AND ?5 AND sent = 0 AND MAX(seq, sent_upto + 1) BETWEEN ?4 AND ?5";
    let args = params![
        kind,
        device_id,
        first.saturating_sub(ROW_MAX as u64 - 1) as i64,
        first as i64,
        last as i64
    ];
    let unsent: i64 = conn
        .prepare_cached(&format!(
            "SELECT COALESCE(SUM(MIN(seq + n - 1, ?5) - MAX(seq, sent_upto + 1) + 1), 0) FROM records WHERE {MARKABLE}"
        ))?
        .query_row(args, |r| r.get(0))?;
    if unsent > 0 {
        conn.prepare_cached(&format!(
            "UPDATE records SET sent = (seq + n - 1 <= ?5), sent_upto = CASE WHEN seq + n - 1 <= ?5 THEN sent_upto ELSE ?5 END WHERE {MARKABLE}"
        ))?
        .execute(args)?;
    }
    Ok(unsent.max(0) as usize)
}

/// Opens store files written before rows held several records: adds `n` (1) and `sent_upto`
/// (0), which is what each of their rows is, and `control_id` and `digest` (NULL: their
/// retries are found in the `messages` table they kept). Idempotent; under the write lock, so the writer's
/// and the reader's connection opening at once do it once.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    const ADDED: [(&str, &str); 4] = [
        ("n", "INTEGER NOT NULL DEFAULT 1"),
        ("sent_upto", "INTEGER NOT NULL DEFAULT 0"),
        ("control_id", "TEXT"),
        ("digest", "INTEGER"),
    ];
    let missing = |conn: &Connection| -> rusqlite::Result<Vec<(&str, &str)>> {
        let mut stmt =
            conn.prepare("SELECT 1 FROM pragma_table_info('records') WHERE name = ?1")?;
        let mut out = Vec::new();
        for (name, decl) in ADDED {
            if !stmt.exists([name])? {
                out.push((name, decl));
            }
        }
        Ok(out)
    };
    if missing(conn)?.is_empty() {
        return Ok(());
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let columns = missing(&tx)?;
    for (name, decl) in &columns {
        tx.execute_batch(&format!("ALTER TABLE records ADD COLUMN {name} {decl}"))?;
    }
    if !columns.is_empty() {
        tracing::info!(
            columns = ?columns.iter().map(|c| c.0).collect::<Vec<_>>(),
            "store: records table upgraded (rows of several records, retries recognised from the rows)"
        );
    }
    tx.commit()
}

/// A run row as the writer stores it starts with the zstd frame magic (RFC 8878); an
/// uncompressed run starts with 0x0A (field 1, length-delimited) and is read as well.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// zstd level of run rows: 1, the fastest of the standard levels.
const ZSTD_LEVEL: i32 = 1;
/// Most bytes of records the writer puts in one run row (a longer message takes more rows; one
/// record longer than this is a row of its own, stored bare).
const RUN_BYTES: usize = 4 << 20;
/// Most bytes in front of each record of a run: its field key (1) and length (a varint, at most
/// 10).
const RUN_PREFIX: usize = 11;
/// Most bytes a run row may decompress to: what the writer stores with room to spare, so a
/// corrupt frame header cannot make the reader allocate more.
const RUN_MAX_BYTES: u64 = 4 * RUN_BYTES as u64;

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// `run` (an encoded `StoredRecordRun`) as one zstd frame, its size in the frame header.
///
/// Why: the readings of one message repeat the same ids, units and codes; compressed, a run of
/// 15 is about a quarter of its size and fits in its b-tree cell, where uncompressed it took an
/// overflow page of its own. The store keeps about four times as many readings in the same
/// disk budget, and each commit writes fewer pages.
fn compress_run(run: &[u8], out: &mut Vec<u8>) -> rusqlite::Result<()> {
    let failed = |e: std::io::Error| {
        rusqlite::Error::ToSqlConversionFailure(format!("zstd compression: {e}").into())
    };
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        let compressor = match c.as_mut() {
            Some(z) => z,
            None => c.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(failed)?),
        };
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(run.len()));
        compressor.compress_to_buffer(run, out).map_err(failed)?;
        Ok(())
    })
}

fn decompress_run(frame: &[u8]) -> Result<Vec<u8>, String> {
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|e| format!("not a zstd frame: {e:?}"))?
        .ok_or("the zstd frame does not say its size")?;
    if size > RUN_MAX_BYTES {
        return Err(format!(
            "the zstd frame says {size} bytes, more than a run holds"
        ));
    }
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        let decompressor = match d.as_mut() {
            Some(z) => z,
            None => d.insert(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?),
        };
        decompressor
            .decompress(frame, size as usize)
            .map_err(|e| format!("zstd: {e}"))
    })
}

/// The encoded `StoredRecord`s of one row: its payload when it holds one, else those of its
/// `StoredRecordRun` (zstd-compressed or not), which must be exactly `n`.
pub fn row_records(n: usize, payload: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if n <= 1 {
        return Ok(vec![payload.to_vec()]);
    }
    if n > ROW_MAX {
        return Err(format!(
            "the row says it holds {n} records, more than {ROW_MAX}"
        ));
    }
    use prost::encoding::{decode_key, decode_varint, WireType};
    let decompressed;
    let mut rest = if payload.starts_with(&ZSTD_MAGIC) {
        decompressed = decompress_run(payload)?;
        decompressed.as_slice()
    } else {
        payload
    };
    let mut out = Vec::with_capacity(n);
    while !rest.is_empty() {
        let (tag, wire) = decode_key(&mut rest).map_err(|e| e.to_string())?;
        if tag != 1 || wire != WireType::LengthDelimited {
            return Err(format!("unexpected field {tag} ({wire:?}) in a record run"));
        }
        let len = decode_varint(&mut rest).map_err(|e| e.to_string())? as usize;
        if len > rest.len() {
            return Err(format!(
                "record {} of the run is cut short ({len} bytes announced, {} left)",
                out.len() + 1,
                rest.len()
            ));
        }
        let (record, tail) = rest.split_at(len);
        out.push(record.to_vec());
        rest = tail;
    }
    if out.len() != n {
        return Err(format!(
            "the run holds {} records, the row says {n}",
            out.len()
        ));
    }
    Ok(out)
}

fn insert_dead_letter(
    tx: &rusqlite::Savepoint<'_>,
    d: &DeadLetter,
) -> rusqlite::Result<WriteOutcome> {
    tx.execute(
        "INSERT INTO dead_letters (received_us, transport, peer, device_id, stream_offset, ack_code, error_code, location, reason, raw, raw_len)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            d.received_us,
            d.transport,
            d.peer,
            d.device_id,
            d.stream_offset as i64,
            d.ack_code,
            d.error_code,
            d.location,
            d.reason,
            d.raw,
            d.raw_len as i64
        ],
    )?;
    Ok(WriteOutcome::DeadLettered {
        id: tx.last_insert_rowid(),
    })
}

mod audit;
mod deadletters;
mod dedup;
mod history;
mod prune;
mod reader;
mod trend_query;
mod trends;
mod types;
pub mod waveforms;

pub use deadletters::{DeadLetterQuery, DeadLetterRow, MAX_DEAD_LETTERS};
use dedup::Dedup;
pub use dedup::DEDUP_WINDOW;
pub use history::MAX_ALARM_HISTORY;
use prune::*;
pub use reader::*;
pub use trend_query::*;
pub use trends::{trusted_time_us, usable_value, TrendRollup};
pub use types::*;
use waveforms::NotStored;
pub use waveforms::WaveformPacking;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod trends_tests;
#[cfg(test)]
mod waveform_tests;
