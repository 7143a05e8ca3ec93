use proptest::prelude::*;

use super::*;
use crate::hl7::decode_pcd01;

const HEAD: &str = "MSH|^~\\&|MON^0012AB00000000A1^EUI-64|ICU|GW|HOSP|20250101120000+0000||ORU^R01^ORU_R01|W0001|P|2.6\r\
PID|||123456^^^HOSP^MR\r\
PV1||I|ICU1^101^A^HOSP\r";

/// Numerics, then one waveform group with two channels: ECG II in mV with decimals, a gap and
/// a data range; pleth as integers with a resolution.
const NUMERICS: &str = "OBR|1|||182777000^monitoring of patient^SCT|||20250101120000+0000\r\
OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||0012AB00000000B2^^0012AB00000000B2^EUI-64\r\
OBX|2|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1|72|264864^MDC_DIM_BEAT_PER_MIN^MDC|50-120||||R\r\
OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1|97|262688^MDC_DIM_PERCENT^MDC|90-100||||R\r";

const WAVES: &str = "OBR|2|||69121^MDC_OBS_WAVE_CTS^MDC|||20250101120000+0000|20250101120000.02+0000\r\
OBX|4|NA|131330^MDC_ECG_ELEC_POTL_II^MDC|1.1.1.100|0.125^-0.5^^^1.25^3^0.0^-2.5^0.01^0.02|266418^MDC_DIM_MILLI_VOLT^MDC|||||R|||20250101120000+0000\r\
OBX|5|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.100.1|500|264608^MDC_DIM_PER_SEC^MDC|||||R\r\
OBX|6|NR|0^MDC_ATTR_DATA_RANGE^MDC|1.1.1.100.2|-2^2|266418^MDC_DIM_MILLI_VOLT^MDC|||||R\r\
OBX|7|NA|150452^MDC_PULS_OXIM_PLETH^MDC|1.2.1.100|100^200^300|262656^MDC_DIM_DIMLESS^MDC|||||R\r\
OBX|8|NM|2327^MDC_ATTR_NU_MSMT_RES^MDC|1.2.1.100.2|0.25|262656^MDC_DIM_DIMLESS^MDC|||||R\r\
OBX|9|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.2.1.100.1|125|264640^MDC_DIM_HZ^MDC|||||R\r\
OBX|10|NM|196660^MDC_EVT_INOP^MDC|1.2.1.100.3|0||||||R";

fn term() -> std::sync::Arc<Terminology> {
    Terminology::builtin()
}

fn decode(msg: &str) -> Result<Pcd01Waveforms, Hl7Error> {
    decode_with(msg, &WaveformConfig::default())
}

fn decode_with(msg: &str, config: &WaveformConfig) -> Result<Pcd01Waveforms, Hl7Error> {
    decode_pcd01_waveforms(msg.as_bytes(), 99, &term(), config)
}

fn mixed() -> String {
    format!("{HEAD}{NUMERICS}{WAVES}")
}

/// The error for the mixed message with `old` replaced by `new` (which must be in it).
fn refused(old: &str, new: &str) -> Hl7Error {
    let msg = mixed();
    assert!(msg.contains(old), "{old}");
    decode(&msg.replace(old, new)).unwrap_err()
}

fn loc(e: &Hl7Error) -> String {
    e.location
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default()
}

fn run(start: u32, count: u32) -> SampleRun {
    SampleRun { start, count }
}

