use std::path::Path;

use chrono::{TimeZone, Utc};
use icu_drivers::hl7::decode_adt;

use super::*;

/// protocols.md §4.6, the worked examples.
const A01: &str =
    "MSH|^~\\&|ADT_SYS|HOSP|ICU_GW|ICU|20250101080000||ADT^A01^ADT_A01|ADT0001|P|2.5\r\
EVN||20250101080000\r\
PID|1||123456^^^HOSP^MR||DOE^JOHN^Q^^^^L||19600101|M\r\
PV1|1|I|ICU1^101^A^HOSP||||||||||||||||V0001^^^HOSP^VN|||||||||||||||||||||||||20250101080000";
const A02: &str = "MSH|^~\\&|ADT_SYS|HOSP|ICU_GW|ICU|20250102090000||ADT^A02^ADT_A02|ADT0002|P|2.5\r\
EVN||20250102090000\r\
PID|1||123456^^^HOSP^MR||DOE^JOHN^Q^^^^L||19600101|M\r\
PV1|1|I|ICU2^205^B^HOSP|||ICU1^101^A^HOSP|||||||||||||V0001^^^HOSP^VN|||||||||||||||||||||||||20250101080000";
const A03: &str = "MSH|^~\\&|ADT_SYS|HOSP|ICU_GW|ICU|20250105140000||ADT^A03^ADT_A03|ADT0003|P|2.5\r\
EVN||20250105140000\r\
PID|1||123456^^^HOSP^MR||DOE^JOHN^Q^^^^L||19600101|M\r\
PV1|1|I|ICU2^205^B^HOSP||||||||||||||||V0001^^^HOSP^VN|||||||||||||||||||||||||20250101080000|20250105140000";
const A08: &str =
    "MSH|^~\\&|ADT_SYS|HOSP|ICU_GW|ICU|20250103100000||ADT^A08^ADT_A01|ADT0004|P|2.5\r\
EVN||20250103100000\r\
PID|1||123456^^^HOSP^MR||DOE^JONATHAN^Q^^^^L||19600101|M\r\
PV1|1|I|ICU2^205^B^HOSP||||||||||||||||V0001^^^HOSP^VN|||||||||||||||||||||||||20250101080000";

const RECEIVED: i64 = 1_800_000_000_000_000;

fn us(d: u32, h: u32, mi: u32) -> i64 {
    Utc.with_ymd_and_hms(2025, 1, d, h, mi, 0)
        .single()
        .map(|t| t.timestamp_micros())
        .unwrap_or_default()
}

