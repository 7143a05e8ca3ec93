//! Tests of the store's SQLite layer (`db.rs`).

use icu_outbox::{FetchRequest, SentRange};
use icu_protos::v1::Alarm;

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
        order: Default::default(),
        traceparent: None,
        waveforms: Default::default(),
    })
}

fn stored(first_seq: u64, last_seq: u64) -> WriteOutcome {
    WriteOutcome::Stored {
        first_seq,
        last_seq,
    }
}

fn duplicate(first_seq: u64, last_seq: u64) -> WriteOutcome {
    WriteOutcome::Duplicate {
        first_seq,
        last_seq,
    }
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
    assert_eq!(r[0].as_ref().unwrap(), &stored(1, 3));
    assert_eq!(r[1].as_ref().unwrap(), &stored(1, 2));
    assert_eq!(r[2].as_ref().unwrap(), &stored(4, 5));
    drop(db);
    let (mut db, reader) = open(dir.path());
    let r = db.commit_batch(&[batch("a", Some("m3"), 1)]);
    assert_eq!(r[0].as_ref().unwrap(), &stored(6, 6));
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

/// A store file of the layout before rows held several records (one row per record, no
/// `n` or `sent_upto`), as a gateway of that version left it.
fn old_layout_file(p: &Path) {
    let c = Connection::open(p).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE devices (device_id TEXT NOT NULL, kind INTEGER NOT NULL, next_seq INTEGER NOT NULL,
             PRIMARY KEY (device_id, kind)) WITHOUT ROWID;
         CREATE TABLE records (device_id TEXT NOT NULL, seq INTEGER NOT NULL, kind INTEGER NOT NULL,
             bed TEXT NOT NULL, received_us INTEGER NOT NULL, payload BLOB NOT NULL,
             sent INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (kind, device_id, seq)) WITHOUT ROWID;
         CREATE INDEX records_unsent ON records (kind, device_id, seq) WHERE sent = 0;
         CREATE TABLE messages (device_id TEXT NOT NULL, control_id TEXT NOT NULL, digest INTEGER NOT NULL,
             first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, received_us INTEGER NOT NULL,
             PRIMARY KEY (device_id, control_id)) WITHOUT ROWID;
         CREATE INDEX messages_by_last_seq ON messages (device_id, last_seq);
         INSERT INTO devices VALUES ('a', 1, 4);",
    )
    .unwrap();
    for seq in 1..=3u64 {
        let rec = StoredRecord {
            gateway_id: "gw".into(),
            device_id: "a".into(),
            seq,
            body: Some(stored_record::Body::Observation(Observation {
                seq,
                ..obs(seq as f64)
            })),
            traceparent: String::new(),
        };
        c.execute(
            "INSERT INTO records (device_id, seq, kind, bed, received_us, payload, sent) VALUES ('a', ?1, 1, 'bed-1', 1, ?2, ?3)",
            params![seq as i64, rec.encode_to_vec(), i64::from(seq == 1)],
        )
        .unwrap();
    }
    // Its last message held seqs 2 and 3.
    c.execute(
        "INSERT INTO messages VALUES ('a', 'old-2', ?1, 2, 3, 1)",
        [digest(b"old-2")],
    )
    .unwrap();
}

#[test]
fn a_store_file_of_one_row_per_record_is_upgraded_and_forwarded_whole() {
    let dir = tempfile::tempdir().unwrap();
    old_layout_file(&dir.path().join("s.db"));
    let (mut db, reader) = open(dir.path());
    // Its unsent records are still there, under their seqs; new ones follow as one row.
    let seqs_of = |rows: Vec<UnsentRow>| -> Vec<u64> { rows.iter().map(|r| r.seq).collect() };
    assert_eq!(seqs_of(reader.fetch_unsent(100).unwrap()), vec![2, 3]);
    let r = db.commit_batch(&[batch("a", Some("m9"), 5)]);
    assert_eq!(r[0].as_ref().unwrap(), &stored(4, 8));
    let rows = reader.fetch_unsent(100).unwrap();
    assert_eq!(seqs_of(rows.clone()), (2..=8).collect::<Vec<_>>());
    for row in &rows {
        let rec = StoredRecord::decode(row.payload.as_slice()).unwrap();
        assert_eq!(rec.seq, row.seq);
    }
    // Marked across the old rows and into the new one: the new row is sent up to seq 5.
    assert_eq!(
        reader.mark_sent(Stream::Observations, "a", 2, 5).unwrap(),
        4
    );
    assert_eq!(reader.exact_counts().unwrap(), (8, 3));
    let c = reader.counts().unwrap();
    assert_eq!((c.records, c.unsent), (8, 3));
    assert_eq!(seqs_of(reader.fetch_unsent(100).unwrap()), vec![6, 7, 8]);
    assert_eq!(
        count(
            &reader,
            "SELECT COUNT(*) FROM record_seqs WHERE device_id = 'a' AND sent = 0"
        ),
        3
    );
    // A retry of a message stored by the older gateway is still recognised (its table),
    // and so is one stored since.
    let r = db.commit_batch(&[batch("a", Some("old-2"), 2), batch("a", Some("m9"), 5)]);
    assert_eq!(r[0].as_ref().unwrap(), &duplicate(2, 3));
    assert_eq!(r[1].as_ref().unwrap(), &duplicate(4, 8));
    // Opening it again changes nothing.
    drop((db, reader));
    let (_db, reader) = open(dir.path());
    assert_eq!(seqs_of(reader.fetch_unsent(100).unwrap()), vec![6, 7, 8]);
}

