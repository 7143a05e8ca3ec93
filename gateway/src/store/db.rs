//! The synchronous SQLite core of the store (no actors, no runtime: tested directly).
//!
//! Guarantees:
//! - a write request is applied whole or not at all (one savepoint per request inside the
//!   batch transaction), and nothing is reported stored before the batch's `COMMIT` returned;
//! - `seq` is assigned per device inside the same transaction, so committed seqs are gapless
//!   and strictly increasing, and a failed commit consumes none;
//! - a retried HL7 message (same device, control id and bytes) is recognised and not stored twice;
//! - the disk budget is checked before every batch; over budget, the whole batch is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use icu_cloud_bridge::outbox::{
    fetch_in_drain_order, FetchRequest, FetchSource, Fetched, Head, Stream,
};
use icu_protos::v1::{stored_record, Alarm, Observation, StoredRecord};
use icu_protos::Message;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

const SCHEMA: &str = include_str!("schema.sql");

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
}

/// Readings from one device to store as one unit.
#[derive(Debug, Clone)]
pub struct ObservationBatch {
    pub device_id: String,
    pub bed: String,
    /// `(MSH-10, digest of the message bytes)`: recognises a sender's retry.
    pub dedup: Option<(String, i64)>,
    pub observations: Vec<Observation>,
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

#[derive(Debug, Clone)]
pub enum WriteRequest {
    Observations(ObservationBatch),
    Alarm(AlarmWrite),
    /// An ADT event as applied to the census (for `icu.adt`), under the source id `adt`.
    Adt(icu_protos::v1::AdtEvent),
    DeadLetter(DeadLetter),
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
}

/// Writer connection: the only one that inserts.
pub struct StoreDb {
    conn: Connection,
    path: PathBuf,
    gateway_id: String,
    budget_bytes: u64,
}

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
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON;"
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
    pub fn open(
        path: &Path,
        gateway_id: &str,
        synchronous_full: bool,
        budget_bytes: u64,
    ) -> Result<Self, StoreError> {
        let conn = open_connection(path, synchronous_full)?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| sqlite_err(path, e))?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            gateway_id: gateway_id.to_owned(),
            budget_bytes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the store occupies on disk (database plus write-ahead log).
    pub fn disk_usage(&self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        size(&self.path) + size(Path::new(&wal))
    }

