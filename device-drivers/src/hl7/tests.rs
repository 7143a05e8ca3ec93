use chrono::{TimeZone, Utc};
use icu_protos::v1::{Observation, ObservationStatus};
use proptest::prelude::*;

use super::*;
use crate::terminology::Terminology;

/// protocols.md §4.3, constructed PCD-01 example.
const EXAMPLE: &[&str] = &[
    "MSH|^~\\&|ICU_GW^0012AB00000000A1^EUI-64|ICU_GW|CIS|HOSP|20250101120000+0000||ORU^R01^ORU_R01|MSG000123|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO",
    "PID|||123456^^^HOSP^MR||DOE^JOHN^^^^^L",
    "PV1||I|ICU1^101^A^HOSP",
    "OBR|1|MSG000123^ICU_GW^0012AB00000000A1^EUI-64|MSG000123^ICU_GW^0012AB00000000A1^EUI-64|182777000^monitoring of patient^SCT|||20250101120000+0000",
    "OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||0012AB00000000B2^^0012AB00000000B2^EUI-64",
    "OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|50-120||||R||||||AMEAS^auto-measurement^MDC",
    "OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|90-100||||R||||||AMEAS^auto-measurement^MDC",
    "OBX|4|NM|150301^MDC_PRESS_CUFF_SYS^MDC|1.3.1.1|128|266016^MDC_DIM_MMHG^MDC|90-160||||R|||20250101115500+0000|||AMEAS^auto-measurement^MDC",
    "OBX|5|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.2||262688^MDC_DIM_PERCENT^MDC||NAV|||X",
];

const RECEIVED_US: i64 = 1_735_732_800_500_000;

fn example() -> String {
    EXAMPLE.join("\r")
}

/// The example with segment `index` replaced.
fn with_segment(index: usize, segment: &str) -> String {
    let mut segs: Vec<&str> = EXAMPLE.to_vec();
    segs[index] = segment;
    segs.join("\r")
}

fn decode(text: &str) -> Result<Pcd01Message, Hl7Error> {
    decode_pcd01(text.as_bytes(), RECEIVED_US, &Terminology::builtin())
}

fn us(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .map(|t| t.timestamp_micros())
        .unwrap_or_default()
}

fn loc(s: &str) -> Option<String> {
    Some(s.to_owned())
}

fn err_loc(e: &Hl7Error) -> Option<String> {
    e.location.as_ref().map(ToString::to_string)
}

#[test]
fn constructed_example_decodes_to_four_observations() {
    let msg = decode(&example()).expect("example decodes");
    assert_eq!(
        msg.header,
        MessageHeader {
            sending_application: "ICU_GW^0012AB00000000A1^EUI-64".into(),
            sending_facility: "ICU_GW".into(),
            receiving_application: "CIS".into(),
            receiving_facility: "HOSP".into(),
            message_time: "20250101120000+0000".into(),
            message_type: "ORU".into(),
            trigger_event: "R01".into(),
            control_id: "MSG000123".into(),
            processing_id: "P".into(),
            version: "2.6".into(),
        }
    );
    assert_eq!(msg.equipment_id, loc("0012AB00000000B2"));
    assert_eq!(msg.patient_id, loc("123456"));
    assert_eq!(msg.location, loc("ICU1^101^A^HOSP"));
    assert_eq!(msg.observations.len(), 4);

    let obr_time = us(2025, 1, 1, 12, 0, 0);
    let common = Observation {
        receive_time_us: RECEIVED_US,
        equipment_id: "0012AB00000000B2".into(),
        reported_patient_id: "123456".into(),
        source_message_id: "MSG000123".into(),
        status: ObservationStatus::Valid as i32,
        device_time_us: Some(obr_time),
        // OBX-11 R (results entered, not verified), as the message sends it.
        result_status: "R".into(),
        ..Default::default()
    };
    let hr = Observation {
        mdc_code: 147842,
        mdc_refid: "MDC_ECG_HEART_RATE".into(),
        value: Some(72.0),
        value_text: "72".into(),
        unit_ucum: "/min".into(),
        unit_mdc_code: 264864,
        containment_id: "1.1.1.1".into(),
        limit_low: Some(50.0),
        limit_high: Some(120.0),
        loinc: "8867-4".into(),
        source_row: 2,
        ..common.clone()
    };
    let spo2 = Observation {
        mdc_code: 150456,
        mdc_refid: "MDC_PULS_OXIM_SAT_O2".into(),
        value: Some(97.0),
        value_text: "97".into(),
        unit_ucum: "%".into(),
        unit_mdc_code: 262688,
        containment_id: "1.2.1.1".into(),
        limit_low: Some(90.0),
        limit_high: Some(100.0),
        loinc: "59408-5".into(),
        source_row: 3,
        ..common.clone()
    };
    let nibp = Observation {
        mdc_code: 150301,
        mdc_refid: "MDC_PRESS_CUFF_SYS".into(),
        value: Some(128.0),
        value_text: "128".into(),
        unit_ucum: "mm[Hg]".into(),
        unit_mdc_code: 266016,
        containment_id: "1.3.1.1".into(),
        limit_low: Some(90.0),
        limit_high: Some(160.0),
        loinc: "8480-6".into(),
        source_row: 4,
        device_time_us: Some(us(2025, 1, 1, 11, 55, 0)),
        ..common.clone()
    };
    let spo2_nav = Observation {
        mdc_code: 150456,
        mdc_refid: "MDC_PULS_OXIM_SAT_O2".into(),
        value: None,
        value_text: String::new(),
        unit_ucum: "%".into(),
        unit_mdc_code: 262688,
        containment_id: "1.2.1.2".into(),
        abnormal_flags: "NAV".into(),
        status: ObservationStatus::NotAvailable as i32,
        result_status: "X".into(),
        loinc: "59408-5".into(),
        source_row: 5,
        ..common.clone()
    };
    assert_eq!(msg.observations, vec![hr, spo2, nibp, spo2_nav]);
    // Left for the gateway.
    for o in &msg.observations {
        assert!(o.device_id.is_empty() && o.bed.is_empty() && o.seq == 0 && !o.clock_synced);
    }
}

