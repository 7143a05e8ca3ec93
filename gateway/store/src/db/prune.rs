//! Pruning under the disk budget: whole rows of records already forwarded, oldest first, in
//! bounded rounds (waveform segments before everything else); then unsent waveform segments
//! (loudly); with `on_full = drop_oldest_unsent` the oldest unsent observations; old dead
//! letters. And the waveform retention: forwarded waveform rows past `waveform_retention_s`.

use icu_outbox::Stream;
use rusqlite::{params, Connection, OptionalExtension};

use super::types::{BudgetPolicy, OnFull};

/// Most unsent seqs of one stream read from the outbox index to find forwarded records behind
/// them, per stream and round.
pub(super) const UNSENT_SCAN: i64 = 4096;

/// SQL: the lowest unsent seq of one stream (`?1` kind, `?2` device) and its row's receive
/// time. INDEXED BY: without statistics the planner walks the primary key from seq 1, through
/// every forwarded record not yet pruned (37 ms per head behind 400k of them, against 4 µs
/// through the partial index).
pub(super) const UNSENT_HEAD: &str = "SELECT MAX(seq, sent_upto + 1), received_us FROM records INDEXED BY records_unsent WHERE kind = ?1 AND device_id = ?2 AND sent = 0 ORDER BY seq LIMIT 1";

/// SQL: how many records of a `records` row are unsent (see `schema.sql`).
pub(super) const UNSENT_IN_ROW: &str =
    "CASE WHEN sent = 1 THEN 0 ELSE seq + n - MAX(seq, sent_upto + 1) END";

/// What one or more pruning rounds deleted.
#[derive(Debug, Default)]
pub(super) struct PruneReport {
    pub(super) rounds: u64,
    pub(super) sent: u64,
    pub(super) unsent: u64,
    pub(super) dead_letters: u64,
    pub(super) messages: u64,
    /// Unsent observations deleted, per device: (first seq, last seq, count).
    pub(super) lost: std::collections::BTreeMap<String, (i64, i64, u64)>,
    /// Forwarded waveform segments deleted (also in `sent`).
    pub(super) sent_waveforms: u64,
    /// Unsent waveform segments deleted, and per device: (first seq, last seq, count).
    pub(super) unsent_waveforms: u64,
    pub(super) lost_waveforms: std::collections::BTreeMap<String, (i64, i64, u64)>,
    /// Forwarded waveform segments deleted by the retention (not counted in `sent`).
    pub(super) expired_waveforms: u64,
}

impl PruneReport {
    pub(super) fn records(&self) -> u64 {
        self.sent + self.unsent + self.dead_letters + self.unsent_waveforms
    }

    pub(super) fn merge(&mut self, o: PruneReport) {
        self.rounds += o.rounds;
        self.sent += o.sent;
        self.unsent += o.unsent;
        self.dead_letters += o.dead_letters;
        self.messages += o.messages;
        self.sent_waveforms += o.sent_waveforms;
        self.unsent_waveforms += o.unsent_waveforms;
        self.expired_waveforms += o.expired_waveforms;
        for (device, range) in o.lost {
            add_lost(&mut self.lost, device, range);
        }
        for (device, range) in o.lost_waveforms {
            add_lost(&mut self.lost_waveforms, device, range);
        }
    }
}

/// Adds a deleted range `(first, last, count)` of `device` to `lost`.
fn add_lost(
    lost: &mut std::collections::BTreeMap<String, (i64, i64, u64)>,
    device: String,
    (first, last, n): (i64, i64, u64),
) {
    let e = lost.entry(device).or_insert((first, last, 0));
    e.0 = e.0.min(first);
    e.1 = e.1.max(last);
    e.2 += n;
}