#[test]
fn a_message_is_one_row_marked_sent_in_parts_and_never_with_a_hole() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path());
    // 150 readings: rows of ROW_MAX (1..=64, 65..=128) and the rest (129..=150).
    db.commit_batch(&[batch("a", Some("big"), 150)]);
    let rows: Vec<(i64, i64)> = {
        let mut stmt = reader
            .conn
            .prepare("SELECT seq, n FROM records WHERE kind = 1 ORDER BY seq")
            .unwrap();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.map(Result::unwrap).collect()
    };
    assert_eq!(rows, vec![(1, 64), (65, 64), (129, 22)]);
    // A fetch may end inside a row, and the next one starts after it.
    let first: Vec<u64> = reader
        .fetch_unsent(10)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(first, (1..=10).collect::<Vec<_>>());
    assert_eq!(
        reader.mark_sent(Stream::Observations, "a", 1, 10).unwrap(),
        10
    );
    let next: Vec<u64> = reader
        .fetch_unsent(60)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(next, (11..=70).collect::<Vec<_>>());
    // A range starting inside a row's unsent records would leave a hole: nothing is marked
    // (those records are forwarded again, never marked sent undelivered).
    assert_eq!(
        reader.mark_sent(Stream::Observations, "a", 20, 30).unwrap(),
        0
    );
    assert_eq!(reader.counts().unwrap().unsent, 140);
    // Ranges that follow on: the first row ends sent, the second is sent up to 70.
    assert_eq!(
        reader
            .mark_sent_many(&[range("a", 11, 40), range("a", 41, 70)])
            .unwrap(),
        60
    );
    assert_eq!(reader.exact_counts().unwrap(), (150, 80));
    assert_eq!(
        count(&reader, "SELECT COUNT(*) FROM records WHERE sent = 1"),
        1
    );
    assert_eq!(
        count(&reader, "SELECT sent_upto FROM records WHERE seq = 65"),
        70
    );
    // Idempotent, and a range reaching past the last stored seq marks what is there.
    assert_eq!(
        reader.mark_sent(Stream::Observations, "a", 1, 70).unwrap(),
        0
    );
    assert_eq!(
        reader
            .mark_sent(Stream::Observations, "a", 71, 500)
            .unwrap(),
        80
    );
    assert_eq!(reader.exact_counts().unwrap(), (150, 0));
    assert!(reader.fetch_unsent(100).unwrap().is_empty());
}

#[test]
fn a_run_row_reads_back_compressed_or_not_and_a_damaged_one_is_an_error() {
    let records: Vec<Vec<u8>> = (1..=3u64)
        .map(|seq| {
            StoredRecord {
                gateway_id: "gw".into(),
                device_id: "a".into(),
                seq,
                body: Some(stored_record::Body::Observation(Observation {
                    seq,
                    ..obs(seq as f64)
                })),
                traceparent: String::new(),
            }
            .encode_to_vec()
        })
        .collect();
    let run = icu_protos::v1::StoredRecordRun {
        records: records
            .iter()
            .map(|r| StoredRecord::decode(r.as_slice()).unwrap())
            .collect(),
    }
    .encode_to_vec();
    assert_eq!(row_records(3, &run).unwrap(), records);
    let mut frame = Vec::new();
    compress_run(&run, &mut frame).unwrap();
    assert!(frame.starts_with(&ZSTD_MAGIC) && frame.len() < run.len());
    assert_eq!(row_records(3, &frame).unwrap(), records);
    // The row's count must match, and a cut frame is refused, never half read.
    assert!(row_records(2, &frame).unwrap_err().contains("row says 2"));
    assert!(row_records(3, &frame[..frame.len() - 4]).is_err());
    assert!(row_records(3, &run[..run.len() - 1]).is_err());
}

#[test]
fn long_readings_split_rows_by_size_and_a_damaged_row_never_stops_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path());
    // Three readings of 1.5 MiB each (a PID-3 nobody bounded): rows stay under RUN_BYTES.
    let long = WriteRequest::Observations(ObservationBatch {
        device_id: "a".into(),
        bed: "bed-1".into(),
        dedup: None,
        observations: (0..3)
            .map(|i| Observation {
                reported_patient_id: format!("{i}").repeat(1_500_000),
                ..obs(90.0)
            })
            .collect(),
        order: Default::default(),
        traceparent: None,
        waveforms: Default::default(),
    });
    assert!(db
        .commit_batch(&[long, batch("b", None, 5)])
        .iter()
        .all(|r| r.is_ok()));
    assert_eq!(
        seqs(&reader, 1, "a"),
        vec![1, 2, 3],
        "records stay gapless across rows"
    );
    assert!(
        count(
            &reader,
            "SELECT COUNT(*) FROM records WHERE device_id = 'a'"
        ) >= 2
    );
    let rows = reader.fetch_unsent(100).unwrap();
    for r in rows.iter().filter(|r| r.device_id == "a") {
        let rec = StoredRecord::decode(r.payload.as_slice()).unwrap();
        let Some(stored_record::Body::Observation(o)) = rec.body else {
            panic!("not an observation")
        };
        assert_eq!(o.reported_patient_id.len(), 1_500_000);
        assert_eq!(o.seq, r.seq);
    }
    // Device b's row damaged on disk: its seqs come out without a body (the bridge skips
    // them); a's records and everything else are still forwarded.
    reader
        .conn
        .execute(
            "UPDATE records SET payload = x'28b52ffd0000' WHERE device_id = 'b'",
            [],
        )
        .unwrap();
    let rows = reader.fetch_unsent(100).unwrap();
    let b: Vec<(u64, usize)> = rows
        .iter()
        .filter(|r| r.device_id == "b")
        .map(|r| (r.seq, r.payload.len()))
        .collect();
    assert_eq!(b, (1..=5).map(|s| (s, 0)).collect::<Vec<_>>());
    assert_eq!(rows.iter().filter(|r| r.device_id == "a").count(), 3);
}

