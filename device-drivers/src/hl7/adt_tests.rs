use chrono::{TimeZone, Utc};
use proptest::prelude::*;

use super::*;

/// protocols.md §4.6, the four constructed examples, exactly as written there.
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

fn us(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .map(|t| t.timestamp_micros())
        .unwrap_or_default()
}

fn decode(text: &str) -> Result<AdtMessage, Hl7Error> {
    decode_adt(text.as_bytes())
}

fn john(given: &str) -> AdtPatient {
    AdtPatient {
        id: "123456".into(),
        assigning_authority: "HOSP".into(),
        family: "DOE".into(),
        given: given.into(),
        birth_date: "19600101".into(),
        sex: "M".into(),
    }
}

fn loc(poc: &str, room: &str, bed: &str) -> AdtLocation {
    AdtLocation {
        point_of_care: poc.into(),
        room: room.into(),
        bed: bed.into(),
        facility: "HOSP".into(),
        raw: format!("{poc}^{room}^{bed}^HOSP"),
    }
}

/// Replaces segment `index` (0-based) of a message.
fn with_segment(message: &str, index: usize, segment: &str) -> String {
    let mut segs: Vec<&str> = message.split('\r').collect();
    segs[index] = segment;
    segs.join("\r")
}

fn assert_error(text: &str, ack: AckCode, code: ErrorCode, location: &str) -> Hl7Error {
    let e = decode(text).expect_err("message accepted");
    assert_eq!((e.ack, e.code), (ack, code), "{e:?}");
    assert_eq!(
        e.location
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        location,
        "{e:?}"
    );
    e
}

#[test]
fn worked_a01_admit() {
    let m = decode(A01).expect("A01");
    assert_eq!(m.event, AdtEventKind::Admit);
    assert_eq!(m.header.control_id, "ADT0001");
    assert_eq!(
        (
            m.header.message_type.as_str(),
            m.header.trigger_event.as_str()
        ),
        ("ADT", "A01")
    );
    assert_eq!(m.event_time_us, Some(us(2025, 1, 1, 8, 0, 0)));
    assert_eq!(m.patient, john("JOHN"));
    assert_eq!(m.location, Some(loc("ICU1", "101", "A")));
    assert_eq!(
        m.location.as_ref().map(AdtLocation::key).as_deref(),
        Some("ICU1^101^A")
    );
    assert_eq!(m.prior_location, None);
    assert_eq!(m.visit_number.as_deref(), Some("V0001"));
    assert_eq!(m.admit_time_us, Some(us(2025, 1, 1, 8, 0, 0)));
    assert_eq!(m.discharge_time_us, None);
}

#[test]
fn worked_a02_transfer() {
    let m = decode(A02).expect("A02");
    assert_eq!(m.event, AdtEventKind::Transfer);
    assert_eq!(m.header.control_id, "ADT0002");
    assert_eq!(m.event_time_us, Some(us(2025, 1, 2, 9, 0, 0)));
    assert_eq!(m.patient, john("JOHN"));
    assert_eq!(m.location, Some(loc("ICU2", "205", "B")));
    assert_eq!(m.prior_location, Some(loc("ICU1", "101", "A")));
    assert_eq!(m.visit_number.as_deref(), Some("V0001"));
    assert_eq!(m.admit_time_us, Some(us(2025, 1, 1, 8, 0, 0)));
    assert_eq!(m.discharge_time_us, None);
}

#[test]
fn worked_a03_discharge() {
    let m = decode(A03).expect("A03");
    assert_eq!(m.event, AdtEventKind::Discharge);
    assert_eq!(m.header.control_id, "ADT0003");
    assert_eq!(m.event_time_us, Some(us(2025, 1, 5, 14, 0, 0)));
    assert_eq!(m.patient, john("JOHN"));
    assert_eq!(m.location, Some(loc("ICU2", "205", "B")));
    assert_eq!(m.prior_location, None);
    assert_eq!(m.visit_number.as_deref(), Some("V0001"));
    assert_eq!(m.admit_time_us, Some(us(2025, 1, 1, 8, 0, 0)));
    assert_eq!(m.discharge_time_us, Some(us(2025, 1, 5, 14, 0, 0)));
}

#[test]
fn worked_a08_update() {
    let m = decode(A08).expect("A08");
    assert_eq!(m.event, AdtEventKind::Update);
    assert_eq!(m.header.control_id, "ADT0004");
    assert_eq!(m.event_time_us, Some(us(2025, 1, 3, 10, 0, 0)));
    assert_eq!(m.patient, john("JONATHAN"));
    assert_eq!(m.location, Some(loc("ICU2", "205", "B")));
    assert_eq!(m.visit_number.as_deref(), Some("V0001"));
    assert_eq!(m.admit_time_us, Some(us(2025, 1, 1, 8, 0, 0)));
}

