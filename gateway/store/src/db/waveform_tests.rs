//! Tests of waveform segments in the store (`db/waveforms.rs` and the writer): round trip,
//! seqs, retries, drain order, the waveform limit, pruning and retention. Real SQLite files.

use icu_outbox::{FetchRequest, Outbox};
use icu_protos::v1::{AlarmSnippet, SampleRun, WaveformSegment};

use super::tests::{count, seqs};
use super::*;
use crate::{SqliteOutbox, StoreConfig};

const T0: i64 = 1_700_000_000_000_000;

/// One channel of `n` positions starting at `t_us`: a curve of `i32` extremes and ordinary
/// values, every 50th position a gap, every field set.
fn segment(device: &str, code: u32, n: u32, t_us: i64) -> WaveformSegment {
    let gaps: Vec<SampleRun> = (0..n)
        .step_by(50)
        .skip(1)
        .map(|start| SampleRun { start, count: 2 })
        .collect();
    let missing: u32 = gaps.iter().map(|g| g.count.min(n - g.start)).sum();
    let samples: Vec<i32> = (0..n - missing)
        .map(|i| match i {
            3 => i32::MIN,
            4 => i32::MAX,
            _ => ((f64::from(i) / 7.0).sin() * 900.0) as i32 + (i as i32 % 3),
        })
        .collect();
    WaveformSegment {
        device_id: device.into(),
        seq: 0,
        bed: "bed-1".into(),
        mdc_code: code,
        mdc_refid: "MDC_ECG_ELEC_POTL_II".into(),
        containment_id: "1.1.1.102".into(),
        unit_ucum: "mV".into(),
        unit_mdc_code: 266_418,
        sample_rate_hz: 500.0,
        sample_period_us: 2000.0,
        decimal_exponent: -1,
        scale: 0.005,
        offset: 0.25,
        range_low: Some(-2000.0),
        range_high: Some(2000.0),
        first_sample_time_us: Some(t_us - 800_000),
        receive_time_us: t_us,
        clock_synced: true,
        device_time_untrusted: true,
        sample_count: n,
        samples,
        gaps,
        below_range: vec![SampleRun { start: 3, count: 1 }],
        above_range: vec![SampleRun { start: 4, count: 1 }],
        equipment_id: "0123456789ABCDEF".into(),
        patient_id: "MRN42".into(),
        source_message_id: "CTRL-1".into(),
        source_row: 5,
        status: 1,
        packed_samples: Vec::new(),
    }
}

/// A message of `device` with `readings` readings and `channels` segments of `n` positions.
fn message(
    device: &str,
    control: &str,
    readings: usize,
    channels: u32,
    n: u32,
    t_us: i64,
) -> WriteRequest {
    WriteRequest::Observations(ObservationBatch {
        device_id: device.into(),
        bed: "bed-1".into(),
        dedup: Some((control.into(), digest(control.as_bytes()))),
        observations: (0..readings)
            .map(|i| Observation {
                mdc_code: 150_456,
                value: Some(90.0 + i as f64),
                receive_time_us: t_us,
                ..Default::default()
            })
            .collect(),
        order: Default::default(),
        traceparent: None,
        waveforms: (0..channels)
            .map(|c| segment(device, 131_329 + c, n, t_us))
            .collect(),
    })
}

fn waveforms_of(req: &WriteRequest) -> Vec<WaveformSegment> {
    match req {
        WriteRequest::Observations(b) => b.waveforms.to_vec(),
        _ => Vec::new(),
    }
}

fn config(dir: &Path) -> StoreConfig {
    crate::StoreSettings::default().config(dir.join("s.db"))
}

fn open(dir: &Path) -> (StoreDb, SqliteOutbox, ReaderDb) {
    let cfg = config(dir);
    let db = StoreDb::open_with_policy(&cfg.path, "gw", false, cfg.budget_policy()).unwrap();
    (
        db,
        SqliteOutbox::open(&cfg).unwrap(),
        ReaderDb::open(&cfg.path, false).unwrap(),
    )
}

