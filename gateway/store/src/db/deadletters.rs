//! Reading the dead letters back for the device console: newest first, filtered by device and
//! receive time, bounded and paged by id, on a reader connection (WAL: never blocks the writer).

use rusqlite::params;
use serde::Serialize;

use super::reader::ReaderDb;
use crate::StoreError;

/// Most dead letters one query returns.
pub const MAX_DEAD_LETTERS: usize = 200;

/// Which dead letters to list.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterQuery {
    /// Only this device's (exact id); `None`: every device's and the unattributed ones.
    pub device_id: Option<String>,
    /// Received at or after / before, µs since the epoch.
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
    /// Page: ids below this one (the previous page's `next_before`).
    pub before_id: Option<i64>,
    /// At most this many (capped at [`MAX_DEAD_LETTERS`]).
    pub limit: usize,
}

/// One dead letter as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterRow {
    pub id: i64,
    pub received_us: i64,
    pub transport: String,
    pub peer: String,
    pub device_id: Option<String>,
    pub stream_offset: i64,
    pub ack_code: String,
    pub error_code: i64,
    pub location: Option<String>,
    pub reason: String,
    /// The kept bytes (at most 64 KiB) and the input's whole length.
    pub raw: Vec<u8>,
    pub raw_len: i64,
    pub forwarded: bool,
}

impl ReaderDb {
    /// The dead letters `q` asks for, newest first.
    pub fn dead_letters(&self, q: &DeadLetterQuery) -> Result<Vec<DeadLetterRow>, StoreError> {
        let limit = q.limit.clamp(1, MAX_DEAD_LETTERS) as i64;
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, received_us, transport, peer, device_id, stream_offset, ack_code, \
                 error_code, location, reason, raw, raw_len, forwarded FROM dead_letters \
                 WHERE (?1 IS NULL OR device_id = ?1) AND (?2 IS NULL OR received_us >= ?2) \
                 AND (?3 IS NULL OR received_us < ?3) AND (?4 IS NULL OR id < ?4) \
                 ORDER BY id DESC LIMIT ?5",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![q.device_id, q.from_us, q.to_us, q.before_id, limit],
                |r| {
                    Ok(DeadLetterRow {
                        id: r.get(0)?,
                        received_us: r.get(1)?,
                        transport: r.get(2)?,
                        peer: r.get(3)?,
                        device_id: r.get(4)?,
                        stream_offset: r.get(5)?,
                        ack_code: r.get(6)?,
                        error_code: r.get(7)?,
                        location: r.get(8)?,
                        reason: r.get(9)?,
                        raw: r.get(10)?,
                        raw_len: r.get(11)?,
                        forwarded: r.get::<_, i64>(12)? != 0,
                    })
                },
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }
}