#[test]
fn decodes_every_channel_next_to_the_numerics() {
    let w = decode(&mixed()).unwrap();
    assert_eq!(w.segments.len(), 2);
    let ecg = &w.segments[0];
    assert_eq!(ecg.mdc_code, 131330);
    assert_eq!(ecg.mdc_refid, "MDC_ECG_ELEC_POTL_II");
    assert_eq!(ecg.containment_id, "1.1.1.100");
    assert_eq!(ecg.unit_mdc_code, 266418);
    assert_eq!(ecg.sample_rate_hz, 500.0);
    assert_eq!(ecg.sample_period_us, 2000.0);
    assert_eq!(ecg.decimal_exponent, -3);
    assert_eq!(ecg.scale, 1.0);
    assert_eq!(ecg.sample_count, 10);
    // Exactly as written, at 10^-3; the two empty values are a gap, not zeros.
    assert_eq!(ecg.samples, vec![125, -500, 1250, 3000, 0, -2500, 10, 20]);
    assert_eq!(ecg.gaps, vec![run(2, 2)]);
    assert_eq!((ecg.range_low, ecg.range_high), (Some(-2.0), Some(2.0)));
    assert_eq!(ecg.above_range, vec![run(5, 1)]);
    assert_eq!(ecg.below_range, vec![run(7, 1)]);
    assert_eq!(ecg.first_sample_time_us, Some(1_735_732_800_000_000));
    assert_eq!(ecg.receive_time_us, 99);
    assert_eq!(ecg.equipment_id, "0012AB00000000B2");
    assert_eq!(ecg.source_message_id, "W0001");
    assert_eq!(ecg.source_row, 4);
    assert_eq!(ecg.status, ObservationStatus::Valid as i32);

    let pleth = &w.segments[1];
    assert_eq!(pleth.mdc_code, 150452);
    assert_eq!(pleth.sample_rate_hz, 125.0);
    assert_eq!(pleth.sample_period_us, 8000.0);
    assert_eq!(pleth.decimal_exponent, 0);
    assert_eq!(pleth.scale, 0.25);
    assert_eq!(pleth.samples, vec![100, 200, 300]);
    assert!(pleth.gaps.is_empty());
    // No OBX-14: the first sample is at OBR-7.
    assert_eq!(pleth.first_sample_time_us, Some(1_735_732_800_000_000));
    assert_eq!(pleth.unit_ucum, "1");
}

#[test]
fn the_numerics_decode_exactly_as_without_the_waveforms() {
    let w = decode(&mixed()).unwrap();
    let alone = decode_pcd01(format!("{HEAD}{NUMERICS}").as_bytes(), 99, &term()).unwrap();
    assert_eq!(w.message.observations, alone.observations);
    assert_eq!(w.message.observations.len(), 2);
    // A message without waveform rows gives what decode_pcd01 gives, even with an OBR-8 that
    // only the waveform check would read.
    let plain = format!("{HEAD}{NUMERICS}");
    let odd_obr8 = plain.replace(
        "|20250101120000+0000\rOBX|1|",
        "|20250101120000+0000|soon\rOBX|1|",
    );
    assert_ne!(plain, odd_obr8);
    for msg in [plain, odd_obr8] {
        let w = decode(&msg).unwrap();
        assert!(w.segments.is_empty());
        assert_eq!(
            w.message,
            decode_pcd01(msg.as_bytes(), 99, &term()).unwrap()
        );
    }
}

#[test]
fn a_missing_sample_rate_is_refused_at_its_row() {
    let e = refused(
        "OBX|9|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.2.1.100.1|125|264640^MDC_DIM_HZ^MDC|||||R\r",
        "",
    );
    assert_eq!(
        (e.ack, e.code),
        (AckCode::AE, ErrorCode::RequiredFieldMissing)
    );
    assert_eq!(loc(&e), "OBX^7^3");
    assert!(e.message.contains("no sample rate"), "{e}");
}

#[test]
fn a_zero_negative_or_non_numeric_sample_rate_is_refused() {
    for (rate, what) in [
        ("0", "above 0"),
        ("-500", "above 0"),
        ("fast", "not a number"),
    ] {
        let e = refused("|1.1.1.100.1|500|", &format!("|1.1.1.100.1|{rate}|"));
        assert_eq!((e.ack, e.code), (AckCode::AE, ErrorCode::DataTypeError));
        assert_eq!(loc(&e), "OBX^5^5", "{rate}");
        assert!(e.message.contains(what), "{rate}: {e}");
    }
    let e = refused(
        "|500|264608^MDC_DIM_PER_SEC^MDC|",
        "|500|264338^MDC_DIM_MILLI_SEC^MDC|",
    );
    assert_eq!(loc(&e), "OBX^5^6");
}

#[test]
fn disagreeing_or_inconsistent_sample_rates_are_refused() {
    let two = mixed().replace(
        "OBX|10|",
        "OBX|11|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.2.1.100.4|250|264608^MDC_DIM_PER_SEC^MDC\rOBX|10|",
    );
    let e = decode(&two).unwrap_err();
    assert!(e.message.contains("disagrees"), "{e}");
    // 10 samples at 50/s last 0.2 s, but OBR-7..OBR-8 is 0.02 s.
    let slow = mixed().replace("|1.1.1.100.1|500|", "|1.1.1.100.1|50|");
    let e = decode(&slow).unwrap_err();
    assert_eq!(loc(&e), "OBX^5^5");
    assert!(e.message.contains("inconsistent sample rate"), "{e}");
    // The check can be turned off (UNCONFIRMED sender behaviour).
    let lenient = WaveformConfig {
        interval_tolerance: None,
        ..WaveformConfig::default()
    };
    assert_eq!(
        decode_with(&slow, &lenient).unwrap().segments[0].sample_rate_hz,
        50.0
    );
}