#[test]
fn a_retried_message_is_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path());
    db.commit_batch(&[batch("a", Some("m1"), 3)]);
    let r = db.commit_batch(&[batch("a", Some("m1"), 3)]);
    assert_eq!(r[0].as_ref().unwrap(), &duplicate(1, 3));
    assert_eq!(reader.counts().unwrap().records, 3);
}

#[test]
fn retries_are_recognised_in_the_same_batch_after_a_restart_and_among_the_last_window() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path());
    // The same message twice in one group commit, and one of 70 readings (two rows).
    let r = db.commit_batch(&[
        batch("a", Some("m1"), 3),
        batch("a", Some("m1"), 3),
        batch("a", Some("big"), 70),
    ]);
    assert_eq!(r[1].as_ref().unwrap(), &duplicate(1, 3));
    assert_eq!(reader.exact_counts().unwrap(), (73, 73));
    // Same control id, other bytes: a new message.
    let other = WriteRequest::Observations(ObservationBatch {
        device_id: "a".into(),
        bed: "bed-1".into(),
        dedup: Some(("m1".into(), digest(b"other bytes"))),
        observations: vec![obs(1.0)].into(),
        order: Default::default(),
        traceparent: None,
        waveforms: Default::default(),
    });
    assert_eq!(
        db.commit_batch(std::slice::from_ref(&other))[0]
            .as_ref()
            .unwrap(),
        &stored(74, 74)
    );
    // After a restart the window comes back from the rows.
    drop(db);
    let mut db = StoreDb::open(&dir.path().join("s.db"), "gw", true, 1 << 30).unwrap();
    let r = db.commit_batch(&[batch("a", Some("big"), 70), other.clone()]);
    assert_eq!(r[0].as_ref().unwrap(), &duplicate(4, 73));
    assert_eq!(r[1].as_ref().unwrap(), &duplicate(74, 74));
    // The window holds the device's last DEDUP_WINDOW messages: "big" (the oldest still
    // recognised after this many) and not the first "m1".
    let later: Vec<WriteRequest> = (0..DEDUP_WINDOW - 2)
        .map(|i| batch("a", Some(&format!("n{i}")), 1))
        .collect();
    assert!(db
        .commit_batch(&later)
        .iter()
        .all(|r| matches!(r, Ok(WriteOutcome::Stored { .. }))));
    let r = db.commit_batch(&[batch("a", Some("big"), 70), batch("b", Some("m1"), 3)]);
    assert!(
        matches!(r[0], Ok(WriteOutcome::Duplicate { first_seq: 4, .. })),
        "{r:?}"
    );
    assert!(
        matches!(r[1], Ok(WriteOutcome::Stored { first_seq: 1, .. })),
        "{r:?}"
    );
    // After a restart: the last DEDUP_WINDOW rows, whole messages only.
    drop(db);
    let mut db = StoreDb::open(&dir.path().join("s.db"), "gw", true, 1 << 30).unwrap();
    assert_eq!(
        db.commit_batch(&[batch("a", Some("n0"), 1)])[0]
            .as_ref()
            .unwrap(),
        &duplicate(75, 75)
    );
    assert!(matches!(
        db.commit_batch(&[batch("a", Some("big"), 70)])[0],
        Ok(WriteOutcome::Stored { .. })
    ));
}

#[test]
fn a_failing_request_stores_nothing_and_consumes_no_seq() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path());
    db.commit_batch(&[batch("a", None, 2)]);
    // A real SQLite failure inside the real file, half-way through a request: a message of
    // 70 readings is two rows (seqs 3..=66 and 67..=72); refuse the second.
    reader
        .conn
        .execute_batch(
            "CREATE TRIGGER fail BEFORE INSERT ON records WHEN NEW.seq = 67 AND NEW.device_id = 'a'
             BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END;",
        )
        .unwrap();
    let r = db.commit_batch(&[batch("a", Some("m2"), 70), batch("b", None, 1)]);
    assert!(matches!(r[0], Err(StoreError::Sqlite { .. })), "{r:?}");
    assert_eq!(r[1].as_ref().unwrap(), &stored(1, 1));
    let c = reader.counts().unwrap();
    assert_eq!(
        c.records, 3,
        "device a keeps only its first 2 rows, b has 1"
    );
    assert_eq!(c.per_device_next_seq["a"], 3);
    assert_eq!(reader.exact_counts().unwrap(), (3, 3));
    reader.conn.execute_batch("DROP TRIGGER fail").unwrap();
    let r = db.commit_batch(&[batch("a", Some("m2"), 70)]);
    assert_eq!(r[0].as_ref().unwrap(), &stored(3, 72));
    let a: Vec<u64> = reader
        .fetch_unsent(100)
        .unwrap()
        .iter()
        .filter(|r| r.device_id == "a")
        .map(|r| r.seq)
        .collect();
    assert_eq!(a, (1..=72).collect::<Vec<u64>>());
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

/// `n` readings of `device`, received from `t0_us` on, one per millisecond.
/// Readings as varied as real ones (values and device times differ), so they compress
/// about as much as a monitor's: the budget tests count pages.
fn batch_at(device: &str, control: &str, n: usize, t0_us: i64) -> WriteRequest {
    WriteRequest::Observations(ObservationBatch {
        device_id: device.into(),
        bed: "bed-1".into(),
        dedup: Some((control.to_string(), digest(control.as_bytes()))),
        observations: (0..n)
            .map(|i| {
                let t = t0_us + i as i64 * 1000;
                let noise = digest(&t.to_le_bytes());
                Observation {
                    receive_time_us: t,
                    device_time_us: Some(t - (noise & 0xfffff)),
                    patient_id: format!("MRN{}", noise & 0xffff),
                    ..obs(80.0 + (noise % 2000) as f64 / 97.0)
                }
            })
            .collect(),
        order: Default::default(),
        traceparent: None,
        waveforms: Default::default(),
    })
}

