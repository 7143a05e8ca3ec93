//! Tests of the trend rollup (`db/trends.rs`) and the trend query (`db/trend_query.rs`).

use std::sync::Arc;
use std::time::Duration;

use icu_protos::v1::{Observation, ObservationStatus};

use super::*;

const MIN: i64 = 60_000_000;
/// A minute boundary an hour ago (rows must be within the retention of now).
fn t0() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    (now / MIN - 60) * MIN
}

fn reading(mdc: u32, v: Option<f64>, t_us: i64) -> Observation {
    Observation {
        mdc_code: mdc,
        value: v,
        status: ObservationStatus::Valid as i32,
        device_time_us: Some(t_us),
        receive_time_us: t_us + 1_000,
        ..Default::default()
    }
}

fn message(device: &str, bed: &str, obs: Vec<Observation>) -> WriteRequest {
    WriteRequest::Observations(ObservationBatch {
        device_id: device.into(),
        bed: bed.into(),
        dedup: None,
        observations: Arc::from(obs),
        order: Default::default(),
        traceparent: None,
        waveforms: Default::default(),
    })
}

fn open(dir: &std::path::Path, flush: Duration) -> (StoreDb, ReaderDb) {
    let p = dir.join("s.db");
    let mut db = StoreDb::open(&p, "gw", false, 1 << 30).unwrap();
    db.set_trend_flush_every(flush);
    (db, ReaderDb::open(&p, false).unwrap())
}

fn query(bed: &str, from: i64, to: i64, bucket_s: u32) -> TrendQuery {
    TrendQuery {
        bed: bed.into(),
        from_us: from,
        to_us: to,
        mdc: Vec::new(),
        bucket_s,
        after: None,
        max_points: MAX_POINTS,
    }
}

fn commit(db: &mut StoreDb, reqs: &[WriteRequest]) {
    for r in db.commit_batch(reqs) {
        r.unwrap();
    }
}

#[test]
fn minutes_aggregate_across_commits_and_leave_out_unusable_readings() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path(), Duration::ZERO);
    let t = t0();
    commit(
        &mut db,
        &[
            message("m1", "b1", vec![reading(150456, Some(97.0), t + 1_000_000)]),
            message("m2", "b2", vec![reading(150456, Some(50.0), t)]),
        ],
    );
    let mut invalid = reading(150456, Some(10.0), t + 3_000_000);
    invalid.status = ObservationStatus::Invalid as i32;
    let mut test = reading(150456, Some(11.0), t + 4_000_000);
    test.status = ObservationStatus::Test as i32;
    // Device time not trusted: trended at its receive time, the next minute.
    let mut untrusted = reading(150456, Some(90.0), t - 3600 * 1_000_000);
    untrusted.device_time_untrusted = true;
    untrusted.receive_time_us = t + MIN + 5_000_000;
    commit(
        &mut db,
        &[message(
            "m1",
            "b1",
            vec![
                reading(150456, Some(93.0), t + 2_000_000),
                reading(150456, None, t + 2_500_000),
                invalid,
                test,
                reading(150456, Some(f64::NAN), t + 5_000_000),
                reading(147842, Some(60.0), t + 2_000_000),
                untrusted,
            ],
        )],
    );
    // An empty batch writes what is pending (the store calls one every second when idle).
    db.commit_batch(&[]);
    let page = reader.trends(&query("b1", t, t + 10 * MIN, 60)).unwrap();
    assert_eq!(page.next, None);
    let by_mdc: Vec<u32> = page.series.iter().map(|s| s.mdc).collect();
    assert_eq!(by_mdc, vec![147842, 150456]);
    let spo2 = &page.series[1].points;
    assert_eq!(spo2.len(), 2, "{spo2:?}");
    assert_eq!(
        spo2[0],
        TrendPoint {
            t: t / 1_000_000,
            min: 93.0,
            max: 97.0,
            mean: 95.0,
            last: 93.0,
            n: 2
        }
    );
    assert_eq!(
        (spo2[1].t, spo2[1].n, spo2[1].last),
        (t / 1_000_000 + 60, 1, 90.0)
    );
    let skipped: i64 = reader
        .conn
        .query_row(
            "SELECT skipped FROM trend_minutes WHERE bed = 'b1' AND mdc = 150456 AND minute = ?1",
            [t / MIN],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(skipped, 4, "absent, invalid, test and NaN");
    // Another bed's readings are its own.
    let b2 = reader.trends(&query("b2", t, t + MIN, 60)).unwrap();
    assert_eq!(b2.series[0].points[0].mean, 50.0);
}

