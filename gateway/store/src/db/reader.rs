//! The read side of the store: counts for the status API and `/metrics`, and the outbox reader
//! the bridge fetches unsent records through ([`ReaderDb`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use icu_outbox::{
    fetch_in_drain_order_after, FetchRequest, FetchSource, Fetched, Head, InFlightRuns, SentRange,
    Stream, AUDIT_DEVICE,
};
use rusqlite::{params, Connection, OptionalExtension};

use super::prune::{head, UNSENT_HEAD, UNSENT_IN_ROW};
use super::waveforms::unpack_payload;
use super::{
    audit, mark_ranges, migrate, open_connection, pages_in_use_bytes, row_records, sqlite_err,
    StoreError, ROW_MAX, SCHEMA, VIEWS,
};

/// Counts shown on the status API.
///
/// `records` and `unsent` are computed from each `(stream, device)`'s `next_seq` (the `devices`
/// table), its lowest stored seq (primary key) and its lowest unsent seq (the outbox index):
/// O(streams × log n), never a visit of every row (a `COUNT(*)` took 1.6 to 3.6 s on a
/// 10-million-record backlog). They are exact while the outbox invariants hold: stored seqs of a
/// stream are gapless up to `next_seq` and *sent is a prefix* (see `icu_outbox`),
/// so `unsent = next_seq - lowest unsent seq` and `records = next_seq - lowest stored seq`.
/// The one documented exception, a record whose body does not belong to its stream left unsent
/// at a head while later ones are sent (and perhaps pruned), makes both an upper bound.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreCounts {
    pub records: u64,
    pub unsent: u64,
    pub dead_letters: u64,
    pub oldest_unsent_us: Option<i64>,
    pub per_device_next_seq: HashMap<String, u64>,
}

/// One `(stream, device)` as [`ReaderDb::counts`] sees it.
struct Extent {
    stream: Stream,
    device_id: String,
    next_seq: u64,
    /// Lowest seq still stored (sent or not).
    first_stored: Option<u64>,
    /// Lowest unsent seq and its receive time.
    head: Option<(u64, i64)>,
}

impl Extent {
    fn records(&self) -> u64 {
        self.first_stored
            .map_or(0, |first| self.next_seq.saturating_sub(first))
    }

    fn unsent(&self) -> u64 {
        self.head
            .map_or(0, |(seq, _)| self.next_seq.saturating_sub(seq))
    }
}

/// One unsent record as the outbox reads it.
#[derive(Debug, Clone)]
pub struct UnsentRow {
    pub stream: Stream,
    pub device_id: String,
    pub seq: u64,
    pub bed: String,
    /// Encoded `icu.v1.StoredRecord`.
    pub payload: Vec<u8>,
}

/// The outbox's two reads over SQLite, for [`fetch_in_drain_order`]. Both are index seeks: the
/// `(stream, device)` pairs come from the small `devices` table, each head from the partial
/// index `records_unsent`, so a fetch costs O(devices · log n + returned rows) however large the
/// backlog (no scan of the unsent index).
struct SqlSource<'a> {
    conn: &'a Connection,
}