fn alarm(device: &str, t: i64) -> WriteRequest {
    WriteRequest::Alarm(AlarmWrite {
        device_id: device.into(),
        bed: "bed-1".into(),
        alarm: Alarm {
            alarm_id: format!("bed-1:limit:spo2:{t}"),
            text: "SpO2 84 < 90".into(),
            event_time_us: t,
            ..Default::default()
        },
    })
}

/// `messages` batches of 50 readings for `device`, the first received at `t0_us`.
fn fill(db: &mut StoreDb, device: &str, messages: usize, t0_us: i64) {
    for m in 0..messages {
        let t = t0_us + m as i64 * 50_000;
        let r = db.commit_batch(&[batch_at(device, &format!("{device}-{m}"), 50, t)]);
        assert!(r[0].is_ok(), "{r:?}");
    }
}

pub(super) fn count(reader: &ReaderDb, sql: &str) -> i64 {
    reader.conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

pub(super) fn seqs(reader: &ReaderDb, kind: i64, device: &str) -> Vec<i64> {
    let mut stmt = reader
        .conn
        .prepare("SELECT seq, n FROM records WHERE kind = ?1 AND device_id = ?2 ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map(params![kind, device], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .unwrap();
    rows.map(|r| r.unwrap())
        .flat_map(|(seq, n)| seq..seq + n)
        .collect()
}

/// Gives `db` a budget that puts the bytes in use at `pct` percent of it (the write-ahead
/// log allowance depends on the budget: iterate to the fixed point); returns the bytes in use.
fn budget_at(db: &mut StoreDb, pct: u64, on_full: OnFull, chunk: usize) -> u64 {
    for _ in 0..20 {
        let used = db.used_bytes().unwrap();
        db.set_policy(BudgetPolicy {
            on_full,
            prune_chunk: chunk,
            ..BudgetPolicy::with_budget(used * 100 / pct)
        });
    }
    let used = db.used_bytes().unwrap();
    let budget = db.policy().budget_bytes;
    assert!(
        used * 100 / budget == pct || used * 100 / budget + 1 == pct,
        "{used} of {budget}"
    );
    used
}

const T0: i64 = 1_700_000_000_000_000;

#[test]
fn pruning_deletes_forwarded_records_oldest_first_and_keeps_unsent_and_alarms_last() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path());
    // Device b's readings are all older than device a's; 50 readings per message (row).
    fill(&mut db, "b", 40, T0);
    fill(&mut db, "a", 40, T0 + 3_600_000_000);
    for i in 0..10 {
        assert!(db.commit_batch(&[alarm("a", T0 + i)])[0].is_ok());
    }
    reader
        .mark_sent(Stream::Observations, "a", 1, 1500)
        .unwrap();
    reader.mark_sent(Stream::Observations, "b", 1, 500).unwrap();
    reader.mark_sent(Stream::Alarms, "a", 1, 10).unwrap();
    // 95 % of the budget: above the 90 % high-water mark, below the budget: one round.
    let before = budget_at(&mut db, 95, OnFull::Refuse, 500);
    assert!(db.commit_batch(&[]).is_empty());
    let s = db.budget_status().clone();
    assert!(s.pruning, "{s:?}");
    assert_eq!(s.pruned_sent_records, 500, "one bounded round: {s:?}");
    assert_eq!(s.pruned_unsent_observations, 0);
    // The oldest forwarded first: all of b's (older), none of a's yet.
    assert_eq!(seqs(&reader, 1, "b").first(), Some(&501));
    assert_eq!(seqs(&reader, 1, "a").first(), Some(&1));
    assert_eq!(
        count(&reader, "SELECT COUNT(*) FROM records WHERE kind = 2"),
        10
    );
    assert!(
        s.used_bytes < before,
        "deleted records count as freed: {} -> {}",
        before,
        s.used_bytes
    );
    // Retries are recognised from the rows themselves: nothing in the legacy table.
    assert_eq!(count(&reader, "SELECT COUNT(*) FROM messages"), 0);
    // More rounds: a's forwarded readings, oldest first, until the low-water mark; a's
    // readings alone reach it, so the forwarded alarms are kept (alarms last).
    for _ in 0..10 {
        db.commit_batch(&[]);
    }
    let s = db.budget_status().clone();
    assert!(!s.pruning, "{s:?}");
    assert!(s.used_bytes <= s.low_water_bytes, "{s:?}");
    let a_pruned = s.pruned_sent_records - 500;
    assert!(a_pruned > 0 && a_pruned < 1500, "{s:?}");
    assert_eq!(
        seqs(&reader, 1, "a"),
        (a_pruned as i64 + 1..=2000).collect::<Vec<_>>()
    );
    assert_eq!(
        count(&reader, "SELECT COUNT(*) FROM records WHERE kind = 2"),
        10
    );
    // Over the high-water mark again with a round big enough for everything forwarded:
    // a's forwarded readings first, then the forwarded alarms; the unsent readings stay
    // (on_full = refuse).
    budget_at(&mut db, 95, OnFull::Refuse, 4096);
    for _ in 0..10 {
        db.commit_batch(&[]);
    }
    let s = db.budget_status().clone();
    assert_eq!(s.pruned_sent_records, 2010, "{s:?}");
    assert_eq!(
        count(&reader, "SELECT COUNT(*) FROM records WHERE kind = 2"),
        0
    );
    assert_eq!(
        count(
            &reader,
            "SELECT COALESCE(SUM(n), 0) FROM records WHERE sent = 1"
        ),
        0
    );
    assert_eq!(seqs(&reader, 1, "a"), (1501..=2000).collect::<Vec<_>>());
    assert_eq!(seqs(&reader, 1, "b"), (501..=2000).collect::<Vec<_>>());
    assert_eq!(s.pruned_unsent_observations, 0);
    // Pruned seqs are never reused.
    let r = db.commit_batch(&[batch_at("a", "a-new", 1, T0 + 7_200_000_000)]);
    assert_eq!(r[0].as_ref().unwrap(), &stored(2001, 2001));
}