fn beds() -> BedMap {
    [
        ("ICU1^101^A", "bed-01"),
        ("ICU2^205^B", "bed-02"),
        ("ICU1^102^A", "bed-03"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn msg(text: &str) -> AdtMessage {
    decode_adt(text.as_bytes()).expect("valid ADT")
}

/// A constructed ADT message: `event` (A01...), control id, patient, `time` (DDHHMM in January
/// 2025), PV1-3 (may be empty).
fn adt(event: &str, control: &str, patient: &str, time: &str, location: &str) -> AdtMessage {
    let t = format!("202501{time}00");
    msg(&format!(
        "MSH|^~\\&|ADT_SYS|HOSP|ICU_GW|ICU|{t}||ADT^{event}|{control}|P|2.5\r\
         EVN||{t}\r\
         PID|1||{patient}^^^HOSP^MR||FAM{patient}^GIV{patient}||19700101|F\r\
         PV1|1|I|{location}"
    ))
}

fn open(path: &Path) -> Census {
    Census::open(path).expect("census opens")
}

fn who(c: &Census, bed: &str, t: i64) -> Option<String> {
    c.patient_at(bed, t).map(|p| p.patient_id)
}

#[test]
fn worked_messages_move_the_patient_through_the_timeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = open(&dir.path().join("gw.db"));
    let b = beds();

    assert_eq!(
        c.apply(&msg(A01), &b, RECEIVED).expect("A01"),
        ApplyOutcome::Admitted {
            patient_id: "123456".into(),
            bed: "bed-01".into()
        }
    );
    let john = c.patient_at("bed-01", us(1, 8, 0)).expect("admitted");
    assert_eq!(
        john,
        PatientRef {
            patient_id: "123456".into(),
            family: "DOE".into(),
            given: "JOHN".into(),
            stay_start_us: us(1, 8, 0),
        }
    );
    // Readings before admission: no patient.
    assert_eq!(who(&c, "bed-01", us(1, 7, 59)), None);

    assert_eq!(
        c.apply(&msg(A02), &b, RECEIVED).expect("A02"),
        ApplyOutcome::Transferred {
            patient_id: "123456".into(),
            from_bed: Some("bed-01".into()),
            to_bed: "bed-02".into()
        }
    );
    // Old bed before the transfer time, new bed from it.
    assert_eq!(who(&c, "bed-01", us(2, 8, 59)).as_deref(), Some("123456"));
    assert_eq!(who(&c, "bed-02", us(2, 8, 59)), None);
    assert_eq!(who(&c, "bed-01", us(2, 9, 0)), None);
    assert_eq!(who(&c, "bed-02", us(2, 9, 0)).as_deref(), Some("123456"));

    // A08 (sent later than its event time) renames; the patient stays where they are.
    assert_eq!(
        c.apply(&msg(A08), &b, RECEIVED).expect("A08"),
        ApplyOutcome::DemographicsUpdated {
            patient_id: "123456".into()
        }
    );
    assert_eq!(
        c.patient_at("bed-02", us(3, 12, 0)).map(|p| p.given),
        Some("JONATHAN".into())
    );

    assert_eq!(
        c.apply(&msg(A03), &b, RECEIVED).expect("A03"),
        ApplyOutcome::Discharged {
            patient_id: "123456".into(),
            bed: "bed-02".into()
        }
    );
    assert_eq!(who(&c, "bed-02", us(5, 13, 59)).as_deref(), Some("123456"));
    assert_eq!(who(&c, "bed-02", us(5, 14, 0)), None);
    assert!(c.current().is_empty());
}

#[test]
fn survives_reopen_with_the_same_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gw.db");
    let b = beds();
    let probes = [
        ("bed-01", us(1, 7, 0)),
        ("bed-01", us(1, 9, 0)),
        ("bed-01", us(2, 9, 0)),
        ("bed-02", us(2, 9, 0)),
        ("bed-02", us(4, 0, 0)),
        ("bed-03", us(3, 0, 0)),
    ];
    let (before, current) = {
        let mut c = open(&path);
        c.apply(&msg(A01), &b, RECEIVED).expect("A01");
        c.apply(&msg(A02), &b, RECEIVED).expect("A02");
        c.apply(&msg(A08), &b, RECEIVED).expect("A08");
        c.apply(
            &adt("A01", "X1", "777", "030000", "ICU1^102^A"),
            &b,
            RECEIVED,
        )
        .expect("second patient");
        let answers: Vec<_> = probes
            .iter()
            .map(|(bed, t)| c.patient_at(bed, *t))
            .collect();
        (answers, c.current())
    };
    let c = open(&path);
    let after: Vec<_> = probes
        .iter()
        .map(|(bed, t)| c.patient_at(bed, *t))
        .collect();
    assert_eq!(before, after);
    assert_eq!(c.current(), current);
    assert_eq!(
        current
            .iter()
            .map(|(b, p)| (b.as_str(), p.given.as_str()))
            .collect::<Vec<_>>(),
        vec![("bed-02", "JONATHAN"), ("bed-03", "GIV777")]
    );
}

#[test]
fn admit_into_occupied_bed_displaces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = open(&dir.path().join("gw.db"));
    let b = beds();
    c.apply(&msg(A01), &b, RECEIVED).expect("A01");
    let outcome = c
        .apply(
            &adt("A01", "X1", "777", "011200", "ICU1^101^A"),
            &b,
            RECEIVED,
        )
        .expect("second admit");
    assert_eq!(
        outcome,
        ApplyOutcome::Displaced {
            patient_id: "777".into(),
            bed: "bed-01".into(),
            displaced_patient_id: "123456".into()
        }
    );
    assert_eq!(who(&c, "bed-01", us(1, 11, 59)).as_deref(), Some("123456"));
    assert_eq!(who(&c, "bed-01", us(1, 12, 0)).as_deref(), Some("777"));
    assert_eq!(c.current().len(), 1);
}