fn fetch_all(outbox: &SqliteOutbox, limit: usize) -> Vec<icu_outbox::OutboxRecord> {
    outbox
        .fetch_unsent(&FetchRequest::all(limit))
        .unwrap()
        .records
}

/// Seqs of one stream still stored, spread over their rows.
fn stored_seqs(reader: &ReaderDb, kind: Stream, device: &str) -> Vec<i64> {
    seqs(reader, kind.code(), device)
}

/// 20 messages of `mon`, each with `readings` readings and three segments of `n` positions.
fn fill(db: &mut StoreDb, readings: usize, n: u32) {
    for m in 0..20 {
        let r = db.commit_batch(&[message("mon", &format!("a{m}"), readings, 3, n, T0 + m)]);
        assert!(r[0].is_ok());
    }
}

#[test]
fn segments_round_trip_bit_exact_packed_on_disk_with_their_own_gapless_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, outbox, reader) = open(dir.path());
    let messages = [
        // Three leads with two readings: one run row of three segments.
        message("mon", "m1", 2, 3, 400, T0),
        // One channel: a row of its own (bare, the codec's zstd).
        message("mon", "m2", 1, 1, 100, T0 + 800_000),
        // Curves only, no readings.
        message("mon", "m3", 0, 2, 100, T0 + 1_600_000),
        // Another device: its own seqs.
        message("vent", "v1", 1, 1, 100, T0),
    ];
    let r = db.commit_batch(&messages);
    // The answer keeps meaning the readings' seqs.
    let outcomes: Vec<WriteOutcome> = r.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        outcomes,
        [
            WriteOutcome::Stored {
                first_seq: 1,
                last_seq: 2
            },
            WriteOutcome::Stored {
                first_seq: 3,
                last_seq: 3
            },
            WriteOutcome::Stored {
                first_seq: 4,
                last_seq: 3
            },
            WriteOutcome::Stored {
                first_seq: 1,
                last_seq: 1
            },
        ]
    );
    assert_eq!(
        stored_seqs(&reader, Stream::Waveforms, "mon"),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(stored_seqs(&reader, Stream::Observations, "mon"), [1, 2, 3]);
    assert_eq!(stored_seqs(&reader, Stream::Waveforms, "vent"), [1]);
    assert_eq!(db.budget_status().waveforms.segments_stored, 7);
    // On disk the samples are packed: every waveform record has packed samples, none plain.
    let mut stmt = reader
        .conn
        .prepare("SELECT n, payload FROM records WHERE kind = 6")
        .unwrap();
    let rows: Vec<(i64, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 4, "one row per message's segments");
    for (n, payload) in rows {
        for rec in row_records(n as usize, &payload).unwrap() {
            let Some(stored_record::Body::Waveform(w)) =
                StoredRecord::decode(rec.as_slice()).unwrap().body
            else {
                panic!("a waveform row holds waveform records");
            };
            assert!(w.samples.is_empty() && !w.packed_samples.is_empty());
        }
    }
    // Through the outbox: every field as it was given, seq set, samples unpacked.
    let fetched = fetch_all(&outbox, 100);
    let got: Vec<(String, u64, WaveformSegment)> = fetched
        .iter()
        .filter(|r| r.stream == Stream::Waveforms)
        .map(|r| match &r.record.body {
            Some(stored_record::Body::Waveform(w)) => {
                assert_eq!(r.record.seq, r.seq);
                (r.device_id.clone(), r.seq, w.clone())
            }
            other => panic!("{other:?}"),
        })
        .collect();
    let mut want = Vec::new();
    let mut next: std::collections::HashMap<&str, u64> = Default::default();
    for (req, device) in messages.iter().zip(["mon", "mon", "mon", "vent"]) {
        for mut w in waveforms_of(req) {
            let seq = next.entry(device).or_insert(0);
            *seq += 1;
            w.seq = *seq;
            want.push((device.to_owned(), *seq, w));
        }
    }
    want.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    assert_eq!(got, want);
}