#[test]
fn forwarded_records_behind_unsent_ones_are_found_and_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path());
    fill(&mut db, "a", 20, T0);
    // Live data forwarded before the backlog: seqs 501..=1000 sent, 1..=500 waiting.
    reader
        .mark_sent(Stream::Observations, "a", 501, 1000)
        .unwrap();
    budget_at(&mut db, 95, OnFull::Refuse, 4096);
    db.commit_batch(&[]);
    assert_eq!(db.budget_status().pruned_sent_records, 500);
    assert_eq!(seqs(&reader, 1, "a"), (1..=500).collect::<Vec<_>>());
}

#[test]
fn drop_oldest_unsent_deletes_the_oldest_readings_counted_and_never_alarms() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path());
    fill(&mut db, "b", 200, T0);
    fill(&mut db, "a", 200, T0 + 3_600_000_000);
    for i in 0..5 {
        db.commit_batch(&[alarm("a", T0 + i)]);
    }
    db.commit_batch(&[WriteRequest::Adt(icu_protos::v1::AdtEvent {
        bed: "bed-1".into(),
        event_time_us: T0,
        ..Default::default()
    })]);
    reader.mark_sent(Stream::Observations, "a", 1, 300).unwrap();
    // At the budget: forwarded records go first, and make room for the new reading.
    let used = budget_at(&mut db, 100, OnFull::DropOldestUnsent, 256);
    let low = db.policy().low_water_bytes();
    assert!(used > low);
    let r = db.commit_batch(&[batch_at("a", "a-new", 5, T0 + 7_200_000_000)]);
    assert!(r[0].is_ok(), "room was made for the new reading: {r:?}");
    let s = db.budget_status().clone();
    assert_eq!(s.pruned_sent_records, 300, "{s:?}");
    assert_eq!(s.pruned_unsent_observations, 0, "{s:?}");
    // Nothing forwarded is left: the oldest unsent readings (device b's) go, in bounded
    // rounds of 256, from b's oldest seq on.
    db.commit_batch(&[]);
    let s = db.budget_status().clone();
    // Whole rows (50 readings here): a slice may end up to ROW_MAX - 1 past its seqs.
    let lost = s.pruned_unsent_observations as i64;
    assert!(lost > 0 && lost % 50 == 0 && lost < 10000, "{s:?}");
    assert_eq!(
        seqs(&reader, 1, "b"),
        (lost + 1..=10000).collect::<Vec<_>>()
    );
    assert_eq!(seqs(&reader, 1, "a"), (301..=10005).collect::<Vec<_>>());
    // Keeps going until the low-water mark, then stops.
    for _ in 0..50 {
        db.commit_batch(&[]);
    }
    let s = db.budget_status().clone();
    assert!(!s.pruning, "{s:?}");
    assert!(s.used_bytes <= s.low_water_bytes, "{s:?}");
    // What is left of each device is its newest readings, without gaps, and the count of
    // deleted unsent readings is exact.
    let (a, b) = (seqs(&reader, 1, "a"), seqs(&reader, 1, "b"));
    assert_eq!(a, (a[0]..=10005).collect::<Vec<_>>());
    assert_eq!(b, (b[0]..=10000).collect::<Vec<_>>());
    assert_eq!(
        s.pruned_unsent_observations,
        (b[0] - 1 + a[0] - 301) as u64,
        "{s:?}"
    );
    assert!(b[0] > lost + 1);
    // Unsent alarms and ADT events are never pruned.
    assert_eq!(
        count(&reader, "SELECT COUNT(*) FROM records WHERE kind = 2"),
        5
    );
    assert_eq!(
        count(&reader, "SELECT COUNT(*) FROM records WHERE kind = 3"),
        1
    );
}

#[test]
fn alarms_and_adt_are_stored_in_the_reserve_while_observations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path());
    fill(&mut db, "a", 20, T0);
    // 102 % of the budget, the reserve up to 110 %.
    budget_at(&mut db, 102, OnFull::Refuse, 4096);
    let mut policy = db.policy().clone();
    policy.alarm_reserve_pct = 10;
    db.set_policy(policy);
    let r = db.commit_batch(&[
        batch_at("a", "a-new", 5, T0 + 1),
        alarm("a", T0 + 2),
        WriteRequest::Adt(icu_protos::v1::AdtEvent {
            bed: "bed-1".into(),
            event_time_us: T0,
            ..Default::default()
        }),
        // A sender's retry of a stored message is still answered as stored.
        batch_at("a", "a-3", 50, T0 + 3 * 50_000),
    ]);
    assert!(
        matches!(r[0], Err(StoreError::BudgetExceeded { .. })),
        "{r:?}"
    );
    assert_eq!(r[1].as_ref().unwrap(), &stored(1, 1));
    assert!(r[2].is_ok(), "{r:?}");
    assert_eq!(r[3].as_ref().unwrap(), &duplicate(151, 200));
    let s = db.budget_status();
    assert!(s.full && s.pruning, "{s:?}");
    assert_eq!(s.refused_requests, 1);
    assert_eq!(s.pruned_unsent_observations, 0);
    assert_eq!(
        count(&reader, "SELECT SUM(n) FROM records WHERE kind = 1"),
        1000
    );
    // Past the reserve, alarms are refused too (nothing is ever half-stored).
    let mut policy = db.policy().clone();
    policy.alarm_reserve_pct = 0;
    db.set_policy(policy);
    let r = db.commit_batch(&[alarm("a", T0 + 3)]);
    assert!(matches!(r[0], Err(StoreError::BudgetExceeded { .. })));
}