    /// Applies a batch in one transaction; returns one result per request, in order.
    pub fn commit_batch(
        &mut self,
        requests: &[WriteRequest],
    ) -> Vec<Result<WriteOutcome, StoreError>> {
        let used = self.disk_usage();
        if used >= self.budget_bytes {
            let e = StoreError::BudgetExceeded {
                used_mib: used >> 20,
                budget_mib: self.budget_bytes >> 20,
            };
            return requests.iter().map(|_| Err(e.clone())).collect();
        }
        let path = self.path.clone();
        let gateway_id = self.gateway_id.clone();
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
        let mut results = Vec::with_capacity(requests.len());
        for req in requests {
            let outcome = (|| {
                let sp = tx.savepoint()?;
                let out = match req {
                    WriteRequest::Observations(b) => insert_observations(&sp, &gateway_id, b)?,
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
                Ok::<_, rusqlite::Error>(out)
            })();
            results.push(outcome.map_err(|e| sqlite_err(&path, e)));
        }
        match tx.commit() {
            Ok(()) => results,
            Err(e) => fail_all(e),
        }
    }
}

fn insert_observations(
    tx: &rusqlite::Savepoint<'_>,
    gateway_id: &str,
    b: &ObservationBatch,
) -> rusqlite::Result<WriteOutcome> {
    if let Some((control_id, digest)) = &b.dedup {
        let prior: Option<(i64, i64, i64)> = tx
            .query_row(
                "SELECT digest, first_seq, last_seq FROM messages WHERE device_id = ?1 AND control_id = ?2",
                params![b.device_id, control_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((d, first, last)) = prior {
            if d == *digest {
                return Ok(WriteOutcome::Duplicate {
                    first_seq: first as u64,
                    last_seq: last as u64,
                });
            }
        }
    }
    let bodies = b
        .observations
        .iter()
        .map(|o| {
            (
                o.receive_time_us,
                stored_record::Body::Observation(o.clone()),
            )
        })
        .collect();
    let (first, last) = insert_records(
        tx,
        gateway_id,
        Stream::Observations,
        &b.device_id,
        &b.bed,
        bodies,
    )?;
    let (next, seq) = (first as i64, last as i64 + 1);
    if let Some((control_id, digest)) = &b.dedup {
        let received = b
            .observations
            .first()
            .map(|o| o.receive_time_us)
            .unwrap_or(0);
        tx.execute(
            "INSERT OR REPLACE INTO messages (device_id, control_id, digest, first_seq, last_seq, received_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![b.device_id, control_id, digest, next, seq - 1, received],
        )?;
    }
    Ok(WriteOutcome::Stored {
        first_seq: next as u64,
        last_seq: (seq - 1) as u64,
    })
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
    let kind = stream.code();
    let next: i64 = tx
        .query_row(
            "SELECT next_seq FROM devices WHERE device_id = ?1 AND kind = ?2",
            params![device_id, kind],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(1);
    let mut seq = next;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO records (device_id, seq, kind, bed, received_us, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (received_us, mut body) in bodies {
            match &mut body {
                stored_record::Body::Observation(o) => o.seq = seq as u64,
                stored_record::Body::Alarm(a) => a.seq = seq as u64,
                stored_record::Body::AdtEvent(_)
                | stored_record::Body::DeviceStatus(_)
                | stored_record::Body::DeadLetter(_) => {}
            }
            let rec = StoredRecord {
                gateway_id: gateway_id.to_owned(),
                device_id: device_id.to_owned(),
                seq: seq as u64,
                body: Some(body),
            };
            stmt.execute(params![
                device_id,
                seq,
                kind,
                bed,
                received_us,
                rec.encode_to_vec()
            ])?;
            seq += 1;
        }
    }
    tx.execute(
        "INSERT INTO devices (device_id, kind, next_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT(device_id, kind) DO UPDATE SET next_seq = excluded.next_seq",
        params![device_id, kind, seq],
    )?;
    Ok((next as u64, (seq - 1) as u64))
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

/// Counts shown on the status API.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreCounts {
    pub records: u64,
    pub unsent: u64,
    pub dead_letters: u64,
    pub oldest_unsent_us: Option<i64>,
    pub per_device_next_seq: HashMap<String, u64>,
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
        let mut stmt = self.conn.prepare_cached(
            // INDEXED BY: without statistics the planner walks the primary key from seq 1,
            // through every forwarded record not yet pruned (37 ms per head behind 400k of
            // them, against 4 µs through the partial index).
            "SELECT seq, received_us FROM records INDEXED BY records_unsent WHERE kind = ?1 AND device_id = ?2 AND sent = 0 ORDER BY seq LIMIT 1",
        )?;
        let mut heads = Vec::new();
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
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, bed, payload FROM records WHERE kind = ?1 AND device_id = ?2 AND seq >= ?3 AND sent = 0 ORDER BY seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![stream.code(), device_id, from_seq as i64, n as i64],
            |r| {
                Ok(UnsentRow {
                    stream,
                    device_id: device_id.to_owned(),
                    seq: r.get::<_, i64>(0)? as u64,
                    bed: r.get(1)?,
                    payload: r.get(2)?,
                })
            },
        )?;
        rows.collect()
    }

    fn seq_of(row: &UnsentRow) -> u64 {
        row.seq
    }

    fn key_of(row: &UnsentRow) -> (Stream, &str, u64) {
        (row.stream, &row.device_id, row.seq)
    }
}

/// Read-mostly connection used by the bridge (outbox) and the API.
pub struct ReaderDb {
    conn: Connection,
    path: PathBuf,
}

impl ReaderDb {
    pub fn open(path: &Path, synchronous_full: bool) -> Result<Self, StoreError> {
        let conn = open_connection(path, synchronous_full)?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| sqlite_err(path, e))?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        sqlite_err(&self.path, e)
    }

    /// One fetch in the outbox's drain order (alarms, ADT, live observations, backlog
    /// observations up to `backlog_budget`, dead letters; see `icu_cloud_bridge::outbox`), from
    /// one read snapshot.
    pub fn fetch(&self, request: &FetchRequest) -> Result<Fetched<UnsentRow>, StoreError> {
        // One deferred (read) transaction: every head and run comes from the same snapshot.
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let fetched =
            fetch_in_drain_order(&mut SqlSource { conn: &tx }, request).map_err(|e| self.err(e))?;
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
        self.conn
            .execute(
                "UPDATE records SET sent = 1 WHERE kind = ?1 AND device_id = ?2 AND seq BETWEEN ?3 AND ?4 AND sent = 0",
                params![stream.code(), device_id, first as i64, last as i64],
            )
            .map_err(|e| self.err(e))
    }

    pub fn counts(&self) -> Result<StoreCounts, StoreError> {
        let q = |sql: &str| -> Result<i64, StoreError> {
            self.conn
                .query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
                .map(|v| v.unwrap_or(0))
                .map_err(|e| self.err(e))
        };
        // The oldest unsent record is some device's head (a device's receive times grow with
        // its seqs, barring a clock step): O(devices) index seeks, not a visit of every unsent
        // row (a backlog can hold millions).
        let oldest: Option<i64> = SqlSource { conn: &self.conn }
            .heads()
            .map_err(|e| self.err(e))?
            .iter()
            .map(|h| h.received_us)
            .min();
        let mut per_device = HashMap::new();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device_id, next_seq FROM devices WHERE kind = 1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (d, n) = row.map_err(|e| self.err(e))?;
            per_device.insert(d, n as u64);
        }
        Ok(StoreCounts {
            records: q("SELECT COUNT(*) FROM records")? as u64,
            unsent: q("SELECT COUNT(*) FROM records WHERE sent = 0")? as u64,
            dead_letters: q("SELECT COUNT(*) FROM dead_letters")? as u64,
            oldest_unsent_us: oldest,
            per_device_next_seq: per_device,
        })
    }