#[test]
fn unknown_location_is_recorded_and_associates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = open(&dir.path().join("gw.db"));
    let b = beds();
    let outcome = c
        .apply(
            &adt("A01", "X1", "777", "010800", "WARD9^1^C^HOSP"),
            &b,
            RECEIVED,
        )
        .expect("recorded");
    assert_eq!(
        outcome,
        ApplyOutcome::UnknownBed {
            location: "WARD9^1^C".into(),
            left_bed: None
        }
    );
    let e = outcome.hl7_error().expect("AE");
    assert_eq!(
        (e.ack, e.code),
        (AckCode::AE, ErrorCode::TableValueNotFound)
    );
    assert!(e.message.contains("WARD9^1^C"), "{}", e.message);
    assert!(c.current().is_empty());

    // A patient transferred out to an unmonitored location leaves our bed.
    c.apply(&msg(A01), &b, RECEIVED).expect("A01");
    let out = c
        .apply(
            &adt("A02", "X2", "123456", "020900", "WARD9^1^C"),
            &b,
            RECEIVED,
        )
        .expect("transfer out");
    assert_eq!(
        out,
        ApplyOutcome::UnknownBed {
            location: "WARD9^1^C".into(),
            left_bed: Some("bed-01".into())
        }
    );
    assert_eq!(who(&c, "bed-01", us(2, 8, 0)).as_deref(), Some("123456"));
    assert_eq!(who(&c, "bed-01", us(2, 9, 0)), None);
}

#[test]
fn bare_bed_component_is_a_fallback_key() {
    let mut b = BedMap::new();
    b.insert("7".into(), "bed-07".into());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = open(&dir.path().join("gw.db"));
    let outcome = c
        .apply(&adt("A01", "X1", "1", "010800", "ICU^^7"), &b, RECEIVED)
        .expect("admit");
    assert_eq!(
        outcome,
        ApplyOutcome::Admitted {
            patient_id: "1".into(),
            bed: "bed-07".into()
        }
    );
}

#[test]
fn out_of_order_transfer_is_rejected_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = open(&dir.path().join("gw.db"));
    let b = beds();
    c.apply(&msg(A01), &b, RECEIVED).expect("A01");
    // A transfer timed before the admission (Jan 1 08:00).
    let early = adt("A02", "X1", "123456", "010700", "ICU2^205^B");
    let e = c.apply(&early, &b, RECEIVED).expect_err("accepted");
    let CensusError::Rejected { kind, reason, .. } = &e else {
        panic!("{e}");
    };
    assert_eq!(*kind, RejectKind::OutOfOrder);
    assert!(reason.contains("before the start"), "{reason}");
    assert!(
        e.to_string().contains("A02 X1 for patient 123456 refused"),
        "{e}"
    );
    assert_eq!(e.to_hl7_error().ack, AckCode::AE);
    // Nothing moved, in memory or on disk.
    assert_eq!(who(&c, "bed-01", us(1, 9, 0)).as_deref(), Some("123456"));
    assert_eq!(who(&c, "bed-02", us(1, 9, 0)), None);
    drop(c);
    let c = open(&dir.path().join("gw.db"));
    assert_eq!(who(&c, "bed-01", us(1, 9, 0)).as_deref(), Some("123456"));

    // A late admission into a bed that someone held later is refused too.
    let mut c = c;
    c.apply(&msg(A02), &b, RECEIVED).expect("A02");
    let late = adt("A01", "X2", "777", "011000", "ICU1^101^A");
    assert!(matches!(
        c.apply(&late, &b, RECEIVED),
        Err(CensusError::Rejected {
            kind: RejectKind::OutOfOrder,
            ..
        })
    ));
}