/// A rejected input of `n` bytes that do not compress.
fn dead_letter(i: usize, n: usize) -> WriteRequest {
    let raw: Vec<u8> = (0..n)
        .map(|j| digest(&(i * 1_000_003 + j).to_le_bytes()) as u8)
        .collect();
    WriteRequest::DeadLetter(DeadLetter {
        received_us: T0 + i as i64,
        transport: "mqtt".into(),
        peer: "icu/gw/bed/x/device/y/obs/json".into(),
        device_id: None,
        stream_offset: 0,
        ack_code: String::new(),
        error_code: 0,
        location: None,
        reason: "payload does not decode".into(),
        raw_len: raw.len(),
        raw,
    })
}

#[test]
fn a_dead_letter_flood_stops_at_the_high_water_mark_leaving_readings_and_alarms_their_room() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path());
    fill(&mut db, "a", 10, T0);
    budget_at(&mut db, 40, OnFull::Refuse, 4096);
    let policy = db.policy().clone();
    // Hostile input, nothing forwarded (so nothing to prune): kept up to the high-water
    // mark, then refused, counted, and never more.
    let mut kept = 0;
    let mut refused = 0;
    for i in 0..2000 {
        match &db.commit_batch(&[dead_letter(i, 2048)])[0] {
            Ok(WriteOutcome::DeadLettered { .. }) => {
                assert_eq!(refused, 0, "a dead letter kept after one was refused");
                kept += 1;
            }
            Err(StoreError::BudgetExceeded { .. }) => refused += 1,
            other => panic!("{other:?}"),
        }
        if refused == 20 {
            break;
        }
    }
    assert!(kept > 0 && refused == 20, "kept {kept}, refused {refused}");
    let s = db.budget_status().clone();
    assert!(s.used_bytes >= policy.high_water_bytes(), "{s:?}");
    assert!(s.used_bytes < policy.budget_bytes, "{s:?}");
    assert_eq!(s.refused_dead_letters, 20, "{s:?}");
    assert_eq!(s.refused_requests, 20, "{s:?}");
    assert!(
        !s.full,
        "refused dead letters alone do not make the store full: {s:?}"
    );
    assert_eq!(
        count(&reader, "SELECT COUNT(*) FROM dead_letters"),
        kept as i64
    );
    // Readings still have the room up to the budget, alarms theirs above it.
    let r = db.commit_batch(&[
        batch_at("a", "a-after-flood", 5, T0 + 1),
        alarm("a", T0 + 2),
    ]);
    assert_eq!(r[0].as_ref().unwrap(), &stored(501, 505));
    assert!(r[1].is_ok(), "{r:?}");
    let mut m = 0;
    loop {
        m += 1;
        let r = db.commit_batch(&[batch_at("a", &format!("a-fill-{m}"), 50, T0 + m * 50_000)]);
        if r[0].is_err() {
            assert!(
                matches!(r[0], Err(StoreError::BudgetExceeded { .. })),
                "{r:?}"
            );
            break;
        }
        assert!(m < 10_000, "the budget never refused a reading");
    }
    let s = db.budget_status().clone();
    assert!(s.full && s.used_bytes >= policy.budget_bytes, "{s:?}");
    assert_eq!(s.refused_dead_letters, 20, "{s:?}");
    assert!(db.commit_batch(&[alarm("a", T0 + 3)])[0].is_ok());
    assert!(matches!(
        db.commit_batch(&[dead_letter(9999, 16)])[0],
        Err(StoreError::BudgetExceeded { .. })
    ));
    assert_eq!(db.budget_status().refused_dead_letters, 21);
}

/// The budget counts the whole file: the census and the clinicians' limit rows, written
/// through their own connections to the same file, take from the same budget.
#[test]
fn rows_written_by_other_connections_to_the_file_count_against_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (db, reader) = open(dir.path());
    let before = db.used_bytes().unwrap();
    reader
        .conn
        .execute_batch(
            "CREATE TABLE other_rows (v BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
             INSERT INTO other_rows SELECT randomblob(4096) FROM n;",
        )
        .unwrap();
    let after = db.used_bytes().unwrap();
    assert!(after >= before + 200 * 4096, "{before} -> {after}");
}