#[test]
fn a_non_numeric_sample_is_refused_at_its_component() {
    let msg = mixed().replace("^3^0.0^", "^3^x1^");
    let e = decode(&msg).unwrap_err();
    assert_eq!((e.ack, e.code), (AckCode::AE, ErrorCode::DataTypeError));
    assert_eq!(loc(&e), "OBX^4^5^7");
    assert!(e.message.contains("'x1'"), "{e}");
    for bad in ["1e3", "NaN", "1.2.3", "--1", "0x10"] {
        let msg = mixed().replace("^3^0.0^", &format!("^3^{bad}^"));
        assert!(decode(&msg).is_err(), "{bad}");
    }
}

#[test]
fn a_segment_longer_than_the_bound_is_refused_before_parsing() {
    let small = WaveformConfig {
        max_samples: 9,
        ..WaveformConfig::default()
    };
    let e = decode_with(&mixed(), &small).unwrap_err();
    assert_eq!(loc(&e), "OBX^4^5");
    assert!(e.message.contains("10 samples"), "{e}");
    let fits = WaveformConfig {
        max_samples: 10,
        ..WaveformConfig::default()
    };
    assert!(decode_with(&mixed(), &fits).is_ok());
}

#[test]
fn a_sample_that_cannot_be_kept_exactly_is_refused() {
    // 0.9999728924443673 has 16 decimal places.
    let msg = mixed().replace("^3^0.0^", "^3^0.9999728924443673^");
    let e = decode(&msg).unwrap_err();
    assert_eq!(loc(&e), "OBX^4^5^7");
    assert!(e.message.contains("cannot be kept exactly"), "{e}");
    // 9 decimal places fit, but then 3 is 3,000,000,000: more than a 32-bit sample.
    let msg = mixed().replace("^3^0.0^", "^3^0.123456789^");
    let e = decode(&msg).unwrap_err();
    assert_eq!(loc(&e), "OBX^4^5^6");
    let msg = mixed().replace(
        "|0.125^-0.5^^^1.25^3^0.0^-2.5^0.01^0.02|",
        "|0.123456789^-1.5|",
    );
    let lenient = WaveformConfig {
        interval_tolerance: None,
        ..WaveformConfig::default()
    };
    let w = decode_with(&msg, &lenient).unwrap();
    assert_eq!(w.segments[0].samples, vec![123_456_789, -1_500_000_000]);
    assert_eq!(w.segments[0].decimal_exponent, -9);
}

#[test]
fn ranges_resolutions_and_array_shapes_are_checked() {
    let msg = mixed().replace("|-2^2|", "|2^-2|");
    assert!(decode(&msg).unwrap_err().message.contains("inverted"));
    let msg = mixed().replace("|-2^2|", "|low^2|");
    assert_eq!(loc(&decode(&msg).unwrap_err()), "OBX^6^5^1");
    let msg = mixed().replace("|0.25|", "|0|");
    assert_eq!(loc(&decode(&msg).unwrap_err()), "OBX^8^5");
    let msg = mixed().replace("|100^200^300|", "|100^200~300|");
    assert!(decode(&msg).unwrap_err().message.contains("repetitions"));
}

#[test]
fn a_multiplexed_array_of_one_channel_is_a_segment() {
    let msg = mixed()
        .replace("|7|NA|", "|7|MA|")
        .replace("|100^200^300|", "|100~~300|");
    let w = decode(&msg).unwrap();
    assert_eq!(w.segments[1].samples, vec![100, 300]);
    assert_eq!(w.segments[1].gaps, vec![run(1, 1)]);
    let msg = mixed()
        .replace("|7|NA|", "|7|MA|")
        .replace("|100^200^300|", "|100^1~200^2|");
    assert!(decode(&msg)
        .unwrap_err()
        .message
        .contains("several channels"));
}

#[test]
fn empty_waveform_rows_and_their_attributes_leave_the_numerics() {
    let msg = mixed().replace("|100^200^300|", "||");
    let w = decode(&msg).unwrap();
    assert_eq!(w.segments.len(), 1);
    assert_eq!(w.message.observations.len(), 2);
}

#[test]
fn test_mode_and_flags_give_the_status() {
    let w = decode(&mixed().replace("|W0001|P|", "|W0001|D|")).unwrap();
    assert!(w
        .segments
        .iter()
        .all(|s| s.status == ObservationStatus::Test as i32));
    let w = decode(&mixed().replace(
        "|262656^MDC_DIM_DIMLESS^MDC|||||R\rOBX|8",
        "|262656^MDC_DIM_DIMLESS^MDC||INV|||R\rOBX|8",
    ))
    .unwrap();
    assert_eq!(w.segments[1].status, ObservationStatus::Invalid as i32);
}