#[test]
fn buckets_fold_minutes_and_pages_neither_repeat_nor_skip() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path(), Duration::ZERO);
    let t = t0() / (15 * MIN) * (15 * MIN);
    // 30 minutes, 3 parameters, 2 readings a minute: value = minute index.
    for m in 0..30i64 {
        let mut obs = Vec::new();
        for mdc in [1u32, 2, 3] {
            for s in [0, 30] {
                obs.push(reading(
                    mdc,
                    Some(m as f64 + f64::from(mdc) * 100.0),
                    t + m * MIN + s * 1_000_000,
                ));
            }
        }
        commit(&mut db, &[message("m1", "b1", obs)]);
    }
    db.commit_batch(&[]);
    let all = reader.trends(&query("b1", t, t + 30 * MIN, 300)).unwrap();
    assert_eq!(all.series.len(), 3);
    let first = all.series[0].points[0];
    assert_eq!(
        (first.t, first.n, first.min, first.max, first.mean, first.last),
        (t / 1_000_000, 10, 100.0, 104.0, 102.0, 104.0)
    );
    assert_eq!(all.series[2].points.len(), 6);
    // Paged by 4 points: the same 18 points, in order.
    let mut q = query("b1", t, t + 30 * MIN, 300);
    q.max_points = 4;
    let mut paged: Vec<(u32, TrendPoint)> = Vec::new();
    let mut pages = 0;
    loop {
        let page = reader.trends(&q).unwrap();
        pages += 1;
        let n: usize = page.series.iter().map(|s| s.points.len()).sum();
        assert!(n <= 4);
        for s in page.series {
            paged.extend(s.points.into_iter().map(|p| (s.mdc, p)));
        }
        match page.next {
            Some(c) => q.after = Some(TrendCursor::parse(&c.token()).unwrap()),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    let whole: Vec<(u32, TrendPoint)> = all
        .series
        .into_iter()
        .flat_map(|s| s.points.into_iter().map(move |p| (s.mdc, p)))
        .collect();
    assert_eq!(paged, whole);
    // Only some parameters; a window that starts inside the data.
    let mut q = query("b1", t + 10 * MIN, t + 20 * MIN, 60);
    q.mdc = vec![2];
    let page = reader.trends(&q).unwrap();
    assert_eq!(page.series.len(), 1);
    assert_eq!(page.series[0].points.len(), 10);
    assert_eq!(page.series[0].points[0].mean, 210.0);
}

#[test]
fn readings_committed_before_a_crash_are_rolled_up_once_when_the_writer_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let t = t0();
    {
        let (mut db, _) = open(dir.path(), Duration::ZERO);
        commit(
            &mut db,
            &[message("m1", "b1", vec![reading(1, Some(1.0), t)])],
        );
        db.commit_batch(&[]);
        // Committed, not yet flushed to the rollup: lost with the process.
        db.set_trend_flush_every(Duration::from_secs(3600));
        commit(
            &mut db,
            &[message(
                "m1",
                "b1",
                vec![reading(1, Some(3.0), t + 1_000_000)],
            )],
        );
        commit(
            &mut db,
            &[message("m2", "b1", vec![reading(2, Some(5.0), t)])],
        );
    }
    let (mut db, reader) = open(dir.path(), Duration::ZERO);
    db.commit_batch(&[]);
    let page = reader.trends(&query("b1", t, t + MIN, 60)).unwrap();
    let p = page.series[0].points[0];
    assert_eq!((p.n, p.mean, p.last), (2, 2.0, 3.0));
    assert_eq!(
        page.series[1].points[0].n, 1,
        "a device new before the crash"
    );
    // Reopening again adds nothing.
    drop(db);
    let (mut db, _) = open(dir.path(), Duration::ZERO);
    db.commit_batch(&[]);
    let again = reader.trends(&query("b1", t, t + MIN, 60)).unwrap();
    assert_eq!(again, page);
}

#[test]
fn minutes_past_the_retention_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, reader) = open(dir.path(), Duration::ZERO);
    let t = t0();
    let old = t - 3 * 24 * 60 * MIN;
    commit(
        &mut db,
        &[message(
            "m1",
            "b1",
            vec![reading(1, Some(1.0), old), reading(1, Some(2.0), t)],
        )],
    );
    db.commit_batch(&[]);
    let count = |r: &ReaderDb| -> i64 {
        r.conn
            .query_row("SELECT COUNT(*) FROM trend_minutes", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(
        count(&reader),
        2,
        "written; the retention pass ran before them and waits a minute"
    );
    assert_eq!(trends::prune(&db.conn, t / MIN - 48 * 60, 100).unwrap(), 1);
    assert_eq!(count(&reader), 1);
    assert_eq!(
        reader
            .trends(&query("b1", t, t + MIN, 60))
            .unwrap()
            .series
            .len(),
        1
    );
}

#[test]
fn queries_out_of_bounds_are_refused_naming_the_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, reader) = open(dir.path(), Duration::ZERO);
    let t = t0();
    let refused = |q: TrendQuery| match reader.trends(&q) {
        Err(TrendError::Invalid(why)) => why,
        other => panic!("{other:?}"),
    };
    assert!(refused(query("b1", t, t, 60)).contains("'to'"));
    assert!(refused(query("b1", t, t + 25 * 60 * MIN, 60)).contains("24 h"));
    assert!(refused(query("b1", t, t + MIN, 90)).contains("bucket_s"));
    let mut q = query("b1", t, t + MIN, 60);
    q.max_points = 0;
    assert!(refused(q).contains("max_points"));
    assert_eq!(TrendCursor::parse("x:1"), None);
    assert!(reader
        .trends(&query("b1", t, t + MIN, 60))
        .unwrap()
        .series
        .is_empty());
}
