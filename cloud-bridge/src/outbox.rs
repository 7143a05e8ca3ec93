//! The bridge's view of the gateway store: records waiting to be forwarded.
//!
//! Owns: the [`Stream`]s the bridge forwards (observations, alarms, ADT events, dead letters),
//! the [`Outbox`]
//! trait the gateway implements over SQLite, the [`OutboxRecord`] it returns, and
//! [`MemoryOutbox`], an in-memory implementation for tests.
//! Guarantees (the contract both sides keep):
//! - `fetch_unsent` returns the oldest unsent records ordered by `(device_id, seq)`;
//! - the bridge calls `mark_sent` only after Kafka's delivery report for every record of the
//!   range, so a record leaves the outbox only once it is durable in Kafka;
//! - both calls may block (SQLite); the bridge runs them on `tokio::task::spawn_blocking`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use icu_protos::v1::StoredRecord;

use crate::error::BridgeError;

/// A stream of records: each has its own per-device seq and its own Kafka topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Alarm state changes (`icu.alarms`). Ordered first: after an outage alarms drain first.
    Alarms,
    /// ADT events (`icu.adt`), one Patient + Encounter per event. Ordered before observations,
    /// so after an outage the census reaches the cloud before the readings that refer to it.
    Adt,
    /// Observations (`icu.observations`).
    Observations,
    /// Rejected inputs and why (`icu.deadletter`), one per Kafka record, as plain JSON (not
    /// FHIR). Ordered last: clinical data drains before the diagnostics.
    DeadLetters,
}

impl Stream {
    /// Every stream, in drain order.
    pub const ALL: [Stream; 4] = [
        Stream::Alarms,
        Stream::Adt,
        Stream::Observations,
        Stream::DeadLetters,
    ];

    /// The number the gateway store keeps in `records.kind`.
    pub fn code(self) -> i64 {
        match self {
            Stream::Observations => 1,
            Stream::Alarms => 2,
            Stream::Adt => 3,
            Stream::DeadLetters => 4,
        }
    }

    pub fn from_code(code: i64) -> Option<Stream> {
        match code {
            1 => Some(Stream::Observations),
            2 => Some(Stream::Alarms),
            3 => Some(Stream::Adt),
            4 => Some(Stream::DeadLetters),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Observations => "observations",
            Stream::Alarms => "alarms",
            Stream::Adt => "adt",
            Stream::DeadLetters => "deadletter",
        }
    }
}

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

/// Records waiting for Kafka. Implementations may block; they must be thread safe.
pub trait Outbox: Send + Sync + 'static {
    /// Oldest unsent records, ordered by (stream, device_id, seq), at most `limit`.
    fn fetch_unsent(&self, limit: usize) -> Result<Vec<OutboxRecord>, BridgeError>;
    /// Marks [first_seq, last_seq] of one device's stream as sent (called only after Kafka's
    /// delivery report).
    fn mark_sent(
        &self,
        stream: Stream,
        device_id: &str,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), BridgeError>;
}

/// The records of a [`MemoryOutbox`] by `(stream, device, seq)`, with their sent flag.
type MemoryRecords = BTreeMap<(Stream, String, u64), (OutboxRecord, bool)>;

/// An in-memory [`Outbox`] for tests (here and in the gateway).
#[derive(Debug, Default)]
pub struct MemoryOutbox {
    records: Mutex<MemoryRecords>,
    fail_fetch: AtomicBool,
    fail_mark: AtomicBool,
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

    /// The seqs of `device_id` marked sent, ascending.
    pub fn sent_seqs(&self, device_id: &str) -> Vec<u64> {
        self.lock()
            .iter()
            .filter(|((_, device, _), (_, sent))| device == device_id && *sent)
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

impl Outbox for MemoryOutbox {
    fn fetch_unsent(&self, limit: usize) -> Result<Vec<OutboxRecord>, BridgeError> {
        if self.fail_fetch.load(Ordering::SeqCst) {
            return Err(BridgeError::Outbox {
                operation: "fetch_unsent",
                reason: "injected failure".into(),
            });
        }
        Ok(self
            .lock()
            .values()
            .filter(|(_, sent)| !sent)
            .take(limit)
            .map(|(record, _)| record.clone())
            .collect())
    }

    fn mark_sent(
        &self,
        stream: Stream,
        device_id: &str,
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), BridgeError> {
        if self.fail_mark.load(Ordering::SeqCst) {
            return Err(BridgeError::Outbox {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(device: &str, seq: u64) -> OutboxRecord {
        OutboxRecord {
            stream: Stream::Observations,
            device_id: device.into(),
            seq,
            bed: "b1".into(),
            record: StoredRecord {
                gateway_id: "gw".into(),
                device_id: device.into(),
                seq,
                body: None,
            },
        }
    }

    #[test]
    fn memory_outbox_orders_limits_and_marks_ranges() {
        let outbox = MemoryOutbox::new();
        for (d, s) in [("b", 1), ("a", 2), ("a", 1), ("a", 3), ("b", 2)] {
            outbox.push(rec(d, s));
        }
        let keys: Vec<_> = outbox
            .fetch_unsent(4)
            .unwrap()
            .into_iter()
            .map(|r| (r.device_id, r.seq))
            .collect();
        assert_eq!(
            keys,
            [
                ("a".into(), 1),
                ("a".into(), 2),
                ("a".into(), 3),
                ("b".into(), 1)
            ]
        );
        outbox.mark_sent(Stream::Observations, "a", 1, 2).unwrap();
        assert_eq!(outbox.sent_seqs("a"), [1, 2]);
        assert_eq!(outbox.unsent_len(), 3);
        outbox.set_fail_mark(true);
        assert!(outbox.mark_sent(Stream::Observations, "a", 3, 3).is_err());
        assert_eq!(outbox.unsent_len(), 3);
    }

    #[test]
    fn stream_codes_round_trip_adt_drains_before_observations_dead_letters_last() {
        for stream in Stream::ALL {
            assert_eq!(Stream::from_code(stream.code()), Some(stream));
        }
        assert_eq!(
            Stream::ALL.map(Stream::code),
            [2, 3, 1, 4],
            "codes are stored in the gateway database; never renumber"
        );
        assert_eq!(
            Stream::ALL.map(Stream::as_str),
            ["alarms", "adt", "observations", "deadletter"]
        );
        assert_eq!(Stream::from_code(0), None);
        let mut sorted = [
            Stream::DeadLetters,
            Stream::Observations,
            Stream::Adt,
            Stream::Alarms,
        ];
        sorted.sort();
        assert_eq!(sorted, Stream::ALL);

        let outbox = MemoryOutbox::new();
        outbox.push(OutboxRecord {
            stream: Stream::DeadLetters,
            ..rec("a", 1)
        });
        outbox.push(rec("a", 1));
        outbox.push(OutboxRecord {
            stream: Stream::Adt,
            ..rec("adt", 1)
        });
        let streams: Vec<Stream> = outbox
            .fetch_unsent(10)
            .unwrap()
            .into_iter()
            .map(|r| r.stream)
            .collect();
        assert_eq!(
            streams,
            [Stream::Adt, Stream::Observations, Stream::DeadLetters]
        );
    }
}