#[test]
fn the_drain_order_puts_waveforms_after_observations() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, outbox, _) = open(dir.path());
    // The curves are older than the readings: still drained after them.
    assert!(db.commit_batch(&[message("mon", "m1", 0, 3, 100, T0)])[0].is_ok());
    assert!(db.commit_batch(&[message("mon", "m2", 4, 0, 0, T0 + 1_000_000)])[0].is_ok());
    let streams =
        |limit| -> Vec<Stream> { fetch_all(&outbox, limit).iter().map(|r| r.stream).collect() };
    assert_eq!(streams(4), [Stream::Observations; 4]);
    let all = streams(100);
    assert_eq!(all[..4], [Stream::Observations; 4]);
    assert_eq!(all[4..], [Stream::Waveforms; 3]);
}

#[test]
fn a_retried_message_stores_no_second_copy_of_its_segments_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, _, reader) = open(dir.path());
    let with_readings = message("mon", "m1", 2, 3, 100, T0);
    let curves_only = message("mon", "m2", 0, 2, 100, T0 + 800_000);
    let r = db.commit_batch(&[
        with_readings.clone(),
        curves_only.clone(),
        with_readings.clone(),
    ]);
    assert!(matches!(r[2], Ok(WriteOutcome::Duplicate { .. })), "{r:?}");
    let r = db.commit_batch(std::slice::from_ref(&curves_only));
    assert!(matches!(r[0], Ok(WriteOutcome::Duplicate { .. })), "{r:?}");
    assert_eq!(
        stored_seqs(&reader, Stream::Waveforms, "mon"),
        [1, 2, 3, 4, 5]
    );
    drop(db);
    // After a restart the window is loaded from the rows: a message of curves only left none
    // on the observation stream, its waveform rows name it.
    let (mut db, _, _) = open(dir.path());
    let r = db.commit_batch(&[curves_only, with_readings]);
    assert!(
        r.iter()
            .all(|r| matches!(r, Ok(WriteOutcome::Duplicate { .. }))),
        "{r:?}"
    );
    assert_eq!(
        stored_seqs(&reader, Stream::Waveforms, "mon"),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(stored_seqs(&reader, Stream::Observations, "mon"), [1, 2]);
}

#[test]
fn an_alarm_snippet_is_stored_packed_and_read_back_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, outbox, reader) = open(dir.path());
    let snippet = AlarmSnippet {
        device_id: "mon".into(),
        bed: "bed-1".into(),
        alarm_id: "bed-1:limit:hr".into(),
        segments: vec![
            segment("mon", 131_329, 400, T0),
            segment("mon", 131_330, 400, T0),
        ],
        built_time_us: T0,
        ..Default::default()
    };
    let r = db.commit_batch(&[WriteRequest::Snippet(SnippetWrite {
        device_id: "mon".into(),
        bed: "bed-1".into(),
        snippet: snippet.clone(),
    })]);
    assert!(r[0].is_ok(), "{r:?}");
    let payload: Vec<u8> = reader
        .conn
        .query_row("SELECT payload FROM records WHERE kind = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    let Some(stored_record::Body::AlarmSnippet(on_disk)) =
        StoredRecord::decode(payload.as_slice()).unwrap().body
    else {
        panic!("a snippet record");
    };
    assert!(on_disk
        .segments
        .iter()
        .all(|s| s.samples.is_empty() && !s.packed_samples.is_empty()));
    let fetched = fetch_all(&outbox, 10);
    assert_eq!(fetched.len(), 1);
    assert_eq!(
        fetched[0].record.body,
        Some(stored_record::Body::AlarmSnippet(AlarmSnippet {
            seq: 1,
            ..snippet
        }))
    );
}

/// Puts the bytes in use at `pct` percent of the budget (see `tests.rs` `budget_at`) with the
/// waveform limit at `wave_pct`.
fn budget_at(db: &mut StoreDb, pct: u64, wave_pct: u8, chunk: usize) {
    for _ in 0..20 {
        let used = db.used_bytes().unwrap();
        db.set_policy(BudgetPolicy {
            prune_chunk: chunk,
            waveform_budget_pct: wave_pct,
            ..BudgetPolicy::with_budget(used * 100 / pct)
        });
    }
}