#[test]
fn segment_separators_are_lenient() {
    let reference = decode(&example()).unwrap();
    for sep in ["\n", "\r\n", "\r\r", "\n\n"] {
        let text = EXAMPLE.join(sep);
        assert_eq!(decode(&text).unwrap(), reference, "separator {sep:?}");
        assert_eq!(decode(&format!("{text}{sep}")).unwrap(), reference);
    }
    let with_bom = format!("\u{feff}{}\r", example());
    assert_eq!(decode(&with_bom).unwrap(), reference);
}

#[test]
fn non_numeric_nm_rejects_the_whole_message() {
    let text = with_segment(
        6,
        "OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|abc|262688^MDC_DIM_PERCENT^MDC|90-100||||R",
    );
    let err = decode(&text).unwrap_err();
    assert_eq!(err.ack, AckCode::AE);
    assert_eq!(err.code, ErrorCode::DataTypeError);
    assert_eq!(err_loc(&err), loc("OBX^3^5"));
    assert_eq!(err.message, "OBX-5 'abc' is not numeric");
    assert_eq!(err.to_string(), "OBX-5 'abc' is not numeric");
}

#[test]
fn wrong_message_type_event_and_version_are_rejected() {
    let msh = |msh9: &str, version: &str| {
        with_segment(
            0,
            &format!(
                "MSH|^~\\&|ADT_SYS|HOSP|ICU_GW|ICU|20250101080000||{msh9}|ADT0001|P|{version}"
            ),
        )
    };
    let err = decode(&msh("ADT^A01^ADT_A01", "2.5")).unwrap_err();
    assert_eq!(
        (err.ack, err.code),
        (AckCode::AR, ErrorCode::UnsupportedMessageType)
    );
    assert_eq!(err_loc(&err), loc("MSH^1^9"));
    assert!(err.message.contains("'ADT^A01'"), "{}", err.message);

    let err = decode(&msh("ORU^R40^ORU_R40", "2.6")).unwrap_err();
    assert_eq!(
        (err.ack, err.code),
        (AckCode::AR, ErrorCode::UnsupportedEventCode)
    );
    assert_eq!(err_loc(&err), loc("MSH^1^9"));

    let err = decode(&msh("ORU^R01", "3.0")).unwrap_err();
    assert_eq!(
        (err.ack, err.code),
        (AckCode::AR, ErrorCode::UnsupportedVersionId)
    );
    assert_eq!(err_loc(&err), loc("MSH^1^12"));

    assert!(decode(&msh("ORU^R01", "2.3.1")).is_ok());
}

#[test]
fn missing_control_id_is_ae_101() {
    let text = with_segment(
        0,
        "MSH|^~\\&|ICU_GW|ICU_GW|CIS|HOSP|20250101120000+0000||ORU^R01^ORU_R01||P|2.6",
    );
    let err = decode(&text).unwrap_err();
    assert_eq!(
        (err.ack, err.code),
        (AckCode::AE, ErrorCode::RequiredFieldMissing)
    );
    assert_eq!(err_loc(&err), loc("MSH^1^10"));
}

#[test]
fn payload_that_is_not_hl7_is_rejected() {
    let t = Terminology::builtin();
    for payload in [
        &b""[..],
        b"hello world",
        b"GET / HTTP/1.1\r\n",
        b"MSX|^~\\&|",
    ] {
        let err = decode_pcd01(payload, 0, &t).unwrap_err();
        assert_eq!(err.ack, AckCode::AR, "{payload:?}");
        assert_eq!(err.code, ErrorCode::SegmentSequenceError);
        assert!(parse_header(payload).is_err());
    }
    let err = decode_pcd01(b"MSH|^~\\&|\xff\xfe|X", 0, &t).unwrap_err();
    assert_eq!((err.ack, err.code), (AckCode::AR, ErrorCode::DataTypeError));
    assert!(err.message.contains("UTF-8"), "{}", err.message);

    let err = decode_pcd01(b"MSH|^^\\&|A", 0, &t).unwrap_err();
    assert_eq!((err.ack, err.code), (AckCode::AR, ErrorCode::DataTypeError));
    assert_eq!(err_loc(&err), loc("MSH^1^2"));

    let mut broken_later = example().into_bytes();
    broken_later.extend_from_slice(b"\rOBX|6|NM|\xff\xfe");
    let err = decode_pcd01(&broken_later, 0, &t).unwrap_err();
    assert_eq!((err.ack, err.code), (AckCode::AR, ErrorCode::DataTypeError));
}

#[test]
fn header_is_read_even_when_later_segments_are_broken() {
    let mut payload = EXAMPLE[0].as_bytes().to_vec();
    payload.extend_from_slice(b"\r\xff\xfe not a segment \x00\rOBX|x");
    let h = parse_header(&payload).unwrap();
    assert_eq!(h.control_id, "MSG000123");
    assert_eq!(
        (h.message_type.as_str(), h.trigger_event.as_str()),
        ("ORU", "R01")
    );
    assert_eq!(h.version, "2.6");
}

