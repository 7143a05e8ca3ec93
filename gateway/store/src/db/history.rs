//! A bed's alarm history for the bed view: its alarm state changes as stored (the `icu.alarms`
//! stream), newest first, bounded, on a reader connection (WAL: never blocks the writer).

use icu_protos::v1::{stored_record::Body, Alarm, StoredRecord};
use icu_protos::Message as _;
use rusqlite::params;

use super::reader::ReaderDb;
use crate::StoreError;

/// Most alarm state changes one query returns.
pub const MAX_ALARM_HISTORY: usize = 500;

impl ReaderDb {
    /// The alarm state changes of `bed` received at or after `from_us`, newest first, at most
    /// `limit` (capped at [`MAX_ALARM_HISTORY`]). Rows that do not decode are skipped.
    pub fn alarm_history(
        &self,
        bed: &str,
        from_us: i64,
        limit: usize,
    ) -> Result<Vec<Alarm>, StoreError> {
        let limit = limit.clamp(1, MAX_ALARM_HISTORY) as i64;
        let kind = icu_outbox::Stream::Alarms.code();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT payload FROM records WHERE kind = ?1 AND bed = ?2 AND received_us >= ?3 \
                 ORDER BY received_us DESC, seq DESC LIMIT ?4",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![kind, bed, from_us, limit], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for payload in rows {
            let payload = payload.map_err(|e| self.err(e))?;
            if let Ok(StoredRecord {
                body: Some(Body::Alarm(a)),
                ..
            }) = StoredRecord::decode(payload.as_slice())
            {
                out.push(a);
            }
        }
        Ok(out)
    }
}