#[test]
fn event_time_prefers_evn6_then_evn2_then_msh7() {
    let evn6 = with_segment(A01, 1, "EVN||20250101080000||||20250101075500");
    assert_eq!(
        decode(&evn6).expect("EVN-6").event_time_us,
        Some(us(2025, 1, 1, 7, 55, 0))
    );
    let no_evn2 = with_segment(A01, 1, "EVN|A01");
    let no_evn2 = no_evn2.replace("|20250101080000||ADT", "|20250101080100||ADT");
    assert_eq!(
        decode(&no_evn2).expect("MSH-7").event_time_us,
        Some(us(2025, 1, 1, 8, 1, 0))
    );
    let no_evn: String = A01
        .split('\r')
        .filter(|s| !s.starts_with("EVN"))
        .collect::<Vec<_>>()
        .join("\r");
    assert_eq!(
        decode(&no_evn).expect("no EVN").event_time_us,
        Some(us(2025, 1, 1, 8, 0, 0))
    );
    let nothing = no_evn.replace("|20250101080000||ADT", "|||ADT");
    assert_eq!(decode(&nothing).expect("no time").event_time_us, None);
    let zoned = with_segment(A01, 1, "EVN||20250101090000+0100");
    assert_eq!(
        decode(&zoned).expect("zoned").event_time_us,
        Some(us(2025, 1, 1, 8, 0, 0))
    );
}

#[test]
fn optional_events_decode() {
    for (code, kind) in [
        ("A04", AdtEventKind::Register),
        ("A11", AdtEventKind::CancelAdmit),
        ("A12", AdtEventKind::CancelTransfer),
        ("A13", AdtEventKind::CancelDischarge),
    ] {
        let text = A01.replace("ADT^A01^ADT_A01", &format!("ADT^{code}^ADT_A01"));
        assert_eq!(decode(&text).expect(code).event, kind);
        assert_eq!(AdtEventKind::from_code(code), Some(kind));
        assert_eq!(kind.to_string(), code);
    }
    // A03/A08/cancels need no location.
    let no_pv1: String = A03
        .split('\r')
        .filter(|s| !s.starts_with("PV1"))
        .collect::<Vec<_>>()
        .join("\r");
    let m = decode(&no_pv1).expect("A03 without PV1");
    assert_eq!((m.location, m.visit_number), (None, None));
}

#[test]
fn patient_id_prefers_mr_repetition() {
    let text = with_segment(
        A01,
        2,
        "PID|1||X-99^^^NHS^NH~123456^^^HOSP&1.2.3&ISO^MR||DOE^JOHN||19600101|M",
    );
    let p = decode(&text).expect("A01").patient;
    assert_eq!(
        (p.id.as_str(), p.assigning_authority.as_str()),
        ("123456", "HOSP")
    );
    let text = with_segment(A01, 2, "PID|1||~X-99^^^NHS^NH||DOE^JOHN||19600101|M");
    let p = decode(&text).expect("A01").patient;
    assert_eq!(
        (p.id.as_str(), p.assigning_authority.as_str()),
        ("X-99", "NHS")
    );
}

#[test]
fn names_are_unescaped_and_prefer_legal_name() {
    let text = with_segment(
        A01,
        2,
        "PID|1||123456^^^HOSP^MR||JD^J^^^^^A~O\\T\\BRIEN&O^SEAN^^^^^L||19600101|F",
    );
    let p = decode(&text).expect("A01").patient;
    assert_eq!((p.family.as_str(), p.given.as_str()), ("O&BRIEN", "SEAN"));
    assert_eq!(p.sex, "F");
}

#[test]
fn location_components_are_unescaped() {
    let text = with_segment(A01, 3, "PV1|1|I|ICU\\S\\1^ 101 ^A^HOSP");
    let l = decode(&text).expect("A01").location.expect("location");
    assert_eq!(l.point_of_care, "ICU^1");
    assert_eq!(l.room, "101");
    assert_eq!(l.key(), "ICU^1^101^A");
    assert_eq!(l.raw, "ICU\\S\\1^ 101 ^A^HOSP");
}

#[test]
fn non_standard_delimiters_are_understood() {
    // Field separator '#', component separator '$'.
    let text = A01
        .split('\r')
        .map(|s| {
            if s.starts_with("MSH") {
                s.replacen("MSH|^~\\&|", "MSH#$~\\&#", 1)
                    .replace('|', "#")
                    .replace('^', "$")
            } else {
                s.replace('|', "#").replace('^', "$")
            }
        })
        .collect::<Vec<_>>()
        .join("\r");
    let m = decode(&text).expect("A01 with #$ delimiters");
    assert_eq!(m.patient.id, "123456");
    assert_eq!(
        m.location.as_ref().map(|l| l.raw.as_str()),
        Some("ICU1^101^A^HOSP")
    );
    assert_eq!(m.event, AdtEventKind::Admit);
}