/// Ordered writes (MQTT): after one of a device is refused, its later `InOrder` writes in
/// the same batch are deferred, other devices and independent writes are not; a retry passes.
#[test]
fn a_refused_ordered_write_defers_the_later_ones_of_its_device_in_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path());
    let ordered = |device: &str, control: &str, n: usize, order: WriteOrder| {
        let WriteRequest::Observations(mut b) = batch(device, Some(control), n) else {
            unreachable!()
        };
        b.order = order;
        WriteRequest::Observations(b)
    };
    // A real SQLite failure of that request alone (as in
    // `a_failing_request_stores_nothing_and_consumes_no_seq`): device a's message of 70
    // readings fails at its second row; its later ones (one reading each) would fit.
    db.commit_batch(&[batch("a", None, 2)]);
    reader
        .conn
        .execute_batch(
            "CREATE TRIGGER fail BEFORE INSERT ON records WHEN NEW.seq = 67 AND NEW.device_id = 'a'
             BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END;",
        )
        .unwrap();
    let r = db.commit_batch(&[
        ordered("a", "m1", 70, WriteOrder::InOrder),
        ordered("a", "m2", 1, WriteOrder::InOrder),
        ordered("b", "m1", 1, WriteOrder::InOrder),
        ordered("a", "m3", 1, WriteOrder::Retry { release: true }),
        batch("a", Some("m4"), 1),
    ]);
    assert!(matches!(r[0], Err(StoreError::Sqlite { .. })), "{r:?}");
    let kinds: Vec<&str> = r
        .iter()
        .map(|r| match r {
            Ok(_) => "ok",
            Err(StoreError::Deferred { .. }) => "deferred",
            Err(_) => "failed",
        })
        .collect();
    assert_eq!(kinds[1..], ["deferred", "ok", "ok", "ok"], "{r:?}");
}

#[test]
fn direct_observation_encoding_decodes_identically() {
    let full = Observation {
        device_id: "mon-01".into(),
        mdc_code: 150456,
        mdc_refid: "MDC_PULS_OXIM_SAT_O2".into(),
        value: Some(97.5),
        value_text: "97.5".into(),
        unit_ucum: "%".into(),
        unit_mdc_code: 262688,
        containment_id: "1.1.1.1".into(),
        device_time_us: Some(-5),
        receive_time_us: T0,
        clock_synced: true,
        status: 1,
        limit_low: Some(90.0),
        limit_high: Some(100.0),
        abnormal_flags: "L~N".into(),
        bed: "bed-01".into(),
        equipment_id: "0012AB00000000B2".into(),
        reported_patient_id: "123".into(),
        loinc: "59408-5".into(),
        patient_id: "P-1".into(),
        source_message_id: "MSG1".into(),
        ..Default::default()
    };
    for (o, gateway, device, seq) in [
        (full.clone(), "gw-1", "mon-01", 1u64),
        (full.clone(), "gw-1", "mon-01", u64::MAX),
        (obs(1.0), "", "", 300),
        (Observation::default(), "g", "d", 128),
        (
            Observation {
                seq: 9,
                ..full.clone()
            },
            "gw-1",
            "mon-01",
            10,
        ),
    ] {
        for traceparent in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            let mut buf = Vec::new();
            encode_observation_record(gateway, device, seq, &o, traceparent, &mut buf);
            let canonical = StoredRecord {
                gateway_id: gateway.into(),
                device_id: device.into(),
                seq,
                body: Some(stored_record::Body::Observation(Observation {
                    seq,
                    ..o.clone()
                })),
                traceparent: traceparent.into(),
            };
            assert_eq!(StoredRecord::decode(&buf[..]).unwrap(), canonical);
            assert_eq!(buf.len(), canonical.encoded_len());
        }
    }
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

fn range(device: &str, first: u64, last: u64) -> SentRange {
    SentRange {
        stream: Stream::Observations,
        device_id: device.into(),
        first_seq: first,
        last_seq: last,
    }
}

#[test]
fn marking_sent_while_the_writer_commits_never_fails() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.db");
    let mut db = StoreDb::open(&p, "gw", false, 1 << 30).unwrap();
    let reader = ReaderDb::open(&p, false).unwrap();
    assert!(db.commit_batch(&[batch("a", None, 64)])[0].is_ok());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for r in db.commit_batch(&[batch("b", None, 5)]) {
                    r.expect("writer");
                }
            }
        })
    };
    // Each mark reads its rows, then updates them, while commits land in between.
    let marked: Result<Vec<usize>, StoreError> = (0..64)
        .map(|i| reader.mark_sent_many(&[range("a", i + 1, i + 1)]))
        .collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert_eq!(marked.unwrap(), vec![1; 64]);
    assert!(reader
        .fetch_unsent(100)
        .unwrap()
        .iter()
        .all(|r| r.device_id == "b"));
}

#[test]
fn mark_sent_many_is_one_transaction_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path());
    db.commit_batch(&[batch("a", None, 6), batch("b", None, 4)]);
    // Consecutive ranges of a device are merged; overlapping and repeated ones are harmless.
    let ranges = [
        range("a", 1, 2),
        range("a", 3, 4),
        range("b", 1, 2),
        range("b", 2, 3),
    ];
    assert_eq!(reader.mark_sent_many(&ranges).unwrap(), 7);
    assert_eq!(reader.mark_sent_many(&ranges).unwrap(), 0, "idempotent");
    assert_eq!(reader.counts().unwrap().unsent, 3);
    assert_eq!(reader.exact_counts().unwrap(), (10, 3));

    // A real SQLite failure on b's range: a's range of the same call is not marked either.
    reader
        .conn
        .execute_batch(
            "CREATE TRIGGER fail BEFORE UPDATE ON records WHEN NEW.device_id = 'b'
             BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END;",
        )
        .unwrap();
    assert!(reader
        .mark_sent_many(&[range("a", 5, 6), range("b", 4, 4)])
        .is_err());
    assert_eq!(reader.exact_counts().unwrap(), (10, 3));
    assert_eq!(reader.mark_sent_many(&[range("a", 5, 6)]).unwrap(), 2);
    let c = reader.counts().unwrap();
    assert_eq!((c.records, c.unsent), (10, 1));
    assert_eq!(
        reader.unsent_by_stream().unwrap(),
        [(Stream::Observations, 1)]
    );
}