#[test]
fn discharge_of_unknown_patient_and_duplicates_are_harmless() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = open(&dir.path().join("gw.db"));
    let b = beds();
    assert_eq!(
        c.apply(&msg(A03), &b, RECEIVED).expect("A03"),
        ApplyOutcome::NotInCensus {
            patient_id: "123456".into()
        }
    );
    c.apply(&msg(A01), &b, RECEIVED).expect("A01");
    assert_eq!(
        c.apply(&msg(A01), &b, RECEIVED).expect("resent A01"),
        ApplyOutcome::Duplicate {
            message_id: "ADT0001".into()
        }
    );
    assert_eq!(c.current().len(), 1);
}

#[test]
fn update_with_another_location_does_not_move() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = open(&dir.path().join("gw.db"));
    let b = beds();
    c.apply(&msg(A01), &b, RECEIVED).expect("A01");
    // A08 says ICU2^205^B while the census has the patient in bed-01.
    assert_eq!(
        c.apply(&msg(A08), &b, RECEIVED).expect("A08"),
        ApplyOutcome::LocationMismatch {
            patient_id: "123456".into(),
            census_bed: Some("bed-01".into()),
            location: "ICU2^205^B".into()
        }
    );
    assert_eq!(who(&c, "bed-01", us(3, 12, 0)).as_deref(), Some("123456"));
    assert_eq!(who(&c, "bed-02", us(3, 12, 0)), None);
}

#[test]
fn cancels_undo_the_latest_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gw.db");
    let mut c = open(&path);
    let b = beds();
    c.apply(&msg(A01), &b, RECEIVED).expect("A01");
    c.apply(&msg(A02), &b, RECEIVED).expect("A02");

    // A11 while the latest change is a transfer: refused.
    let a11 = adt("A11", "C1", "123456", "021000", "");
    let e = c.apply(&a11, &b, RECEIVED).expect_err("accepted");
    assert!(
        matches!(&e, CensusError::Rejected { kind: RejectKind::CannotCancel, reason, .. } if reason.contains("A02 ADT0002")),
        "{e}"
    );

    // A12 undoes the transfer: back in bed-01, nothing ever in bed-02.
    let a12 = adt("A12", "C2", "123456", "021000", "");
    assert_eq!(
        c.apply(&a12, &b, RECEIVED).expect("A12"),
        ApplyOutcome::Cancelled {
            patient_id: "123456".into(),
            cancelled_event: "A02".into(),
            cancelled_message_id: "ADT0002".into()
        }
    );
    assert_eq!(who(&c, "bed-01", us(3, 0, 0)).as_deref(), Some("123456"));
    assert_eq!(who(&c, "bed-02", us(3, 0, 0)), None);

    // Discharge, then A13 reopens the stay.
    let a03 = adt("A03", "D1", "123456", "041000", "");
    c.apply(&a03, &b, RECEIVED).expect("A03");
    assert_eq!(who(&c, "bed-01", us(5, 0, 0)), None);
    c.apply(&adt("A13", "C3", "123456", "041100", ""), &b, RECEIVED)
        .expect("A13");
    assert_eq!(who(&c, "bed-01", us(5, 0, 0)).as_deref(), Some("123456"));

    // A11 undoes the admission entirely; the answers survive a reopen.
    c.apply(&adt("A11", "C4", "123456", "041200", ""), &b, RECEIVED)
        .expect("A11");
    assert_eq!(who(&c, "bed-01", us(1, 9, 0)), None);
    drop(c);
    let c = open(&path);
    assert_eq!(who(&c, "bed-01", us(1, 9, 0)), None);
    assert!(c.current().is_empty());
}

#[test]
fn cancel_admit_gives_the_bed_back_to_the_displaced_patient() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = open(&dir.path().join("gw.db"));
    let b = beds();
    c.apply(&msg(A01), &b, RECEIVED).expect("A01");
    c.apply(
        &adt("A01", "X1", "777", "011200", "ICU1^101^A"),
        &b,
        RECEIVED,
    )
    .expect("displacing admit");
    // The displaced patient cannot cancel someone else's admission.
    assert!(c
        .apply(&adt("A11", "C0", "123456", "011300", ""), &b, RECEIVED)
        .is_err());
    c.apply(&adt("A11", "C1", "777", "011300", ""), &b, RECEIVED)
        .expect("A11");
    assert_eq!(who(&c, "bed-01", us(1, 12, 30)).as_deref(), Some("123456"));
}

