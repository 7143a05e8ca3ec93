//! Recognising a sender's retry of a message already stored: each device's last
//! [`DEDUP_WINDOW`] messages, in memory, loaded from the rows after a restart.

use std::collections::HashMap;

use icu_outbox::Stream;
use rusqlite::{params, Connection, OptionalExtension};

use super::prune::head;
use super::types::{ObservationBatch, WriteOutcome};

/// How many of a device's latest messages a retry is recognised among (per device; after a
/// restart, from its latest rows in the file).
pub const DEDUP_WINDOW: usize = 256;

/// Recognises a sender's retry of a message already stored: same device, same control id
/// (HL7 MSH-10, the MQTT message id) and same bytes (digest).
///
/// Senders retry their latest messages: an MLLP sender resends the one whose ACK it did not
/// get before it sends the next; the MQTT broker redelivers to the gateway what was in flight
/// to it (mosquitto's `max_inflight_messages`, 20 by default); after a gateway crash both
/// resend what they sent last. So each device's last [`DEDUP_WINDOW`] messages are kept in
/// memory (about 50 KiB per device), loaded from the
/// device's latest rows (`records.control_id` and `digest`) the first time the device is seen
/// after a start. This replaced a `messages` table with two b-trees, which was a third of all
/// pages each group commit wrote (`cargo bench -p icu-tests --bench store_commit`); store
/// files that still have rows in it are looked up there as well.
///
/// What a batch stores enters the window only once its `COMMIT` returned: a commit that failed
/// leaves no trace that would answer a retry as stored.
#[derive(Debug, Default)]
pub(super) struct Dedup {
    pub(super) devices: HashMap<String, DedupDevice>,
    /// Stored by the batch being committed, not yet in `devices`: (device, control id, entry).
    pub(super) pending: Vec<(String, String, DedupEntry)>,
    /// The legacy `messages` table has rows (files written before the window).
    pub(super) legacy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DedupEntry {
    pub(super) digest: i64,
    pub(super) first_seq: u64,
    pub(super) last_seq: u64,
}

#[derive(Debug, Default)]
pub(super) struct DedupDevice {
    pub(super) by_control: HashMap<String, DedupEntry>,
    /// Control ids oldest first, with the first seq they were stored under (a control id
    /// reused with other bytes replaces the earlier entry; evicting the earlier occurrence
    /// must not remove the later one).
    pub(super) order: std::collections::VecDeque<(String, u64)>,
}

impl DedupDevice {
    pub(super) fn insert(&mut self, control_id: String, entry: DedupEntry) {
        self.order.push_back((control_id.clone(), entry.first_seq));
        self.by_control.insert(control_id, entry);
        while self.order.len() > DEDUP_WINDOW {
            if let Some((old, first)) = self.order.pop_front() {
                if self
                    .by_control
                    .get(&old)
                    .is_some_and(|e| e.first_seq == first)
                {
                    self.by_control.remove(&old);
                }
            }
        }
    }
}

impl Dedup {
    /// The earlier outcome of this message if it is a retry: the batch being committed first,
    /// then the device's window (loaded from the file on first use), then the legacy table.
    pub(super) fn find(
        &mut self,
        conn: &Connection,
        b: &ObservationBatch,
    ) -> rusqlite::Result<Option<WriteOutcome>> {
        let Some((control_id, digest)) = &b.dedup else {
            return Ok(None);
        };
        let hit = |e: &DedupEntry| {
            (e.digest == *digest).then_some(WriteOutcome::Duplicate {
                first_seq: e.first_seq,
                last_seq: e.last_seq,
            })
        };
        if let Some((_, _, e)) = self
            .pending
            .iter()
            .rev()
            .find(|(d, c, _)| *d == b.device_id && c == control_id)
        {
            return Ok(hit(e));
        }
        if !self.devices.contains_key(&b.device_id) {
            let window = load_dedup_window(conn, &b.device_id)?;
            self.devices.insert(b.device_id.clone(), window);
        }
        if let Some(e) = self.devices[&b.device_id].by_control.get(control_id) {
            return Ok(hit(e));
        }
        if self.legacy {
            let prior: Option<(i64, i64, i64)> = conn
                .prepare_cached(
                    "SELECT digest, first_seq, last_seq FROM messages WHERE device_id = ?1 AND control_id = ?2",
                )?
                .query_row(params![b.device_id, control_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            return Ok(prior.and_then(|(d, first, last)| {
                hit(&DedupEntry {
                    digest: d,
                    first_seq: first as u64,
                    last_seq: last as u64,
                })
            }));
        }
        Ok(None)
    }

    /// After a request's savepoint was released: the message it stored waits in `pending`
    /// for the batch's `COMMIT`.
    pub(super) fn stored(&mut self, b: &ObservationBatch, out: &WriteOutcome) {
        if let (
            WriteOutcome::Stored {
                first_seq,
                last_seq,
            },
            Some((control_id, digest)),
        ) = (out, &b.dedup)
        {
            self.pending.push((
                b.device_id.clone(),
                control_id.clone(),
                DedupEntry {
                    digest: *digest,
                    first_seq: *first_seq,
                    last_seq: *last_seq,
                },
            ));
        }
    }

    /// After the batch's `COMMIT`: what it stored enters the windows.
    pub(super) fn committed(&mut self) {
        for (device, control_id, entry) in self.pending.drain(..) {
            self.devices
                .entry(device)
                .or_default()
                .insert(control_id, entry);
        }
    }
}

/// A device's last [`DEDUP_WINDOW`] messages as its latest rows hold them (the rows of one
/// message share its control id and digest).
pub(super) fn load_dedup_window(
    conn: &Connection,
    device_id: &str,
) -> rusqlite::Result<DedupDevice> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, n, control_id, digest FROM records WHERE kind = ?1 AND device_id = ?2 ORDER BY seq DESC LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![
        Stream::Observations.code(),
        device_id,
        DEDUP_WINDOW as i64
    ])?;
    // Newest first: merge the rows of one message, then insert oldest first.
    let mut messages: Vec<(String, DedupEntry)> = Vec::new();
    let mut read = 0;
    while let Some(row) = rows.next()? {
        read += 1;
        let seq = row.get::<_, i64>(0)?.max(0) as u64;
        let n = row.get::<_, i64>(1)?.max(1) as u64;
        let (Some(control_id), Some(digest)) = (
            row.get::<_, Option<String>>(2)?,
            row.get::<_, Option<i64>>(3)?,
        ) else {
            continue;
        };
        match messages.last_mut() {
            Some((c, e)) if *c == control_id && e.digest == digest && e.first_seq == seq + n => {
                e.first_seq = seq;
            }
            _ => messages.push((
                control_id,
                DedupEntry {
                    digest,
                    first_seq: seq,
                    last_seq: seq + n - 1,
                },
            )),
        }
    }
    // The oldest message read may have more rows before the limit, or have lost its first
    // rows to pruning (it starts the stored stream): a retry of it must not be answered with
    // part of its seqs.
    let first_stored = head(conn, Stream::Observations.code(), device_id)?.map(|(seq, _)| seq);
    if read == DEDUP_WINDOW
        || messages
            .last()
            .is_some_and(|(_, e)| e.first_seq > 1 && Some(e.first_seq as i64) == first_stored)
    {
        messages.pop();
    }
    let mut window = DedupDevice::default();
    // Messages that held only waveform segments left no observation row: their waveform rows
    // carry the control id and digest (no readings: an empty seq range). Older than the
    // readings' messages in the window, so these are the first evicted.
    let waves: Vec<(String, i64)> = conn
        .prepare_cached(
            "SELECT control_id, digest FROM records WHERE kind = ?1 AND device_id = ?2 AND control_id IS NOT NULL ORDER BY seq DESC LIMIT ?3",
        )?
        .query_map(
            params![Stream::Waveforms.code(), device_id, DEDUP_WINDOW as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<Result<_, _>>()?;
    let mut waveform_only: Vec<(String, i64)> = Vec::new();
    for (control_id, digest) in waves {
        let known = |c: &String, d: i64| *c == control_id && d == digest;
        if !messages.iter().any(|(c, e)| known(c, e.digest))
            && !waveform_only.iter().any(|(c, d)| known(c, *d))
        {
            waveform_only.push((control_id, digest));
        }
    }
    for (control_id, digest) in waveform_only.into_iter().rev() {
        let entry = DedupEntry {
            digest,
            first_seq: 1,
            last_seq: 0,
        };
        window.insert(control_id, entry);
    }
    for (control_id, entry) in messages.into_iter().rev() {
        window.insert(control_id, entry);
    }
    Ok(window)
}