    /// Unsent records per stream (outbox depth, for `/metrics`). Read only.
    pub fn unsent_by_stream(&self) -> Result<Vec<(Stream, u64)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT kind, COUNT(*) FROM records WHERE sent = 0 GROUP BY kind")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (kind, n) = row.map_err(|e| self.err(e))?;
            if let Some(stream) = Stream::from_code(kind) {
                out.push((stream, n as u64));
            }
        }
        Ok(out)
    }

    /// Bytes of the database pages in use (page count less free pages, times the page size),
    /// as of the latest commit. Read only; also answers whether the store can be read.
    pub fn data_bytes(&self) -> Result<u64, StoreError> {
        let pragma = |name: &str| -> Result<i64, StoreError> {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .map_err(|e| self.err(e))
        };
        let pages = pragma("page_count")? - pragma("freelist_count")?;
        Ok((pages.max(0) as u64) * pragma("page_size")? as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(v: f64) -> Observation {
        Observation {
            mdc_code: 150456,
            value: Some(v),
            unit_ucum: "%".into(),
            receive_time_us: 1_700_000_000_000_000,
            ..Default::default()
        }
    }

    fn batch(device: &str, control: Option<&str>, n: usize) -> WriteRequest {
        WriteRequest::Observations(ObservationBatch {
            device_id: device.into(),
            bed: "bed-1".into(),
            dedup: control.map(|c| (c.to_string(), digest(c.as_bytes()))),
            observations: (0..n).map(|i| obs(90.0 + i as f64)).collect(),
        })
    }

    fn open(dir: &Path) -> (StoreDb, ReaderDb) {
        let p = dir.join("s.db");
        (
            StoreDb::open(&p, "gw", true, 1 << 30).unwrap(),
            ReaderDb::open(&p, true).unwrap(),
        )
    }

    #[test]
    fn seqs_are_gapless_per_device_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut db, _) = open(dir.path());
        let r = db.commit_batch(&[
            batch("a", Some("m1"), 3),
            batch("b", Some("m1"), 2),
            batch("a", Some("m2"), 2),
        ]);
        assert_eq!(
            r[0].as_ref().unwrap(),
            &WriteOutcome::Stored {
                first_seq: 1,
                last_seq: 3
            }
        );
        assert_eq!(
            r[1].as_ref().unwrap(),
            &WriteOutcome::Stored {
                first_seq: 1,
                last_seq: 2
            }
        );
        assert_eq!(
            r[2].as_ref().unwrap(),
            &WriteOutcome::Stored {
                first_seq: 4,
                last_seq: 5
            }
        );
        drop(db);
        let (mut db, reader) = open(dir.path());
        let r = db.commit_batch(&[batch("a", Some("m3"), 1)]);
        assert_eq!(
            r[0].as_ref().unwrap(),
            &WriteOutcome::Stored {
                first_seq: 6,
                last_seq: 6
            }
        );
        let unsent = reader.fetch_unsent(100).unwrap();
        let a: Vec<u64> = unsent
            .iter()
            .filter(|r| r.device_id == "a")
            .map(|r| r.seq)
            .collect();
        assert_eq!(a, vec![1, 2, 3, 4, 5, 6]);
        let rec = StoredRecord::decode(unsent[0].payload.as_slice()).unwrap();
        assert_eq!(rec.seq, 1);
        assert_eq!(rec.gateway_id, "gw");
    }

    #[test]
    fn a_retried_message_is_not_stored_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (mut db, reader) = open(dir.path());
        db.commit_batch(&[batch("a", Some("m1"), 3)]);
        let r = db.commit_batch(&[batch("a", Some("m1"), 3)]);
        assert_eq!(
            r[0].as_ref().unwrap(),
            &WriteOutcome::Duplicate {
                first_seq: 1,
                last_seq: 3
            }
        );
        assert_eq!(reader.counts().unwrap().records, 3);
    }

    #[test]
    fn a_failing_request_stores_nothing_and_consumes_no_seq() {
        let dir = tempfile::tempdir().unwrap();
        let (mut db, reader) = open(dir.path());
        db.commit_batch(&[batch("a", None, 2)]);
        // A real SQLite failure inside the real file: refuse the 4th row of device a.
        reader
            .conn
            .execute_batch(
                "CREATE TRIGGER fail BEFORE INSERT ON records WHEN NEW.seq = 4 AND NEW.device_id = 'a'
                 BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END;",
            )
            .unwrap();
        let r = db.commit_batch(&[batch("a", Some("m2"), 3), batch("b", None, 1)]);
        assert!(matches!(r[0], Err(StoreError::Sqlite { .. })), "{r:?}");
        assert_eq!(
            r[1].as_ref().unwrap(),
            &WriteOutcome::Stored {
                first_seq: 1,
                last_seq: 1
            }
        );
        let c = reader.counts().unwrap();
        assert_eq!(
            c.records, 3,
            "device a keeps only its first 2 rows, b has 1"
        );
        assert_eq!(c.per_device_next_seq["a"], 3);
        reader.conn.execute_batch("DROP TRIGGER fail").unwrap();
        let r = db.commit_batch(&[batch("a", Some("m2"), 3)]);
        assert_eq!(
            r[0].as_ref().unwrap(),
            &WriteOutcome::Stored {
                first_seq: 3,
                last_seq: 5
            }
        );
    }

    #[test]
    fn over_budget_refuses_the_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        let mut db = StoreDb::open(&p, "gw", true, 1).unwrap();
        let r = db.commit_batch(&[batch("a", None, 1)]);
        assert!(matches!(r[0], Err(StoreError::BudgetExceeded { .. })));
        let reader = ReaderDb::open(&p, true).unwrap();
        assert_eq!(reader.counts().unwrap().records, 0);
    }

    #[test]
    fn mark_sent_removes_from_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let (mut db, reader) = open(dir.path());
        db.commit_batch(&[batch("a", None, 5)]);
        assert_eq!(
            reader.mark_sent(Stream::Observations, "a", 1, 3).unwrap(),
            3
        );
        let seqs: Vec<u64> = reader
            .fetch_unsent(10)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![4, 5]);
        assert_eq!(reader.counts().unwrap().unsent, 2);
    }
}