#[test]
fn at_the_waveform_limit_readings_are_stored_and_segments_refused_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, _, reader) = open(dir.path());
    fill(&mut db, 5, 2000);
    // 60 % of the budget in use, the waveform limit at 50 %: nothing forwarded to prune.
    budget_at(&mut db, 60, 50, 4096);
    let r = db.commit_batch(&[message("mon", "b1", 5, 3, 2000, T0 + 100)]);
    assert_eq!(
        r[0].as_ref().unwrap(),
        &WriteOutcome::Stored {
            first_seq: 101,
            last_seq: 105
        }
    );
    let s = db.budget_status().clone();
    assert_eq!(s.waveforms.segments_not_stored, 3, "{s:?}");
    assert_eq!(s.waveforms.samples_not_stored, 6000, "{s:?}");
    assert_eq!(s.waveforms.segments_stored, 60, "{s:?}");
    assert_eq!(stored_seqs(&reader, Stream::Waveforms, "mon").len(), 60);
    assert_eq!(stored_seqs(&reader, Stream::Observations, "mon").len(), 105);
    // Once forwarded, curves are pruned to make room for new ones (the readings are not:
    // they are far from the high-water mark).
    reader.mark_sent(Stream::Waveforms, "mon", 1, 60).unwrap();
    reader
        .mark_sent(Stream::Observations, "mon", 1, 105)
        .unwrap();
    // (The writer looked for forwarded curves at the last batch and waits a second.)
    db.next_wave_prune = None;
    let r = db.commit_batch(&[message("mon", "b2", 5, 3, 2000, T0 + 200)]);
    assert!(r[0].is_ok());
    let s = db.budget_status().clone();
    assert_eq!(s.waveforms.pruned_sent, 60, "{s:?}");
    assert_eq!(
        s.waveforms.segments_not_stored, 3,
        "stored this time: {s:?}"
    );
    assert_eq!(stored_seqs(&reader, Stream::Waveforms, "mon"), [61, 62, 63]);
    assert_eq!(stored_seqs(&reader, Stream::Observations, "mon").len(), 110);
}

#[test]
fn pruning_takes_waveforms_before_observations_and_unsent_curves_before_refusing_readings() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, _, reader) = open(dir.path());
    fill(&mut db, 20, 400);
    // Everything but the last 15 segments forwarded; the readings' are older than the curves'
    // everywhere (same messages), yet curves go first.
    reader
        .mark_sent(Stream::Observations, "mon", 1, 400)
        .unwrap();
    reader.mark_sent(Stream::Waveforms, "mon", 1, 45).unwrap();
    // Above the high-water mark (waveform limit at 100 %: only the budget rounds prune).
    budget_at(&mut db, 95, 100, 30);
    db.commit_batch(&[]);
    let s = db.budget_status().clone();
    assert_eq!(
        s.waveforms.pruned_sent, 30,
        "one round of 30, curves only: {s:?}"
    );
    assert_eq!(s.pruned_sent_records, 30, "{s:?}");
    assert_eq!(stored_seqs(&reader, Stream::Observations, "mon").len(), 400);
    // Next round: the 15 forwarded curves left, then forwarded readings.
    budget_at(&mut db, 95, 100, 30);
    db.commit_batch(&[]);
    let s = db.budget_status().clone();
    assert_eq!(s.waveforms.pruned_sent, 45, "{s:?}");
    assert!(stored_seqs(&reader, Stream::Observations, "mon").len() < 400);
    assert_eq!(s.waveforms.pruned_unsent, 0);
    // Nothing forwarded left: unsent curves are deleted (loudly) before any reading is refused
    // or lost, whatever on_full says (refuse here).
    reader
        .conn
        .execute("DELETE FROM records WHERE sent = 1", [])
        .unwrap();
    budget_at(&mut db, 95, 100, 4);
    db.commit_batch(&[]);
    let s = db.budget_status().clone();
    assert!(s.waveforms.pruned_unsent >= 4, "{s:?}");
    assert_eq!(s.pruned_unsent_observations, 0);
    let left = stored_seqs(&reader, Stream::Waveforms, "mon");
    assert_eq!(left.first(), Some(&(46 + s.waveforms.pruned_unsent as i64)));
    assert_eq!(left.last(), Some(&60));
}

