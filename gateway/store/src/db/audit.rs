//! The outbox's audit stream (`icu_outbox::Stream::Audit`): the gateway's audit-trail entries,
//! read in place from `audit_log` and marked forwarded in `audit_forwarded`.
//!
//! `audit_log` is the gateway's (`icu_gateway::audit`, which creates it, appends to it and owns
//! its format); this crate sits below the gateway, so it reads the table with its own small SQL,
//! column by column as that module documents them, and never writes to it. The entries are the
//! source of truth: never copied into `records`, never pruned. What this file owns is one row,
//! `audit_forwarded.upto` (`schema.sql`): every entry with `seq <= upto` reached Kafka.
//!
//! - **Unsent** = entries with `seq > upto`; the head is the lowest of them (one seek on the
//!   primary key). A file without the audit tables (a store used without the gateway's audit
//!   trail) has an empty audit stream.
//! - **Mark** advances `upto` to the range's last seq only when no unforwarded entry lies before
//!   the range's first seq, so *sent is a prefix* holds as for every stream; marking again, or
//!   a range already forwarded, changes nothing (idempotent).
//! - A seq missing from the trail (a deleted row; `audit verify` names it) is not waited for:
//!   the entries on both sides are forwarded and the gap shows on `icu.audit`.
//! - A row whose columns do not have the types the gateway writes comes out without a body: the
//!   bridge leaves it (and so the rest of the stream) unsent, counts and logs it.

use icu_outbox::AUDIT_DEVICE;
use icu_protos::v1::{stored_record, AuditEntry, StoredRecord};
use icu_protos::Message;
use rusqlite::{params, Connection, OptionalExtension, Row};

/// Whether the file has the gateway's audit trail.
pub(super) fn has_trail(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'audit_log'",
    )?
    .query_row([], |r| r.get::<_, i64>(0).map(|n| n > 0))
}

/// The last forwarded seq (0 when none was).
pub(super) fn forwarded_upto(conn: &Connection) -> rusqlite::Result<u64> {
    let upto: Option<i64> = conn
        .prepare_cached("SELECT upto FROM audit_forwarded WHERE id = 1")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(upto.unwrap_or(0).max(0) as u64)
}

/// The lowest unforwarded seq and its time (µs), if any.
pub(super) fn head(conn: &Connection) -> rusqlite::Result<Option<(u64, i64)>> {
    if !has_trail(conn)? {
        return Ok(None);
    }
    let upto = forwarded_upto(conn)?;
    conn.prepare_cached("SELECT seq, time_us FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT 1")?
        .query_row(params![upto as i64], |r| {
            Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, i64>(1)?))
        })
        .optional()
}

/// `(lowest stored seq, highest stored seq, head)` of the audit stream, for the
/// outbox depth; `None` without a trail or entries.
pub(super) fn extent(conn: &Connection) -> rusqlite::Result<Option<(u64, u64, Option<u64>)>> {
    if !has_trail(conn)? {
        return Ok(None);
    }
    let span: Option<(i64, i64)> = conn
        .prepare_cached("SELECT MIN(seq), MAX(seq) FROM audit_log")?
        .query_row([], |r| {
            Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?))
        })
        .map(|(a, b)| a.zip(b))?;
    let Some((first, last)) = span else {
        return Ok(None);
    };
    Ok(Some((
        first.max(0) as u64,
        last.max(0) as u64,
        head(conn)?.map(|(seq, _)| seq),
    )))
}

/// The columns [`entry_of`] reads, in its order (the gateway's `audit_log`).
const COLUMNS: &str = "seq, time_us, clock_synced, account, role, source, action, target_kind, \
     target_id, bed, old_value, new_value, outcome, reason, prev_hash, hash, key_id, signature";

fn entry_of(r: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    Ok(AuditEntry {
        seq: r.get::<_, i64>(0)?.max(0) as u64,
        time_us: r.get(1)?,
        clock_synced: r.get::<_, i64>(2)? != 0,
        account: r.get(3)?,
        role: r.get(4)?,
        source: r.get(5)?,
        action: r.get(6)?,
        target_kind: r.get(7)?,
        target_id: r.get(8)?,
        bed: r.get(9)?,
        old_value: r.get(10)?,
        new_value: r.get(11)?,
        outcome: r.get(12)?,
        reason: r.get(13)?,
        prev_hash: r.get(14)?,
        hash: r.get(15)?,
        key_id: r.get(16)?,
        signature: r.get(17)?,
    })
}

/// Up to `n` unforwarded entries with `seq >= from_seq`, ascending: each seq with its encoded
/// `icu.v1.StoredRecord` (body `audit_entry`; empty when the row does not read).
pub(super) fn read(
    conn: &Connection,
    from_seq: u64,
    n: usize,
) -> rusqlite::Result<Vec<(u64, Vec<u8>)>> {
    if n == 0 || !has_trail(conn)? {
        return Ok(Vec::new());
    }
    let from = from_seq.max(forwarded_upto(conn)? + 1);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit_log WHERE seq >= ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let mut rows = stmt.query(params![from as i64, n as i64])?;
    let mut out = Vec::with_capacity(n);
    while let Some(row) = rows.next()? {
        let seq = row.get::<_, i64>(0)?.max(0) as u64;
        let payload = match entry_of(row) {
            Ok(entry) => StoredRecord {
                gateway_id: String::new(),
                device_id: AUDIT_DEVICE.to_owned(),
                seq,
                body: Some(stored_record::Body::AuditEntry(entry)),
                traceparent: String::new(),
            }
            .encode_to_vec(),
            Err(e) => {
                tracing::error!(seq, error = %e,
                    "store: an audit_log row does not read; it stays in the outbox as skipped (no body)");
                Vec::new()
            }
        };
        out.push((seq, payload));
    }
    Ok(out)
}

/// Marks `[first, last]` forwarded; returns how many entries were unforwarded before. Only a
/// prefix of the unforwarded entries moves the mark (see the module docs); idempotent.
pub(super) fn mark(conn: &Connection, first: u64, last: u64) -> rusqlite::Result<usize> {
    let upto = forwarded_upto(conn)?;
    if first > last || last <= upto || !has_trail(conn)? {
        return Ok(0);
    }
    let count = |lo: u64, hi: u64| -> rusqlite::Result<i64> {
        conn.prepare_cached("SELECT count(*) FROM audit_log WHERE seq > ?1 AND seq < ?2")?
            .query_row(params![lo as i64, hi as i64], |r| r.get(0))
    };
    if first > upto + 1 && count(upto, first)? > 0 {
        tracing::warn!(
            upto,
            first,
            last,
            "store: audit entries before this range are not forwarded yet; the mark stays"
        );
        return Ok(0);
    }
    let marked = count(upto, last.saturating_add(1))?;
    conn.prepare_cached(
        "INSERT INTO audit_forwarded (id, upto) VALUES (1, ?1)
         ON CONFLICT(id) DO UPDATE SET upto = MAX(upto, excluded.upto)",
    )?
    .execute(params![last as i64])?;
    Ok(marked.max(0) as usize)
}