#[test]
fn required_and_typed_fields_have_locations() {
    let cases = [
        (
            "OBX|2|NM||1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC",
            ErrorCode::RequiredFieldMissing,
            "OBX^2^3",
        ),
        (
            "OBX|2|NM|HR^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72",
            ErrorCode::DataTypeError,
            "OBX^2^3^1",
        ),
        (
            "OBX|2|NM|^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72",
            ErrorCode::RequiredFieldMissing,
            "OBX^2^3^1",
        ),
        (
            "OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72||||||R|||2025-01-01",
            ErrorCode::DataTypeError,
            "OBX^2^14",
        ),
        (
            "OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|1e3",
            ErrorCode::DataTypeError,
            "OBX^2^5",
        ),
    ];
    for (segment, code, location) in cases {
        let err = decode(&with_segment(5, segment)).unwrap_err();
        assert_eq!((err.ack, err.code), (AckCode::AE, code), "{segment}: {err}");
        assert_eq!(err_loc(&err), loc(location), "{segment}");
    }
    let err = decode(&with_segment(3, "OBR|1|||x|||20251301")).unwrap_err();
    assert_eq!((err.ack, err.code), (AckCode::AE, ErrorCode::DataTypeError));
    assert_eq!(err_loc(&err), loc("OBR^1^7"));
    assert!(
        err.message.starts_with("OBR-7 '20251301'"),
        "{}",
        err.message
    );

    let err = decode(&with_segment(2, "not a segment")).unwrap_err();
    assert_eq!(
        (err.ack, err.code),
        (AckCode::AE, ErrorCode::SegmentSequenceError)
    );

    let err = decode(&format!("{}\r{}", example(), EXAMPLE[0])).unwrap_err();
    assert_eq!(err.code, ErrorCode::SegmentSequenceError);
    assert_eq!(err_loc(&err), loc("MSH^2"));
}

fn one_row(obx: &str) -> Observation {
    let text = [EXAMPLE[0], EXAMPLE[3], obx].join("\r");
    let mut msg = decode(&text).unwrap_or_else(|e| panic!("{obx}: {e}"));
    assert_eq!(msg.observations.len(), 1, "{obx}");
    msg.observations.remove(0)
}

#[test]
fn status_follows_obx8_and_obx11() {
    let status = |obx: &str| one_row(obx).status;
    let row = |flags: &str, obx11: &str| {
        format!("OBX|1|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^^MDC||{flags}|||{obx11}")
    };
    use ObservationStatus as S;
    assert_eq!(status(&row("", "R")), S::Valid as i32);
    assert_eq!(status(&row("", "F")), S::Valid as i32);
    assert_eq!(status(&row("", "C")), S::Corrected as i32);
    assert_eq!(status(&row("", "X")), S::NotAvailable as i32);
    assert_eq!(status(&row("H~INV", "R")), S::Invalid as i32);
    assert_eq!(status(&row("QUES", "R")), S::Invalid as i32);
    assert_eq!(status(&row("DEMO", "R")), S::Test as i32);
    assert_eq!(status(&row("CAL", "R")), S::Test as i32);
    assert_eq!(status(&row("TEST~INV", "R")), S::Test as i32);
    assert_eq!(status(&row("OFF", "R")), S::NotAvailable as i32);
    assert_eq!(status(&row("NI", "R")), S::NotAvailable as i32);
    assert_eq!(one_row(&row("H~HH", "R")).abnormal_flags, "H~HH");

    // MSH-11 D (demo/service mode per SDPI) marks everything as test data.
    let demo = [
        "MSH|^~\\&|DEV|X|CIS|HOSP|20250101120000||ORU^R01|M1|D|2.6",
        &row("", "R"),
    ]
    .join("\r");
    let msg = decode(&demo).unwrap();
    assert_eq!(msg.observations[0].status, S::Test as i32);
    assert_eq!(msg.observations[0].device_time_us, None);
}

#[test]
fn text_rows_keep_text_and_decode_escapes() {
    let o = one_row("OBX|1|ST|184514^MDC_DRUG_NAME_LABEL^MDC|1.1.1.2|Noradrenalin \\T\\ Co\\F\\4\\S\\x \\E\\ \\X41\\||||||R");
    assert_eq!(o.value, None);
    assert_eq!(o.value_text, "Noradrenalin & Co|4^x \\ A");
    assert_eq!(o.status, ObservationStatus::Valid as i32);

    let o =
        one_row("OBX|1|CWE|196616^MDC_EVT_ALARM^MDC|1.1.1.1|196882^MDC_EVT_LEADS_OFF^MDC||||||R");
    assert_eq!(o.value_text, "196882^MDC_EVT_LEADS_OFF^MDC");
    assert_eq!(o.value, None);

    let o = one_row("OBX|1|ST|184514^MDC_DRUG_NAME_LABEL^MDC|1.1.1.2|caf\\XC3A9\\ \\Q\\ \\H\\bold\\N\\ line\\.br\\two \\X4\\ open\\F||||||R");
    assert_eq!(o.value_text, "café \\Q\\ bold line\ntwo \\X4\\ open\\F");

    // LOINC-coded row (patient sex, SDPI).
    let o = one_row("OBX|1|ST|46098-0^Sex^LN|1.0.0.3|M||||||R");
    assert_eq!(
        (o.mdc_code, o.loinc.as_str(), o.value_text.as_str()),
        (0, "46098-0", "M")
    );
}

#[test]
fn units_prefer_ucum_alternate_then_the_table() {
    let unit = |obx6: &str| {
        let o = one_row(&format!(
            "OBX|1|NM|157784^MDC_FLOW_FLUID_PUMP^MDC|1.1.1.1|5.5|{obx6}||||||R"
        ));
        (o.unit_mdc_code, o.unit_ucum)
    };
    assert_eq!(
        unit("265266^MDC_DIM_MILLI_L_PER_HR^MDC^mL/h^mL/h^UCUM"),
        (265266, "mL/h".to_owned())
    );
    assert_eq!(
        unit("265266^MDC_DIM_MILLI_L_PER_HR^MDC"),
        (265266, "mL/h".to_owned())
    );
    assert_eq!(unit("999999^MDC_DIM_UNKNOWN^MDC"), (999999, String::new()));
    assert_eq!(unit(""), (0, String::new()));
    assert_eq!(unit("mL/h^mL/h^UCUM"), (0, "mL/h".to_owned()));
}