/// One pruning round, about `policy.prune_chunk` records (whole rows), in the policy's order:
/// forwarded waveform segments, forwarded observations and dead letters (with the dead-letter
/// table rows already forwarded), then forwarded alarms and ADT events; only if nothing
/// forwarded was left, the oldest unsent waveform segments (whatever `on_full` says: readings
/// and alarms win over curves); only if none of those either and `on_full =
/// drop_oldest_unsent`, the oldest unsent observations. Unsent alarms, ADT events and dead
/// letters are never deleted.
pub(super) fn prune_round(
    conn: &Connection,
    policy: &BudgetPolicy,
    legacy_messages: bool,
) -> rusqlite::Result<PruneReport> {
    let mut report = PruneReport {
        rounds: 1,
        ..Default::default()
    };
    let streams: Vec<(i64, String)> = {
        let mut stmt = conn.prepare_cached("SELECT kind, device_id FROM devices")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let of_kinds = |kinds: &[Stream]| -> Vec<(i64, String)> {
        let codes: Vec<i64> = kinds.iter().map(|k| k.code()).collect();
        streams
            .iter()
            .filter(|(k, _)| codes.contains(k))
            .cloned()
            .collect()
    };
    let chunk = policy.prune_chunk.max(1) as u64;
    let waves = of_kinds(&[Stream::Waveforms]);
    prune_sent(conn, &waves, chunk, &mut report)?;
    report.sent_waveforms = report.sent;
    let first = of_kinds(&[Stream::Observations, Stream::DeadLetters]);
    if report.sent < chunk {
        let left = chunk - report.sent;
        prune_sent(conn, &first, left, &mut report)?;
    }
    report.dead_letters += prune_dead_letter_table(conn, chunk)?;
    if report.sent < chunk {
        let last = of_kinds(&[Stream::Alarms, Stream::Adt]);
        let left = chunk - report.sent;
        prune_sent(conn, &last, left, &mut report)?;
    }
    if report.records() == 0 {
        report.unsent_waveforms = prune_unsent(
            conn,
            &waves,
            chunk,
            &mut report.sent,
            &mut report.lost_waveforms,
        )?;
    }
    if report.records() == 0 && policy.on_full == OnFull::DropOldestUnsent {
        report.unsent = prune_unsent(
            conn,
            &of_kinds(&[Stream::Observations]),
            chunk,
            &mut report.sent,
            &mut report.lost,
        )?;
    }
    // The dedup rows older gateways kept in `messages`, once their readings are all gone
    // (nothing new is written there: skipped when the file had none).
    for (kind, device) in first.iter().filter(|_| legacy_messages) {
        if *kind == Stream::Observations.code() {
            let head = match head(conn, *kind, device)? {
                Some((seq, _)) => seq,
                None => i64::MAX,
            };
            report.messages += conn.execute(
                "DELETE FROM messages WHERE device_id = ?1 AND last_seq < ?2",
                params![device, head],
            )? as u64;
        }
    }
    Ok(report)
}

/// The oldest record of a stream: (seq, received_us).
pub(super) fn head(
    conn: &Connection,
    kind: i64,
    device: &str,
) -> rusqlite::Result<Option<(i64, i64)>> {
    conn.prepare_cached(
        "SELECT seq, received_us FROM records WHERE kind = ?1 AND device_id = ?2 ORDER BY seq LIMIT 1",
    )?
    .query_row(params![kind, device], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()
}

/// Seq ranges of one stream, oldest first, that hold only forwarded records (or none), at most
/// `max` seqs in all. The bridge marks records sent in seq order per stream, so this is
/// usually the stream's head; forwarded records behind unsent ones are found through the
/// outbox index (at most [`UNSENT_SCAN`] entries read).
pub(super) fn sent_ranges(
    conn: &Connection,
    kind: i64,
    device: &str,
    max: u64,
) -> rusqlite::Result<Vec<(i64, i64)>> {
    let Some((head, _)) = head(conn, kind, device)? else {
        return Ok(Vec::new());
    };
    let tail: i64 = conn
        .prepare_cached(
            "SELECT seq FROM records WHERE kind = ?1 AND device_id = ?2 ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![kind, device], |r| r.get(0))?;
    let mut stmt = conn.prepare_cached(
        // INDEXED BY: without statistics SQLite may walk the primary key through every
        // forwarded record instead of the outbox index.
        "SELECT seq, n FROM records INDEXED BY records_unsent WHERE sent = 0 AND kind = ?1 AND device_id = ?2 AND seq >= ?3 ORDER BY seq LIMIT ?4",
    )?;
    let mut unsent = stmt.query(params![kind, device, head, UNSENT_SCAN])?;
    let mut out = Vec::new();
    let mut left = max as i64;
    let mut next = head;
    let mut read = 0i64;
    let mut take = |from: i64, to: i64, left: &mut i64| {
        let to = to.min(from + *left - 1);
        out.push((from, to));
        *left -= to - from + 1;
    };
    // Gaps between unsent seqs hold forwarded records (or none); read lazily, stop when enough.
    while left > 0 {
        let Some(row) = unsent.next()? else {
            break;
        };
        let u: i64 = row.get(0)?;
        let n: i64 = row.get(1)?;
        read += 1;
        if u > next {
            take(next, u - 1, &mut left);
        }
        // The unsent row holds seqs u .. u + n - 1.
        next = u + n.max(1);
    }
    if left > 0 && read < UNSENT_SCAN && next <= tail {
        take(next, tail, &mut left);
    }
    Ok(out)
}

/// Deletes up to `max` forwarded records of `streams`, the stream with the oldest record first,
/// a slice at a time.
pub(super) fn prune_sent(
    conn: &Connection,
    streams: &[(i64, String)],
    max: u64,
    report: &mut PruneReport,
) -> rusqlite::Result<()> {
    use std::cmp::Reverse;
    let slice = (max / 8).max(64);
    let mut heap = std::collections::BinaryHeap::new();
    for (i, (kind, device)) in streams.iter().enumerate() {
        if let Some((_, received)) = head(conn, *kind, device)? {
            heap.push(Reverse((received, i)));
        }
    }
    let mut deleted = 0u64;
    while deleted < max {
        let Some(Reverse((_, i))) = heap.pop() else {
            break;
        };
        let (kind, device) = &streams[i];
        let mut n = 0u64;
        for (from, to) in sent_ranges(conn, *kind, device, slice.min(max - deleted))? {
            let mut stmt = conn.prepare_cached(
                "DELETE FROM records WHERE kind = ?1 AND device_id = ?2 AND seq BETWEEN ?3 AND ?4 AND sent = 1 RETURNING n",
            )?;
            let mut rows = stmt.query(params![kind, device, from, to])?;
            while let Some(row) = rows.next()? {
                n += row.get::<_, i64>(0)?.max(0) as u64;
            }
        }
        if n == 0 {
            // Nothing forwarded near this stream's head: leave it for this round.
            continue;
        }
        deleted += n;
        if let Some((_, received)) = head(conn, *kind, device)? {
            heap.push(Reverse((received, i)));
        }
    }
    report.sent += deleted;
    Ok(())
}

/// Deletes up to `max` of the oldest records of `streams` (observations or waveform segments),
/// unsent ones included, the device with the oldest first, a slice at a time; returns how many
/// unsent ones it deleted (the forwarded ones it met are added to `sent`). Data loss, so every
/// range is kept in `lost` for the log.
pub(super) fn prune_unsent(
    conn: &Connection,
    streams: &[(i64, String)],
    max: u64,
    sent: &mut u64,
    lost: &mut std::collections::BTreeMap<String, (i64, i64, u64)>,
) -> rusqlite::Result<u64> {
    let mut unsent_deleted = 0u64;
    use std::cmp::Reverse;
    let slice = (max / 8).max(64) as i64;
    let mut heap = std::collections::BinaryHeap::new();
    for (i, (kind, device)) in streams.iter().enumerate() {
        if let Some((seq, received)) = head(conn, *kind, device)? {
            heap.push(Reverse((received, i, seq)));
        }
    }
    let mut deleted = 0u64;
    while deleted < max {
        let Some(Reverse((_, i, from))) = heap.pop() else {
            break;
        };
        let (kind, device) = &streams[i];
        let to = from + slice.min((max - deleted) as i64) - 1;
        // Rows whose first seq is in [from, to] (the last of them may reach past `to`).
        // The unsent seqs among them run from the first unsent row's first unsent seq to the
        // last unsent row's end (sent is a prefix of the stream).
        let (n, unsent, lost_from, lost_to): (i64, i64, Option<i64>, Option<i64>) = conn
            .prepare_cached(&format!(
                "SELECT COALESCE(SUM(n), 0), COALESCE(SUM({UNSENT_IN_ROW}), 0),
                        MIN(CASE WHEN sent = 0 THEN MAX(seq, sent_upto + 1) END),
                        MAX(CASE WHEN sent = 0 THEN seq + n - 1 END)
                 FROM records WHERE kind = ?1 AND device_id = ?2 AND seq BETWEEN ?3 AND ?4"
            ))?
            .query_row(params![kind, device, from, to], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
        conn.prepare_cached(
            "DELETE FROM records WHERE kind = ?1 AND device_id = ?2 AND seq BETWEEN ?3 AND ?4",
        )?
        .execute(params![kind, device, from, to])?;
        let n = n.max(0) as u64;
        if n == 0 {
            continue;
        }
        deleted += n;
        *sent += n - unsent as u64;
        if unsent > 0 {
            unsent_deleted += unsent as u64;
            let (lo, hi) = (lost_from.unwrap_or(from), lost_to.unwrap_or(from));
            add_lost(lost, device.clone(), (lo, hi, unsent as u64));
        }
        if let Some((seq, received)) = head(conn, *kind, device)? {
            heap.push(Reverse((received, i, seq)));
        }
    }
    Ok(unsent_deleted)
}

/// Deletes up to `max` forwarded waveform segments, the stream with the oldest first: room for
/// new segments once the bytes in use reach the waveform limit. Returns how many.
pub(super) fn prune_sent_waveforms(conn: &Connection, max: u64) -> rusqlite::Result<u64> {
    let streams: Vec<(i64, String)> = {
        let mut stmt =
            conn.prepare_cached("SELECT kind, device_id FROM devices WHERE kind = ?1")?;
        let rows = stmt.query_map([Stream::Waveforms.code()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut report = PruneReport::default();
    prune_sent(conn, &streams, max.max(1), &mut report)?;
    Ok(report.sent)
}

/// The waveform retention: deletes forwarded waveform rows received before `cutoff_us`, each
/// device's stream from its head (only its first `max` rows are looked at, so a pass is
/// bounded however long the stream), at most about `max` segments in all. Returns how many.
pub(super) fn expire_waveforms(
    conn: &Connection,
    cutoff_us: i64,
    max: u64,
) -> rusqlite::Result<u64> {
    let kind = Stream::Waveforms.code();
    let devices: Vec<String> = {
        let mut stmt = conn.prepare_cached("SELECT device_id FROM devices WHERE kind = ?1")?;
        let rows = stmt.query_map([kind], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut deleted = 0u64;
    for device in devices {
        if deleted >= max {
            break;
        }
        let mut stmt = conn.prepare_cached(
            "DELETE FROM records WHERE kind = ?1 AND device_id = ?2 AND sent = 1 AND received_us < ?3 AND seq IN
               (SELECT seq FROM records WHERE kind = ?1 AND device_id = ?2 ORDER BY seq LIMIT ?4)
             RETURNING n",
        )?;
        let mut rows = stmt.query(params![kind, device, cutoff_us, (max - deleted) as i64])?;
        while let Some(row) = rows.next()? {
            deleted += row.get::<_, i64>(0)?.max(0) as u64;
        }
    }
    Ok(deleted)
}

/// Deletes up to `max` rows of the dead-letter table, oldest first, whose outbox copy is no
/// longer waiting (older than the oldest unsent dead letter).
pub(super) fn prune_dead_letter_table(conn: &Connection, max: u64) -> rusqlite::Result<u64> {
    let cutoff: Option<i64> = conn
        .prepare_cached(
            "SELECT MIN(received_us) FROM records INDEXED BY records_unsent WHERE kind = ?1 AND sent = 0",
        )?
        .query_row(params![Stream::DeadLetters.code()], |r| r.get(0))?;
    Ok(conn.execute(
        "DELETE FROM dead_letters WHERE id IN
           (SELECT id FROM dead_letters WHERE received_us < ?1 ORDER BY id LIMIT ?2)",
        params![cutoff.unwrap_or(i64::MAX), max as i64],
    )? as u64)
}