#[test]
fn retention_deletes_only_forwarded_waveform_rows_past_the_age() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, _, reader) = open(dir.path());
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let day = 24 * 3600 * 1_000_000i64;
    // Two old messages (2 days), two recent ones (1 hour), each with readings.
    for (m, t) in [
        now_us - 2 * day,
        now_us - 2 * day + 1,
        now_us - day / 24,
        now_us - day / 24 + 1,
    ]
    .into_iter()
    .enumerate()
    {
        let r = db.commit_batch(&[message("mon", &format!("m{m}"), 2, 2, 100, t)]);
        assert!(r[0].is_ok());
    }
    // Forwarded: the first old message's curves and the first recent one's (seqs 1-2, 5-6),
    // and every reading. The second old message's curves (3-4) are unsent.
    reader.mark_sent(Stream::Waveforms, "mon", 1, 2).unwrap();
    reader.mark_sent(Stream::Observations, "mon", 1, 8).unwrap();
    // The bridge marks in seq order; seqs 5-6 with a range that starts at the unsent head's
    // row would leave them: mark them alone (a forwarded row behind an unsent one).
    reader
        .conn
        .execute("UPDATE records SET sent = 1 WHERE kind = 6 AND seq = 5", [])
        .unwrap();
    db.next_wave_retention = std::time::Instant::now();
    db.commit_batch(&[]);
    assert_eq!(db.budget_status().waveforms.expired, 2);
    assert_eq!(
        stored_seqs(&reader, Stream::Waveforms, "mon"),
        [3, 4, 5, 6, 7, 8]
    );
    // Readings are not the waveform retention's.
    assert_eq!(stored_seqs(&reader, Stream::Observations, "mon").len(), 8);
    assert_eq!(
        count(
            &reader,
            "SELECT COUNT(*) FROM records WHERE kind = 6 AND sent = 1"
        ),
        1
    );
}

#[test]
fn a_message_too_big_for_one_row_is_split_into_rows_that_fit_a_page_cell() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, outbox, reader) = open(dir.path());
    // Eight channels of 2000 noisy samples: far more than one cell's worth.
    let mut noise = 0x2545_f491_4f6c_dd1du64;
    let mut req = message("mon", "big", 1, 8, 2000, T0);
    if let WriteRequest::Observations(b) = &mut req {
        let mut segs = b.waveforms.to_vec();
        for s in &mut segs {
            for x in &mut s.samples {
                noise ^= noise << 13;
                noise ^= noise >> 7;
                noise ^= noise << 17;
                *x = (noise % 4096) as i32 - 2048;
            }
        }
        b.waveforms = segs.into();
    }
    assert!(db.commit_batch(std::slice::from_ref(&req))[0].is_ok());
    let sql = "SELECT n, LENGTH(payload) FROM records WHERE kind = 6 ORDER BY seq";
    let mut stmt = reader.conn.prepare(sql).unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, usize>(1)?)));
    let rows: Vec<(i64, usize)> = rows.unwrap().map(Result::unwrap).collect();
    assert!(rows.len() > 1, "{rows:?}");
    assert!(
        rows.iter().all(|&(n, len)| n == 1 || len <= WAVE_ROW_BYTES),
        "{rows:?}"
    );
    assert_eq!(
        stored_seqs(&reader, Stream::Waveforms, "mon"),
        (1..=8).collect::<Vec<_>>()
    );
    let got: Vec<WaveformSegment> = fetch_all(&outbox, 100)
        .into_iter()
        .filter_map(|r| match r.record.body {
            Some(stored_record::Body::Waveform(w)) => Some(w),
            _ => None,
        })
        .collect();
    let want: Vec<WaveformSegment> = waveforms_of(&req)
        .into_iter()
        .zip(1..)
        .map(|(w, seq)| WaveformSegment { seq, ..w })
        .collect();
    assert_eq!(got, want);
}