#[test]
fn refid_and_loinc_are_filled_from_the_terminology() {
    let o = one_row("OBX|1|NM|150364|1.1.1.1|37.2|268192||||||R");
    assert_eq!(o.mdc_refid, "MDC_TEMP_BODY");
    assert_eq!(o.loinc, "8310-5");
    assert_eq!(o.unit_ucum, "Cel");
    assert_eq!(o.value, Some(37.2));
    assert_eq!(o.value_text, "37.2");
    // Unknown code: kept, nothing invented.
    let o = one_row("OBX|1|NM|4242^MDC_X^MDC|1.1.1.1|-1.5||||||R");
    assert_eq!(
        (o.mdc_refid.as_str(), o.loinc.as_str(), o.value),
        ("MDC_X", "", Some(-1.5))
    );
}

#[test]
fn missing_value_type_is_inferred() {
    let o = one_row("OBX|1||147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72||||||R");
    assert_eq!(o.value, Some(72.0));
    let o = one_row("OBX|1||147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|---||||||R");
    assert_eq!((o.value, o.value_text.as_str()), (None, "---"));
}

#[test]
fn equipment_id_is_the_nearest_obx18_in_the_same_mds() {
    let text = [
        "MSH|^~\\&|GW^00AA00000000000A^EUI-64|X|CIS|HOSP|20250101120000||ORU^R01|M1|P|2.6",
        "OBR|1||||||20250101120000",
        "OBX|1|NM|147842^^MDC|1.1.1.1|60||||||R",
        "OBX|2||69965^^MDC|1.0.0.0|||||||X|||||||MON1^^00AA00000000000B^EUI-64",
        "OBX|3|NM|147842^^MDC|1.1.1.2|61||||||R",
        "OBX|4||70053^^MDC|2.0.0.0|||||||X|||||||PUMP-7",
        "OBX|5||70054^^MDC|2.1.0.0|||||||X|||||||^^00AA00000000000C^EUI-64",
        "OBX|6|NM|157784^^MDC|2.1.1.1|5||||||R",
        "OBX|7|NM|157784^^MDC|3.1.1.1|6||||||R",
    ]
    .join("\r");
    let msg = decode(&text).unwrap();
    assert_eq!(msg.equipment_id, loc("00AA00000000000B"));
    let eq: Vec<&str> = msg
        .observations
        .iter()
        .map(|o| o.equipment_id.as_str())
        .collect();
    // Row 1 precedes any OBX-18 of its MDS: message-level id. Row 7 is in an MDS without OBX-18.
    assert_eq!(
        eq,
        [
            "00AA00000000000B",
            "00AA00000000000B",
            "00AA00000000000C",
            "00AA00000000000B"
        ]
    );

    let no_obx18 = [EXAMPLE[0], "OBX|1|NM|147842^^MDC|1.1.1.1|60||||||R"].join("\r");
    let msg = decode(&no_obx18).unwrap();
    assert_eq!(msg.equipment_id, loc("0012AB00000000A1"));
    assert_eq!(msg.observations[0].equipment_id, "0012AB00000000A1");
    assert_eq!(msg.patient_id, None);
    assert_eq!(msg.location, None);
}

#[test]
fn messages_without_metric_rows_are_valid() {
    let text = EXAMPLE[..5].join("\r");
    let msg = decode(&text).unwrap();
    assert!(msg.observations.is_empty());
    assert_eq!(msg.equipment_id, loc("0012AB00000000B2"));
    assert!(decode(EXAMPLE[0]).unwrap().observations.is_empty());
}

#[test]
fn non_standard_delimiters_are_understood_and_normalised() {
    let text = [
        "MSH#$~!&#DEV$00AA00000000000D$EUI-64#X#CIS#HOSP#20250101120000##ORU$R01#M^1#P#2.6",
        "OBX#1#ST#184514$MDC_DRUG_NAME_LABEL$MDC#1.1.1.1#a!S!b|c",
    ]
    .join("\r");
    let msg = decode(&text).unwrap();
    assert_eq!(
        msg.header.sending_application,
        "DEV^00AA00000000000D^EUI-64"
    );
    assert_eq!(msg.header.control_id, "M\\S\\1");
    assert_eq!(msg.equipment_id, loc("00AA00000000000D"));
    assert_eq!(msg.observations[0].value_text, "a$b|c");
    assert_eq!(msg.observations[0].mdc_code, 184514);
}

fn ack_time() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 12, 0, 1)
        .single()
        .unwrap_or_default()
}

#[test]
fn ack_strings_match_protocols_md() {
    let header = parse_header(example().as_bytes()).unwrap();
    assert_eq!(
        build_ack(Some(&header), AckCode::AA, None, "ACK000987", ack_time()),
        "MSH|^~\\&|CIS|HOSP|ICU_GW^0012AB00000000A1^EUI-64|ICU_GW|20250101120001+0000||ACK^R01^ACK|ACK000987|P|2.6|||NE|NE\rMSA|AA|MSG000123"
    );
    let error = Hl7Error::new(
        AckCode::AE,
        ErrorCode::DataTypeError,
        Some(ErrorLocation::field("OBX", 3, 5)),
        "OBX-5 is not numeric",
    );
    assert_eq!(
        build_ack(Some(&header), AckCode::AE, Some(&error), "ACK000988", ack_time()),
        "MSH|^~\\&|CIS|HOSP|ICU_GW^0012AB00000000A1^EUI-64|ICU_GW|20250101120001+0000||ACK^R01^ACK|ACK000988|P|2.6|||NE|NE\rMSA|AE|MSG000123\rERR||OBX^3^5|102^Data type error^HL70357|E||||OBX-5 is not numeric"
    );
}

#[test]
fn ack_for_a_decode_error_round_trips_through_hl7_parser() {
    let text = with_segment(
        6,
        "OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|9|7||||R",
    );
    let text = text.replace("|9|7|", "|9^7|x|");
    let err = decode(&text).unwrap_err();
    let header = parse_header(text.as_bytes()).unwrap();
    let ack = build_ack(Some(&header), err.ack, Some(&err), "A1", ack_time());
    let parsed = hl7_parser::Message::parse(&ack).expect("ACK is valid HL7");
    let err_seg = parsed.segment("ERR").expect("ERR segment");
    assert_eq!(err_seg.field(2).unwrap().raw_value(), "OBX^3^5");
    assert_eq!(
        err_seg.field(3).unwrap().raw_value(),
        "102^Data type error^HL70357"
    );
    let user_message = err_seg.field(8).unwrap();
    assert_eq!(
        user_message.display(&parsed.separators).to_string(),
        "OBX-5 '9^7' is not numeric"
    );
    assert_eq!(
        parsed.segment("MSA").unwrap().field(2).unwrap().raw_value(),
        "MSG000123"
    );
}