/// The WCM test message of a public waveform processor (NIST/"sllmdilab t5"), with its samples
/// cut to three as published: its OBR-8 says one second, so the interval check is off here.
#[test]
fn a_published_wcm_test_message_decodes() {
    let msg = "MSH|^~\\&|SendingApplication|SendingFacility|ReceivingApplication|ReceivingFacility|20120530112345||ORU^R01^ORU_R01|9879790004|P|2.6|||NE|AL|USA|ASCII|EN^English^ISO639||IHE_PCD_ORU_R01^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO\r\
PID|||010101-2425||Doe^John^^^^^B\r\
PV1||I|ICU^2^23\r\
OBR|2||XXX|0^WAVEFORM|||20150617120000.000|20150617120001.000\r\
OBX|1000||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0||x^x^x||F|||F|||||||ABC123\r\
OBX|1001|NA|131329^MDC_ECG_LEAD_I^MDC|1.1.1.1001|-0.53714565^-0.54203324^-0.53128055|266418^MDC_DIM_MILLI_VOLT^MDC|||||F|||20150617120000.000\r\
OBX|1002|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.1001.1|150.0|264608^MDC_DIM_PER_SEC|||||F\r\
OBX|1003|NR|0^MDC_ATTR_DATA_RANGE^MDC|1.1.1.1001.2|-5.0^10.0|266418^MDC_DIM_MILLI_VOLT^MDC|||||F";
    let lenient = WaveformConfig {
        interval_tolerance: None,
        ..WaveformConfig::default()
    };
    let w = decode_with(msg, &lenient).unwrap();
    let s = &w.segments[0];
    assert_eq!(s.samples, vec![-53714565, -54203324, -53128055]);
    assert_eq!(s.decimal_exponent, -8);
    assert_eq!(s.sample_rate_hz, 150.0);
    assert!(w.message.observations.is_empty());
    assert!(decode(msg).unwrap_err().message.contains("inconsistent"));
}

proptest! {
    /// Any samples and gaps written as an NA value come back exactly, gaps where they were.
    #[test]
    fn written_samples_come_back_exactly(
        values in proptest::collection::vec(proptest::option::weighted(0.9, -99_999i32..99_999), 1..300),
        places in 0u32..4,
    ) {
        let text: Vec<String> = values
            .iter()
            .map(|v| match v {
                None => String::new(),
                Some(v) if places == 0 => v.to_string(),
                Some(v) => {
                    let div = 10i32.pow(places);
                    let sign = if *v < 0 { "-" } else { "" };
                    format!("{sign}{}.{:0width$}", v.unsigned_abs() / div.unsigned_abs(), v.unsigned_abs() % div.unsigned_abs(), width = places as usize)
                }
            })
            .collect();
        let msg = format!(
            "{HEAD}OBR|1|||x|||20250101120000+0000\rOBX|1|NA|131329^MDC_ECG_ELEC_POTL_I^MDC|1.1.1.1|{}|266418^MDC_DIM_MILLI_VOLT^MDC\rOBX|2|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.1.1|500|264608^MDC_DIM_PER_SEC^MDC",
            text.join("^")
        );
        let lenient = WaveformConfig { interval_tolerance: None, ..WaveformConfig::default() };
        let mut segments = decode_with(&msg, &lenient).unwrap().segments;
        if segments.is_empty() {
            // An NA value with no sample at all (a row of gaps only, e.g. one empty value) is
            // an empty row, which leaves the message without a segment.
            prop_assert!(values.iter().all(Option::is_none), "samples lost: {:?}", values);
            return Ok(());
        }
        let s = segments.remove(0);
        prop_assert_eq!(s.sample_count as usize, values.len());
        let any = values.iter().any(Option::is_some);
        prop_assert_eq!(s.decimal_exponent, if any { -(places as i32) } else { 0 });
        let present: Vec<i32> = values.iter().flatten().copied().collect();
        prop_assert_eq!(&s.samples, &present);
        let missing: u32 = s.gaps.iter().map(|g| g.count).sum();
        prop_assert_eq!(missing as usize, values.iter().filter(|v| v.is_none()).count());
        for g in &s.gaps {
            for i in g.start..g.start + g.count {
                prop_assert!(values[i as usize].is_none());
            }
        }
    }
}