#[test]
fn reader_sees_committed_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = open(&dir.path().join("gw.db"));
    let reader = c.reader();
    assert_eq!(reader.patient_at("bed-01", us(1, 9, 0)), None);
    c.apply(&msg(A01), &beds(), RECEIVED).expect("A01");
    let r2 = reader.clone();
    let t = std::thread::spawn(move || r2.patient_at("bed-01", us(1, 9, 0)));
    assert_eq!(
        t.join().expect("thread").map(|p| p.patient_id).as_deref(),
        Some("123456")
    );
}

#[test]
fn adt_event_for_the_store_and_kafka() {
    let b = beds();
    let e = to_adt_event(&msg(A02), &b);
    assert_eq!(
        e,
        AdtEvent {
            event: "A02".into(),
            patient_id: "123456".into(),
            bed: "bed-02".into(),
            prior_bed: "bed-01".into(),
            event_time_us: us(2, 9, 0),
            family_name: "DOE".into(),
            given_name: "JOHN".into(),
            visit_number: "V0001".into(),
            birth_date: "19600101".into(),
            sex: "M".into(),
            admit_time_us: Some(us(1, 8, 0)),
            discharge_time_us: None,
            assigning_authority: "HOSP".into(),
            message_id: "ADT0002".into(),
            peer: String::new(),
        }
    );
    let unmapped = to_adt_event(&msg(A02), &BedMap::new());
    assert_eq!(
        (unmapped.bed.as_str(), unmapped.prior_bed.as_str()),
        ("ICU2^205^B", "ICU1^101^A")
    );
}

#[test]
fn works_beside_the_store_in_one_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gw.db");
    let _store = crate::store::StoreDb::open(&path, "gw", true, 1 << 30).expect("store");
    let mut c = open(&path);
    c.apply(&msg(A01), &beds(), RECEIVED).expect("A01");
    let n: i64 = c
        .conn
        .query_row("SELECT COUNT(*) FROM adt_events", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 1);
    let mode: String = c
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal mode");
    assert_eq!(mode, "wal");
}

#[test]
fn events_record_the_address_they_came_from_and_older_files_get_the_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gw.db");
    {
        // A file from before the column: adt_events as it was, with one row.
        let old = Connection::open(&path).expect("old file");
        old.execute_batch(
            "CREATE TABLE adt_events (id INTEGER PRIMARY KEY, received_us INTEGER NOT NULL,
               sender TEXT NOT NULL, message_id TEXT NOT NULL, event TEXT NOT NULL,
               patient_id TEXT NOT NULL, event_time_us INTEGER NOT NULL, location TEXT,
               prior_location TEXT, bed TEXT, accepted INTEGER NOT NULL, outcome TEXT NOT NULL,
               detail TEXT NOT NULL);
             INSERT INTO adt_events (received_us, sender, message_id, event, patient_id,
               event_time_us, accepted, outcome, detail)
             VALUES (1, 'ADT_SYS|HOSP', 'OLD1', 'A08', 'p', 1, 1, 'updated', 'old row');",
        )
        .expect("old schema");
    }
    let mut c = open(&path);
    c.apply_from(&msg(A01), &beds(), RECEIVED, Some("10.20.0.15:40001"))
        .expect("A01");
    c.apply(&msg(A08), &beds(), RECEIVED).expect("A08");
    let peers: Vec<(String, Option<String>)> = c
        .conn
        .prepare("SELECT message_id, peer FROM adt_events ORDER BY id")
        .expect("query")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        peers,
        [
            ("OLD1".to_owned(), None),
            ("ADT0001".to_owned(), Some("10.20.0.15:40001".to_owned())),
            ("ADT0004".to_owned(), None),
        ]
    );
}