#[test]
fn ack_without_header_and_with_hostile_text() {
    let err = decode_pcd01(b"garbage", 0, &Terminology::builtin()).unwrap_err();
    let ack = build_ack(None, err.ack, Some(&err), "ACK1", ack_time());
    assert!(ack.starts_with(
        "MSH|^~\\&|ICU_GW||||20250101120001+0000||ACK|ACK1|P|2.6|||NE|NE\rMSA|AR|\rERR||"
    ));
    assert!(
        ack.contains("|100^Segment sequence error^HL70357|E||||"),
        "{ack}"
    );

    let hostile = Hl7Error::new(
        AckCode::AE,
        ErrorCode::DataTypeError,
        None,
        "a|b^c~d\\e&f\r\nERR|inject\x0b\x1c",
    );
    let ack = build_ack(None, AckCode::AE, Some(&hostile), "X|Y", ack_time());
    let segments: Vec<&str> = ack.split('\r').collect();
    assert_eq!(segments.len(), 3, "{ack:?}");
    assert!(segments[2].ends_with("|E||||a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f  ERR\\F\\inject  "));
    assert!(segments[0].contains("|X\\F\\Y|"));
    assert!(!ack.chars().any(|c| c.is_control() && c != '\r'));
}

#[test]
fn error_helpers() {
    let e = Hl7Error::internal("store unavailable");
    assert_eq!(
        (e.ack, e.code, e.location.clone()),
        (AckCode::AR, ErrorCode::ApplicationInternalError, None)
    );
    let e = Hl7Error::unknown_device("0012AB00000000B2");
    assert_eq!(
        (e.ack, e.code),
        (AckCode::AR, ErrorCode::UnknownKeyIdentifier)
    );
    assert!(e.message.contains("0012AB00000000B2"));
    assert_eq!(ErrorCode::DataTypeError.code(), 102);
    assert_eq!(ErrorCode::ApplicationInternalError.code(), 207);
    assert_eq!(
        ErrorCode::UnsupportedVersionId.text(),
        "Unsupported version id"
    );
    assert_eq!(AckCode::AR.as_str(), "AR");
    assert_eq!(
        ErrorLocation::component("OBX", 3, 5, 1).to_string(),
        "OBX^3^5^1"
    );
    assert_eq!(ErrorLocation::field("OBX", 3, 5).to_string(), "OBX^3^5");
}

fn example_mutations() -> impl Strategy<Value = Vec<u8>> {
    let base = example().into_bytes();
    let len = base.len();
    let special = prop_oneof![
        Just(b'|'),
        Just(b'^'),
        Just(b'~'),
        Just(b'\\'),
        Just(b'&'),
        Just(b'\r'),
        Just(b'\n'),
        Just(b'-'),
        Just(b'.'),
        any::<u8>(),
    ];
    proptest::collection::vec((0..len, special, 0u8..3), 1..12).prop_map(move |edits| {
        let mut bytes = base.clone();
        for (pos, byte, op) in edits {
            let pos = pos.min(bytes.len().saturating_sub(1));
            match op {
                0 if !bytes.is_empty() => bytes[pos] = byte,
                1 => bytes.insert(pos, byte),
                _ if !bytes.is_empty() => {
                    bytes.remove(pos);
                }
                _ => {}
            }
        }
        bytes
    })
}

proptest! {
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let t = Terminology::builtin();
        let _ = parse_header(&bytes);
        let mut with_msh = b"MSH|^~\\&|".to_vec();
        with_msh.extend_from_slice(&bytes);
        for payload in [&bytes, &with_msh] {
            match decode_pcd01(payload, 0, &t) {
                Ok(msg) => prop_assert!(msg.observations.iter().all(|o| o.source_message_id == msg.header.control_id)),
                Err(e) => {
                    let header = parse_header(payload).ok();
                    let ack = build_ack(header.as_ref(), e.ack, Some(&e), "A", ack_time());
                    prop_assert!(!ack.chars().any(|c| c.is_control() && c != '\r'));
                    prop_assert_eq!(ack.split('\r').count(), 3);
                }
            }
        }
    }

    #[test]
    fn decode_never_panics_on_mutated_examples(bytes in example_mutations()) {
        let t = Terminology::builtin();
        match decode_pcd01(&bytes, 0, &t) {
            Ok(msg) => {
                prop_assert!(msg.observations.len() <= 8);
                for o in &msg.observations {
                    prop_assert!(o.value.is_none_or(f64::is_finite));
                }
            }
            Err(e) => {
                let header = parse_header(&bytes).ok();
                let ack = build_ack(header.as_ref(), e.ack, Some(&e), "A", ack_time());
                prop_assert_eq!(ack.split('\r').count(), 3);
                prop_assert!(!ack.chars().any(|c| c.is_control() && c != '\r'));
            }
        }
    }
}

/// The example's MSH, OBR and first three OBX rows with `gap` between OBX 1 and OBX 2.
fn with_gap_after_obx1(gap: &str) -> String {
    [
        EXAMPLE[0], EXAMPLE[3], EXAMPLE[4], gap, EXAMPLE[5], EXAMPLE[6],
    ]
    .join("\r")
}