/// The gateway's `audit_log` as its audit module creates it (columns only; the store reads it).
fn audit_trail(reader: &ReaderDb, seqs: &[u64]) {
    reader
        .conn
        .execute_batch(
            "CREATE TABLE audit_log (seq INTEGER PRIMARY KEY, time_us INTEGER NOT NULL,
             clock_synced INTEGER NOT NULL, account TEXT NOT NULL, role TEXT NOT NULL,
             source TEXT NOT NULL, action TEXT NOT NULL, target_kind TEXT NOT NULL,
             target_id TEXT NOT NULL, bed TEXT, old_value TEXT, new_value TEXT,
             outcome TEXT NOT NULL, reason TEXT, prev_hash BLOB NOT NULL, hash BLOB NOT NULL,
             key_id TEXT NOT NULL, signature BLOB NOT NULL)",
        )
        .unwrap();
    for &seq in seqs {
        reader
            .conn
            .execute(
                "INSERT INTO audit_log VALUES (?1, ?2, 1, 'nurse.jo', 'nurse', '10.0.0.7:5', \
                 'acknowledge', 'alarm', 'mon-1:spo2', 'bed-1', NULL, 'acknowledged', 'success', \
                 NULL, zeroblob(32), randomblob(32), 'k1', randomblob(64))",
                params![seq as i64, 1_700_000_000_000_000 + seq as i64],
            )
            .unwrap();
    }
}

fn audit_keys(reader: &ReaderDb, limit: usize) -> Vec<(Stream, String, u64)> {
    reader
        .fetch_unsent(limit)
        .unwrap()
        .into_iter()
        .map(|r| (r.stream, r.device_id, r.seq))
        .collect()
}

#[test]
fn audit_entries_are_read_in_place_after_alarms_and_adt_and_marked_as_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path());
    // A file without the audit trail has an empty audit stream.
    assert!(audit_keys(&reader, 10).is_empty());
    audit_trail(&reader, &[1, 2, 3, 5]);
    let r = db.commit_batch(&[batch("a", Some("m1"), 1), alarm("a", 1)]);
    assert!(r.iter().all(Result::is_ok), "{r:?}");

    let audit = |seq| (Stream::Audit, icu_outbox::AUDIT_DEVICE.to_owned(), seq);
    assert_eq!(
        audit_keys(&reader, 10),
        [
            (Stream::Alarms, "a".into(), 1),
            audit(1),
            audit(2),
            audit(3),
            audit(5),
            (Stream::Observations, "a".into(), 1)
        ],
        "after alarms, before observations; a missing seq (4) is not waited for"
    );
    // Every column of the row, as the proto the bridge maps.
    let row = reader
        .fetch_unsent(10)
        .unwrap()
        .into_iter()
        .find(|r| r.stream == Stream::Audit)
        .unwrap();
    let rec = StoredRecord::decode(row.payload.as_slice()).unwrap();
    let Some(stored_record::Body::AuditEntry(e)) = rec.body else {
        panic!("{rec:?}")
    };
    assert_eq!(
        (
            e.seq,
            e.account.as_str(),
            e.action.as_str(),
            e.bed.as_deref()
        ),
        (1, "nurse.jo", "acknowledge", Some("bed-1"))
    );
    assert_eq!(
        (e.old_value, e.new_value.as_deref()),
        (None, Some("acknowledged"))
    );
    assert!(e.clock_synced);
    assert_eq!(
        (e.prev_hash.len(), e.hash.len(), e.signature.len()),
        (32, 32, 64)
    );

    // Only a prefix moves the mark; marking again changes nothing.
    assert_eq!(reader.mark_sent(Stream::Audit, "audit", 3, 3).unwrap(), 0);
    assert_eq!(reader.mark_sent(Stream::Audit, "audit", 1, 2).unwrap(), 2);
    assert_eq!(reader.mark_sent(Stream::Audit, "audit", 1, 2).unwrap(), 0);
    assert_eq!(
        reader
            .unsent_by_stream()
            .unwrap()
            .iter()
            .find(|(s, _)| *s == Stream::Audit),
        Some(&(Stream::Audit, 3))
    );
    // Across the hole: 5 follows 3.
    assert_eq!(reader.mark_sent(Stream::Audit, "audit", 3, 3).unwrap(), 1);
    assert_eq!(reader.mark_sent(Stream::Audit, "audit", 5, 5).unwrap(), 1);
    assert!(!audit_keys(&reader, 10).iter().any(|k| k.0 == Stream::Audit));
    // Entries appended later are fetched from the mark on; the store never deletes them.
    audit_trail_append(&reader, 6);
    assert_eq!(audit_keys(&reader, 10)[1], audit(6));
    assert_eq!(count(&reader, "SELECT count(*) FROM audit_log"), 5);
    // The in-flight fetch starts behind the records in flight.
    let mut in_flight = icu_outbox::InFlightRuns::new();
    in_flight.insert((Stream::Audit, "audit".into()), 6);
    let after = reader
        .fetch_after(&FetchRequest::all(10), &in_flight)
        .unwrap();
    assert!(!after.records.iter().any(|r| r.stream == Stream::Audit));
}

fn audit_trail_append(reader: &ReaderDb, seq: u64) {
    reader
        .conn
        .execute(
            "INSERT INTO audit_log SELECT ?1, time_us + 1, clock_synced, account, role, source, \
             action, target_kind, target_id, bed, old_value, new_value, outcome, reason, hash, \
             randomblob(32), key_id, randomblob(64) FROM audit_log ORDER BY seq DESC LIMIT 1",
            params![seq as i64],
        )
        .unwrap();
}