#[test]
fn refuses_other_message_types_and_events() {
    let oru = A01.replace("ADT^A01^ADT_A01", "ORU^R01^ORU_R01");
    assert_error(
        &oru,
        AckCode::AR,
        ErrorCode::UnsupportedMessageType,
        "MSH^1^9",
    );
    let a05 = A01.replace("ADT^A01^ADT_A01", "ADT^A05^ADT_A05");
    let e = assert_error(
        &a05,
        AckCode::AR,
        ErrorCode::UnsupportedEventCode,
        "MSH^1^9",
    );
    assert!(e.message.contains("ADT^A05"), "{}", e.message);
    let v3 = A01.replace("|P|2.5", "|P|3.0");
    assert_error(
        &v3,
        AckCode::AR,
        ErrorCode::UnsupportedVersionId,
        "MSH^1^12",
    );
    let no_id = A01.replace("|ADT0001|", "||");
    assert_error(
        &no_id,
        AckCode::AE,
        ErrorCode::RequiredFieldMissing,
        "MSH^1^10",
    );
}

#[test]
fn missing_patient_id_is_ae_101_at_pid_3() {
    let text = with_segment(A01, 2, "PID|1||^^^HOSP^MR||DOE^JOHN");
    assert_error(
        &text,
        AckCode::AE,
        ErrorCode::RequiredFieldMissing,
        "PID^1^3",
    );
    let no_pid: String = A08
        .split('\r')
        .filter(|s| !s.starts_with("PID"))
        .collect::<Vec<_>>()
        .join("\r");
    assert_error(
        &no_pid,
        AckCode::AE,
        ErrorCode::RequiredFieldMissing,
        "PID^1^3",
    );
}

#[test]
fn admit_and_transfer_need_pv1_3() {
    for msg in [A01, A02] {
        let empty = with_segment(msg, 3, "PV1|1|I|||||||||||||||||V0001");
        assert_error(
            &empty,
            AckCode::AE,
            ErrorCode::RequiredFieldMissing,
            "PV1^1^3",
        );
        let none: String = msg
            .split('\r')
            .filter(|s| !s.starts_with("PV1"))
            .collect::<Vec<_>>()
            .join("\r");
        let e = assert_error(
            &none,
            AckCode::AE,
            ErrorCode::RequiredFieldMissing,
            "PV1^1^3",
        );
        assert!(e.message.contains("no PV1"), "{}", e.message);
    }
}

#[test]
fn bad_timestamps_are_ae_102_at_their_field() {
    let evn2 = with_segment(A01, 1, "EVN||2025-01-01");
    assert_error(&evn2, AckCode::AE, ErrorCode::DataTypeError, "EVN^1^2");
    let evn6 = with_segment(A01, 1, "EVN||20250101080000||||20251301");
    assert_error(&evn6, AckCode::AE, ErrorCode::DataTypeError, "EVN^1^6");
    let msh7 = A01.replace("|20250101080000||ADT", "|yesterday||ADT");
    assert_error(&msh7, AckCode::AE, ErrorCode::DataTypeError, "MSH^1^7");
    let pv1_44 = A01.replace("||||20250101080000", "||||2025010108000X");
    assert_error(&pv1_44, AckCode::AE, ErrorCode::DataTypeError, "PV1^1^44");
    let pv1_45 = A03.replace("080000|20250105140000", "080000|202501051400XX");
    assert_error(&pv1_45, AckCode::AE, ErrorCode::DataTypeError, "PV1^1^45");
}

#[test]
fn second_msh_is_refused() {
    let text = format!("{A01}\r{A02}");
    assert_error(&text, AckCode::AE, ErrorCode::SegmentSequenceError, "MSH^2");
}

#[test]
fn not_hl7_is_ar() {
    let e = decode("hello").expect_err("accepted");
    assert_eq!(e.ack, AckCode::AR);
    let e = decode_adt(&[0xff, 0xfe]).expect_err("accepted");
    assert_eq!(e.ack, AckCode::AR);
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_adt(&bytes);
    }

    #[test]
    fn never_panics_on_mutated_examples(
        which in 0usize..4,
        at in 0usize..400,
        with in prop::sample::select(vec!['|', '^', '~', '\\', '&', '\r', '\n', 'X', '9', ' ', 'é']),
    ) {
        let base = [A01, A02, A03, A08][which];
        let mut chars: Vec<char> = base.chars().collect();
        let i = at % chars.len();
        chars[i] = with;
        let text: String = chars.into_iter().collect();
        let _ = decode(&text);
    }
}

#[test]
fn splitter_matches_hl7_parser_on_the_adt_fixtures() {
    for text in [A01, A02, A03, A08] {
        super::super::tests::assert_splits_like_hl7_parser(text);
        let hash_dollar = text
            .replacen("MSH|^~\\&|", "MSH#$~\\&#", 1)
            .replace('|', "#")
            .replace('^', "$");
        super::super::tests::assert_splits_like_hl7_parser(&hash_dollar);
    }
    let names = with_segment(
        A01,
        2,
        "PID|1||123456^^^HOSP&1.2&ISO^MR~9^^^X^PI||DOE\\S\\X^JOHN~Doe^J^^^^^L",
    );
    super::super::tests::assert_splits_like_hl7_parser(&names);
}