/// Proof of hl7-parser 0.3's flaw: a line it cannot read as a segment (a blank line, a segment
/// id without a field separator) ends the message for it. It returns `Ok` with the segments
/// before that line and silently drops the rest. If this test fails, a new version has fixed
/// it and the pre-processing and guard in `message::parse` can be revisited.
#[test]
fn hl7_parser_drops_segments_after_an_unparseable_one() {
    fn names<'m>(m: &hl7_parser::Message<'m>) -> Vec<&'m str> {
        m.segments().map(|s| s.name).collect()
    }
    for gap in ["", "PV1"] {
        let text = with_gap_after_obx1(gap);
        for lenient in [true, false] {
            let parsed = hl7_parser::Message::parse_with_lenient_newlines(&text, lenient)
                .expect("hl7-parser reports no error");
            assert_eq!(names(&parsed), ["MSH", "OBR", "OBX"], "{gap:?} {lenient}");
            assert_eq!(
                parsed.segment_n("OBX", 1).map(|s| s.raw_value()),
                Some(EXAMPLE[4])
            );
            assert_eq!(parsed.segment_count("OBX"), 1, "OBX 2 and 3 are gone");
            assert_eq!(
                parsed.raw_value(),
                [EXAMPLE[0], EXAMPLE[3], EXAMPLE[4]].join("\r"),
                "{gap:?} {lenient}"
            );
        }
    }
    // The same with LF separators: a blank line is two LFs.
    let text = [EXAMPLE[0], EXAMPLE[3], EXAMPLE[4], "", EXAMPLE[5]].join("\n");
    let parsed = hl7_parser::Message::parse_with_lenient_newlines(&text, true).unwrap();
    assert_eq!(names(&parsed), ["MSH", "OBR", "OBX"]);
}

#[test]
fn decode_never_half_accepts_what_hl7_parser_would_truncate() {
    // Blank lines and bare segment ids are removed or completed before hl7-parser sees the
    // text, so the whole message decodes, as it did before hl7-parser was used.
    let full =
        decode(&[EXAMPLE[0], EXAMPLE[3], EXAMPLE[4], EXAMPLE[5], EXAMPLE[6]].join("\r")).unwrap();
    assert_eq!(full.observations.len(), 2);
    for gap in ["", "   ", "\n", "PV1"] {
        let msg = decode(&with_gap_after_obx1(gap)).unwrap();
        assert_eq!(msg.observations, full.observations, "{gap:?}");
    }

    // Whatever hl7-parser still drops is refused as a whole: the guard, fed the truncated
    // result hl7-parser really returns for such a message.
    let text = with_gap_after_obx1("");
    let lines: Vec<&str> = text.split('\r').filter(|l| !l.is_empty()).collect();
    let parsed = hl7_parser::Message::parse(&text).unwrap();
    let err = super::message::check_all_segments_returned(&lines, &parsed.segments).unwrap_err();
    assert_eq!(
        (err.ack, err.code),
        (AckCode::AE, ErrorCode::SegmentSequenceError)
    );
    assert_eq!(err.code.code(), 100);
    assert_eq!(err_loc(&err), loc("OBX^2"));
    assert_eq!(
        err.message,
        "segment 4 ('OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1…') could not be parsed; message refused, nothing stored"
    );
    let joined = lines.join("\r");
    let all = hl7_parser::Message::parse(&joined).unwrap();
    assert_eq!(
        super::message::check_all_segments_returned(&lines, &all.segments),
        Ok(())
    );
    // hl7-parser failing outright (no segments at all) is refused at the MSH.
    let err = super::message::check_all_segments_returned(&lines, &[]).unwrap_err();
    assert_eq!(err_loc(&err), loc("MSH^1"));
}

/// Why text values are unescaped by `message::unescape` and not hl7-parser's
/// `Separators::decode`: it turns `\XC3A9\` into `XC3A9`, keeps the letters of `\H\`, `\N\` and
/// unknown escapes, writes `\.br\` as CR, drops an unterminated escape, and panics when
/// multi-byte text precedes an escape (it slices by char index).
#[test]
fn hl7_parser_unescape_is_not_usable() {
    let separators = hl7_parser::message::Separators::default();
    let d = super::message::Delimiters::default();
    let text = "caf\\XC3A9\\ \\Q\\ \\H\\bold\\N\\ line\\.br\\two \\X4\\ open\\F";
    assert_eq!(
        separators.decode(text).to_string(),
        "cafXC3A9 Q HboldN line\rtwo X4 open"
    );
    assert_eq!(
        super::message::unescape(text, &d),
        "café \\Q\\ bold line\ntwo \\X4\\ open\\F"
    );
    assert_eq!(separators.decode("é\\F\\x").to_string(), "é\\x");
    assert!(std::panic::catch_unwind(|| separators.decode("éé\\F\\x").to_string()).is_err());
    assert_eq!(super::message::unescape("éé\\F\\x", &d), "éé|x");
}

#[test]
fn truncation_character_of_v2_7_does_not_shift_msh_fields() {
    let text = [
        "MSH|^~\\&#|DEV^00AA00000000000D^EUI-64|X|CIS|HOSP|20250101120000||ORU^R01|M1|P|2.7",
        "OBX|1|NM|147842^^MDC|1.1.1.1|60||||||R",
    ]
    .join("\r");
    let msg = decode(&text).unwrap();
    assert_eq!(
        msg.header.sending_application,
        "DEV^00AA00000000000D^EUI-64"
    );
    assert_eq!(
        (msg.header.control_id.as_str(), msg.header.version.as_str()),
        ("M1", "2.7")
    );
    assert_eq!(msg.observations[0].value, Some(60.0));
}

/// One field as nested raw values: the field, then each repetition, then each component with
/// its subcomponents.
type FieldTree<'m> = (&'m str, Vec<(&'m str, Vec<(&'m str, Vec<&'m str>)>)>);

fn reference_field<'m>(f: &hl7_parser::message::Field<'m>) -> FieldTree<'m> {
    let reps = f
        .repeats()
        .map(|r| {
            let comps = r
                .components()
                .map(|c| {
                    let subs = c.subcomponents().map(|s| s.raw_value()).collect();
                    (c.raw_value(), subs)
                })
                .collect();
            (r.raw_value(), comps)
        })
        .collect();
    (f.raw_value(), reps)
}