impl FetchSource for SqlSource<'_> {
    type Row = UnsentRow;
    type Error = rusqlite::Error;

    fn heads(&mut self) -> Result<Vec<Head>, rusqlite::Error> {
        let pairs: Vec<(i64, String)> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT kind, device_id FROM devices")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut stmt = self.conn.prepare_cached(UNSENT_HEAD)?;
        let mut heads = Vec::new();
        if let Some((seq, received_us)) = audit::head(self.conn)? {
            heads.push(Head {
                stream: Stream::Audit,
                device_id: AUDIT_DEVICE.to_owned(),
                seq,
                received_us,
            });
        }
        for (kind, device_id) in pairs {
            let Some(stream) = Stream::from_code(kind) else {
                continue;
            };
            let head = stmt
                .query_row(params![kind, device_id], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                })
                .optional()?;
            if let Some((seq, received_us)) = head {
                heads.push(Head {
                    stream,
                    device_id,
                    seq: seq as u64,
                    received_us,
                });
            }
        }
        Ok(heads)
    }

    fn read(
        &mut self,
        stream: Stream,
        device_id: &str,
        from_seq: u64,
        n: usize,
    ) -> Result<Vec<UnsentRow>, rusqlite::Error> {
        if stream == Stream::Audit {
            return Ok(audit::read(self.conn, from_seq, n)?
                .into_iter()
                .map(|(seq, payload)| UnsentRow {
                    stream,
                    device_id: AUDIT_DEVICE.to_owned(),
                    seq,
                    bed: String::new(),
                    payload,
                })
                .collect());
        }
        // Rows whose records reach `from_seq`: the one holding it starts at most ROW_MAX - 1
        // before it. Each such unsent row gives at least one record, so `n` rows are enough.
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, n, sent_upto, bed, payload FROM records WHERE kind = ?1 AND device_id = ?2 AND seq >= ?3 AND seq + n > ?4 AND sent = 0 ORDER BY seq LIMIT ?5",
        )?;
        let mut rows = stmt.query(params![
            stream.code(),
            device_id,
            from_seq.saturating_sub(ROW_MAX as u64 - 1) as i64,
            from_seq as i64,
            n as i64
        ])?;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let Some(row) = rows.next()? else {
                break;
            };
            let seq = row.get::<_, i64>(0)?.max(0) as u64;
            let count = row.get::<_, i64>(1)?.max(1) as usize;
            let sent_upto = row.get::<_, i64>(2)?.max(0) as u64;
            let bed: String = row.get(3)?;
            let payload = row.get_ref(4)?.as_blob()?;
            let records = row_records(count, payload).unwrap_or_else(|why| {
                // A damaged row must not stop the outbox (alarms, every other device): its
                // records come out without a body, which the bridge leaves in the outbox,
                // counts and logs as skipped, and forwards what follows.
                warn_damaged_row(stream, device_id, seq, count, &why);
                vec![Vec::new(); count.min(ROW_MAX)]
            });
            let first = from_seq.max(sent_upto + 1);
            // Waveform segments and alarm snippets are stored packed: handed on unpacked.
            let packed = matches!(stream, Stream::Waveforms | Stream::Alarms);
            for (i, record) in records.into_iter().enumerate() {
                let s = seq + i as u64;
                if s < first {
                    continue;
                }
                if out.len() == n {
                    break;
                }
                let record = if packed && !record.is_empty() {
                    unpack_payload(record).unwrap_or_else(|why| {
                        // As a damaged row: skipped by the bridge, never a stop.
                        warn_damaged_row(stream, device_id, s, 1, &why);
                        Vec::new()
                    })
                } else {
                    record
                };
                out.push(UnsentRow {
                    stream,
                    device_id: device_id.to_owned(),
                    seq: s,
                    bed: bed.clone(),
                    payload: record,
                });
            }
        }
        Ok(out)
    }

    fn seq_of(row: &UnsentRow) -> u64 {
        row.seq
    }

    fn key_of(row: &UnsentRow) -> (Stream, &str, u64) {
        (row.stream, &row.device_id, row.seq)
    }
}

/// Logs a row that does not decode (at most once a minute: the bridge reads it every cycle).
fn warn_damaged_row(stream: Stream, device_id: &str, seq: u64, n: usize, why: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    // Wall-clock seconds since the Unix epoch (0 before it); only paces this log line.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 60
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::error!(stream = stream.as_str(), device = %device_id, first_seq = seq, records = n,
            reason = %why,
            "store: a records row does not decode; its records stay in the outbox as skipped (no body)");
    }
}

/// Read-mostly connection used by the bridge (outbox) and the API.
pub struct ReaderDb {
    pub(super) conn: Connection,
    path: PathBuf,
}

impl ReaderDb {
    pub fn open(path: &Path, synchronous_full: bool) -> Result<Self, StoreError> {
        let conn = open_connection(path, synchronous_full)?;
        conn.execute_batch(SCHEMA)
            .and_then(|()| migrate(&conn))
            .and_then(|()| conn.execute_batch(VIEWS))
            .map_err(|e| sqlite_err(path, e))?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    pub(super) fn err(&self, e: rusqlite::Error) -> StoreError {
        sqlite_err(&self.path, e)
    }

    /// One fetch in the outbox's drain order (alarms, ADT, live observations, backlog
    /// observations up to `backlog_budget`, dead letters; see `icu_outbox`), from
    /// one read snapshot.
    pub fn fetch(&self, request: &FetchRequest) -> Result<Fetched<UnsentRow>, StoreError> {
        self.fetch_after(request, &InFlightRuns::new())
    }

    /// [`ReaderDb::fetch`] starting each device of `in_flight` after its in-flight records
    /// (see `Outbox::fetch_unsent_after`).
    pub fn fetch_after(
        &self,
        request: &FetchRequest,
        in_flight: &InFlightRuns,
    ) -> Result<Fetched<UnsentRow>, StoreError> {
        // One deferred (read) transaction: every head and run comes from the same snapshot.
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let fetched = fetch_in_drain_order_after(&mut SqlSource { conn: &tx }, request, in_flight)
            .map_err(|e| self.err(e))?;
        tx.finish().map_err(|e| self.err(e))?;
        Ok(fetched)
    }

    /// Oldest unsent records up to `limit`, every device counted as live (`FetchRequest::all`).
    pub fn fetch_unsent(&self, limit: usize) -> Result<Vec<UnsentRow>, StoreError> {
        Ok(self.fetch(&FetchRequest::all(limit))?.records)
    }

    /// Marks `[first, last]` of one device's stream sent; returns how many were unsent before.
    /// Idempotent: sent records are left alone.
    pub fn mark_sent(
        &self,
        stream: Stream,
        device_id: &str,
        first: u64,
        last: u64,
    ) -> Result<usize, StoreError> {
        self.mark_sent_many(&[SentRange {
            stream,
            device_id: device_id.to_owned(),
            first_seq: first,
            last_seq: last,
        }])
    }

    /// Marks every range sent in one transaction (one commit: all or nothing); returns how many
    /// records were unsent before. Consecutive ranges of one device's stream are merged into one
    /// update. Idempotent.
    pub fn mark_sent_many(&self, ranges: &[SentRange]) -> Result<usize, StoreError> {
        // IMMEDIATE: each range is read before it is updated; a deferred transaction whose
        // snapshot the writer's next commit made stale would fail its first update at once
        // (SQLITE_BUSY_SNAPSHOT, which the busy timeout does not cover).
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(|e| self.err(e))?;
        let changed = mark_ranges(&tx, ranges).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(changed)
    }

    /// Every `(stream, device)` with its `next_seq`, lowest stored seq and head (lowest unsent
    /// seq and its receive time), from one read snapshot: index seeks only.
    fn extents(&self) -> Result<Vec<Extent>, StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let out = (|| -> rusqlite::Result<Vec<Extent>> {
            let streams: Vec<(i64, String, i64)> = {
                let mut stmt =
                    tx.prepare_cached("SELECT kind, device_id, next_seq FROM devices")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut unsent_head = tx.prepare_cached(UNSENT_HEAD)?;
            let mut out = Vec::with_capacity(streams.len());
            for (kind, device_id, next_seq) in streams {
                let Some(stream) = Stream::from_code(kind) else {
                    continue;
                };
                let first_stored = head(&tx, kind, &device_id)?.map(|(seq, _)| seq as u64);
                let lowest_unsent = unsent_head
                    .query_row(params![kind, device_id], |r| {
                        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)?))
                    })
                    .optional()?;
                out.push(Extent {
                    stream,
                    device_id,
                    next_seq: next_seq.max(0) as u64,
                    first_stored,
                    head: lowest_unsent,
                });
            }
            Ok(out)
        })()
        .map_err(|e| self.err(e))?;
        tx.finish().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// The status figures (see [`StoreCounts`]: `records` and `unsent` from index seeks).
    pub fn counts(&self) -> Result<StoreCounts, StoreError> {
        let extents = self.extents()?;
        // The oldest unsent record is some stream's head (a device's receive times grow with
        // its seqs, barring a clock step).
        let oldest = extents
            .iter()
            .filter_map(|e| e.head.map(|(_, received)| received))
            .min();
        let per_device = extents
            .iter()
            .filter(|e| e.stream == Stream::Observations)
            .map(|e| (e.device_id.clone(), e.next_seq))
            .collect();
        let dead_letters = self
            .conn
            .query_row("SELECT COUNT(*) FROM dead_letters", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(|e| self.err(e))?;
        Ok(StoreCounts {
            records: extents.iter().map(Extent::records).sum(),
            unsent: extents.iter().map(Extent::unsent).sum(),
            dead_letters: dead_letters.max(0) as u64,
            oldest_unsent_us: oldest,
            per_device_next_seq: per_device,
        })
    }

    /// Unsent records per stream (outbox depth, for `/metrics`), from index seeks as
    /// [`StoreCounts::unsent`]. Read only.
    pub fn unsent_by_stream(&self) -> Result<Vec<(Stream, u64)>, StoreError> {
        let mut by_stream: std::collections::BTreeMap<Stream, u64> = Default::default();
        for e in self.extents()? {
            if e.head.is_some() {
                *by_stream.entry(e.stream).or_default() += e.unsent();
            }
        }
        // The audit trail's seqs are gapless too (barring tampering, which makes this an upper
        // bound): unforwarded = last seq - head + 1.
        if let Some((_, last, Some(head))) = audit::extent(&self.conn).map_err(|e| self.err(e))? {
            by_stream.insert(Stream::Audit, last.saturating_sub(head) + 1);
        }
        Ok(by_stream.into_iter().collect())
    }

    /// All records and unsent ones, summed over every row: exact whatever happened, but a visit of
    /// every row (seconds on a big backlog); for tests and tools, never on a serving path.
    pub fn exact_counts(&self) -> Result<(u64, u64), StoreError> {
        let q = |sql: &str| -> Result<u64, StoreError> {
            self.conn
                .query_row(sql, [], |r| r.get::<_, i64>(0))
                .map(|v| v.max(0) as u64)
                .map_err(|e| self.err(e))
        };
        Ok((
            q("SELECT COALESCE(SUM(n), 0) FROM records")?,
            q(&format!(
                "SELECT COALESCE(SUM({UNSENT_IN_ROW}), 0) FROM records"
            ))?,
        ))
    }

    /// Bytes of the database pages in use (page count less free pages, times the page size),
    /// as of the latest commit. Read only; also answers whether the store can be read.
    pub fn data_bytes(&self) -> Result<u64, StoreError> {
        pages_in_use_bytes(&self.conn).map_err(|e| self.err(e))
    }
}