fn splitter_field(f: super::message::Field<'_>) -> FieldTree<'_> {
    let reps = f
        .repeats()
        .map(|r| {
            let comps = r
                .components()
                .map(|c| (c.raw_value(), c.subcomponents().collect()))
                .collect();
            (r.raw_value(), comps)
        })
        .collect();
    (f.raw_value(), reps)
}

/// The differential check: `message::parse` and hl7-parser (the reference, see message.rs)
/// return the same segments, fields, repetitions, components and subcomponents for a
/// well-formed message `text` (segments separated by `\r`, `\n` or `\r\n`, no blank lines, no
/// bare segment ids: what hl7-parser reads without truncating). With a v2.7 truncation
/// character, hl7-parser's MSH-2 and extra field are joined to compare with the splitter's
/// five-character MSH-2. (One more difference, not generated: for an MSH that ends at MSH-2,
/// hl7-parser returns an empty MSH-3 where the splitter has none; both read as "".)
pub(super) fn assert_splits_like_hl7_parser(text: &str) {
    let lenient = text.contains('\n');
    let reference = hl7_parser::Message::parse_with_lenient_newlines(text, lenient)
        .unwrap_or_else(|e| panic!("hl7-parser refuses {text:?}: {e}"));
    let (_, d) = super::header::msh_line(text.as_bytes()).expect("MSH line");
    let mut fields = Vec::new();
    let ours = super::message::parse(text, &d, &mut fields).expect("the splitter accepts it");
    let names: Vec<&str> = ours.iter().map(|s| s.id).collect();
    let reference_names: Vec<&str> = reference.segments().map(|s| s.name).collect();
    assert_eq!(names, reference_names, "{text:?}");
    for (i, (seg, reference_seg)) in ours.iter().zip(reference.segments()).enumerate() {
        let mut expected: Vec<FieldTree<'_>> =
            reference_seg.fields().map(reference_field).collect();
        if i == 0 && d.truncation.is_some() {
            let msh2 = &text[text.find("MSH").unwrap_or(0) + 4..][..5];
            expected.splice(1..3, [(msh2, vec![(msh2, vec![(msh2, vec![msh2])])])]);
        }
        let got: Vec<FieldTree<'_>> = (1..seg.field_count() + 1)
            .filter_map(|n| seg.field(n))
            .map(splitter_field)
            .collect();
        assert_eq!(got, expected, "segment {} of {text:?}", i + 1);
        assert_eq!(seg.field(0), None);
        assert_eq!(seg.field(seg.field_count() + 1), None);
    }
}

#[test]
fn splitter_matches_hl7_parser_on_the_pcd01_fixtures() {
    assert_splits_like_hl7_parser(&example());
    for sep in ["\n", "\r\n"] {
        assert_splits_like_hl7_parser(&EXAMPLE.join(sep));
    }
    for (i, segment) in [
        (5, "OBX|2|ST|184514^MDC_DRUG_NAME_LABEL^MDC|1.1.1.2|Noradrenalin \\T\\ Co\\F\\4\\S\\x \\E\\ \\X41\\||||||R"),
        (5, "OBX|2|ST|184514^MDC_DRUG_NAME_LABEL^MDC|1.1.1.2|caf\\XC3A9\\ \\Q\\ \\H\\bold\\N\\ line\\.br\\two \\X4\\ open\\F||||||R"),
        (5, "OBX|2|CWE|196616^MDC_EVT_ALARM^MDC|1.1.1.1|196882^MDC_EVT_LEADS_OFF^MDC~a&b^c&&d~||NAV~~TEST|||R"),
        (1, "PID|||123456^^^HOSP&1.2.3&ISO^MR~987^^^OTHER^PI||DOE^JOHN^^^^^L~Doe^J"),
        (2, "PV1|"),
        (2, "ZZ9|||||"),
    ] {
        assert_splits_like_hl7_parser(&with_segment(i, segment));
    }
    assert_splits_like_hl7_parser(
        &[
            "MSH#$~!&#DEV$00AA00000000000D$EUI-64#X#CIS#HOSP#20250101120000##ORU$R01#M^1#P#2.6",
            "OBX#1#ST#184514$MDC_DRUG_NAME_LABEL$MDC#1.1.1.1#a!S!b|c~d&e$f",
        ]
        .join("\r"),
    );
    assert_splits_like_hl7_parser(
        &[
            "MSH|^~\\&#|DEV^00AA00000000000D^EUI-64|X|CIS|HOSP|20250101120000||ORU^R01|M1|P|2.7",
            "OBX|1|NM|147842^^MDC|1.1.1.1|60||||||R",
        ]
        .join("\r"),
    );
    assert_splits_like_hl7_parser(&bench_message());
}

/// The message of `benches/pcd01.rs`.
#[path = "../../benches/support/pcd01_message.rs"]
mod pcd01_message;
use pcd01_message::message as bench_message;

/// The bench message decodes to these observations, field by field (the output the
/// hl7-parser-based decoder gave for it; the same held for every input of the pcd01 fuzz corpus
/// when the splitter replaced hl7-parser).
#[test]
fn bench_message_decodes_to_the_expected_observations() {
    let msg = decode(&bench_message()).unwrap();
    assert_eq!(msg.equipment_id, loc("0012AB00000000B2"));
    assert_eq!(msg.patient_id, loc("123456"));
    assert_eq!(msg.location, loc("ICU1^101^A^HOSP"));
    assert_eq!(msg.header.control_id, "MSG000123");
    let rows = [
        (
            147842,
            "MDC_ECG_HEART_RATE",
            72.0,
            "72",
            "/min",
            264864,
            50.0,
            120.0,
            "8867-4",
        ),
        (
            150456,
            "MDC_PULS_OXIM_SAT_O2",
            97.0,
            "97",
            "%",
            262688,
            90.0,
            100.0,
            "59408-5",
        ),
        (
            150301,
            "MDC_PRESS_CUFF_SYS",
            128.0,
            "128",
            "mm[Hg]",
            266016,
            90.0,
            160.0,
            "8480-6",
        ),
        (
            150302,
            "MDC_PRESS_CUFF_DIA",
            78.0,
            "78",
            "mm[Hg]",
            266016,
            50.0,
            90.0,
            "8462-4",
        ),
        (
            150303,
            "MDC_PRESS_CUFF_MEAN",
            95.0,
            "95",
            "mm[Hg]",
            266016,
            60.0,
            110.0,
            "8478-0",
        ),
        (
            151562,
            "MDC_RESP_RATE",
            16.0,
            "16",
            "/min",
            264928,
            8.0,
            30.0,
            "9279-1",
        ),
        (
            150364,
            "MDC_TEMP_BODY",
            37.2,
            "37.2",
            "Cel",
            268192,
            35.5,
            38.5,
            "8310-5",
        ),
    ];
    assert_eq!(msg.observations.len(), 12);
    for (i, o) in msg.observations.iter().enumerate() {
        let (code, refid, value, text, ucum, unit, low, high, loinc) = rows[i % rows.len()];
        let row = u32::try_from(i).unwrap();
        let expected = Observation {
            mdc_code: code,
            mdc_refid: refid.into(),
            value: Some(value),
            value_text: text.into(),
            unit_ucum: ucum.into(),
            unit_mdc_code: unit,
            containment_id: format!("1.1.1.{}", i + 1),
            device_time_us: Some(us(2025, 1, 1, 12, 0, 0)),
            receive_time_us: RECEIVED_US,
            status: ObservationStatus::Valid as i32,
            limit_low: Some(low),
            limit_high: Some(high),
            loinc: loinc.into(),
            source_message_id: "MSG000123".into(),
            source_row: row + 4,
            equipment_id: "0012AB00000000B2".into(),
            reported_patient_id: "123456".into(),
            result_status: "R".into(),
            ..Default::default()
        };
        assert_eq!(*o, expected, "row {i}");
    }
}

/// A generated value: (kind, choice) tokens, see `generated_message`.
type GenValue = Vec<(u8, usize)>;
/// A generated repetition: components of subcomponents of values.
type GenRepeat = Vec<Vec<GenValue>>;

/// A generated well-formed message: random delimiters (optionally with a truncation
/// character), segment ids, fields, repetitions, components, subcomponents, escape sequences,
/// multi-byte text and segment separators.
fn generated_message() -> impl Strategy<Value = String> {
    const PUNCTUATION: &[char] = &[
        '|', '^', '~', '\\', '&', '#', '$', '!', '@', '%', '*', '+', '/', ':', ';', '=', '?', '{',
        '}', '[', ']', '_', '`', '\'', '"', ',', '.', '<', '>', '(', ')', '-',
    ];
    let delimiters = (Just(PUNCTUATION.to_vec()).prop_shuffle(), any::<bool>())
        .prop_map(|(p, truncation)| p[..if truncation { 6 } else { 5 }].to_vec());
    // A value is built from tokens: 0 text, 1 multi-byte text, 2 escape sequence, 3 other
    // punctuation (not a delimiter of this message).
    let value = proptest::collection::vec((0u8..4, 0usize..8), 0..4);
    let subcomponents = proptest::collection::vec(value, 1..3);
    let components = proptest::collection::vec(subcomponents, 1..4);
    let repeats = proptest::collection::vec(components, 1..3);
    let fields = proptest::collection::vec(repeats, 1..10);
    let id = prop_oneof![
        Just("PID".to_owned()),
        Just("OBX".to_owned()),
        "[A-Z][A-Z0-9]{2}".prop_filter("not MSH", |id| id != "MSH"),
    ];
    let segments = proptest::collection::vec((id, fields.clone()), 0..6);
    let separator = prop_oneof![Just("\r"), Just("\n"), Just("\r\n")];
    (delimiters, fields, segments, separator).prop_map(|(d, msh_fields, segments, sep)| {
        let (fs, cs, rs, es, ss) = (d[0], d[1], d[2], d[3], d[4]);
        let others: Vec<char> = PUNCTUATION
            .iter()
            .copied()
            .filter(|c| !d.contains(c))
            .collect();
        let token = |(kind, n): (u8, usize)| -> String {
            match kind {
                0 => ["", "a", "72", "Doe John", "1.2.3", "-5", "x y z", "MDC_X"][n].to_owned(),
                1 => ["é", "漢字", "ß", "ü1", "→", "Ω", "ñ", "🙂"][n].to_owned(),
                2 => {
                    let seq = ["F", "S", "T", "R", "E", "X41", ".br", "H"][n];
                    format!("{es}{seq}{es}")
                }
                _ => others[n % others.len()].to_string(),
            }
        };
        let field = |reps: Vec<GenRepeat>| -> String {
            let rep = |comps: GenRepeat| {
                let comp = |subs: Vec<GenValue>| {
                    let sub = |tokens: GenValue| tokens.into_iter().map(token).collect::<String>();
                    subs.into_iter()
                        .map(sub)
                        .collect::<Vec<_>>()
                        .join(&ss.to_string())
                };
                comps
                    .into_iter()
                    .map(comp)
                    .collect::<Vec<_>>()
                    .join(&cs.to_string())
            };
            reps.into_iter()
                .map(rep)
                .collect::<Vec<_>>()
                .join(&rs.to_string())
        };
        let encoding: String = d[1..].iter().collect();
        let mut msh = format!("MSH{fs}{encoding}");
        for f in msh_fields {
            msh.push(fs);
            msh.push_str(&field(f));
        }
        let mut lines = vec![msh];
        for (id, fields) in segments {
            let mut line = id;
            for f in fields {
                line.push(fs);
                line.push_str(&field(f));
            }
            lines.push(line);
        }
        lines.join(sep)
    })
}

proptest! {
    #[test]
    fn splitter_matches_hl7_parser_on_generated_messages(text in generated_message()) {
        assert_splits_like_hl7_parser(&text);
    }
}
