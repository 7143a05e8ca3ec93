//! The ~2 KB IHE PCD-01 message of `benches/pcd01.rs`, shared with the decoder's tests
//! (`src/hl7/tests.rs` includes this file), which pin what it decodes to.

/// A bedside monitor's PCD-01: MSH, PID, PV1, OBR, MDS/VMD/CHAN rows and 12 metric rows.
pub fn message() -> String {
    let mut segs = vec![
        "MSH|^~\\&|ICU_GW^0012AB00000000A1^EUI-64|ICU_GW|CIS|HOSP|20250101120000+0000||ORU^R01^ORU_R01|MSG000123|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO".to_owned(),
        "PID|||123456^^^HOSP^MR||DOE^JOHN^^^^^L".to_owned(),
        "PV1||I|ICU1^101^A^HOSP".to_owned(),
        "OBR|1|MSG000123^ICU_GW^0012AB00000000A1^EUI-64|MSG000123^ICU_GW^0012AB00000000A1^EUI-64|182777000^monitoring of patient^SCT|||20250101120000+0000".to_owned(),
        "OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||0012AB00000000B2^^0012AB00000000B2^EUI-64".to_owned(),
        "OBX|2||69710^MDC_DEV_ANALY_PRESS_BLD_VMD^MDC|1.1.0.0|||||||X".to_owned(),
        "OBX|3||69855^MDC_DEV_METER_PRESS_BLD_CHAN^MDC|1.1.1.0|||||||X".to_owned(),
    ];
    let rows = [
        (
            "147842^MDC_ECG_HEART_RATE^MDC",
            "72",
            "264864^MDC_DIM_BEAT_PER_MIN^MDC",
            "50-120",
        ),
        (
            "150456^MDC_PULS_OXIM_SAT_O2^MDC",
            "97",
            "262688^MDC_DIM_PERCENT^MDC",
            "90-100",
        ),
        (
            "150301^MDC_PRESS_CUFF_SYS^MDC",
            "128",
            "266016^MDC_DIM_MMHG^MDC",
            "90-160",
        ),
        (
            "150302^MDC_PRESS_CUFF_DIA^MDC",
            "78",
            "266016^MDC_DIM_MMHG^MDC",
            "50-90",
        ),
        (
            "150303^MDC_PRESS_CUFF_MEAN^MDC",
            "95",
            "266016^MDC_DIM_MMHG^MDC",
            "60-110",
        ),
        (
            "151562^MDC_RESP_RATE^MDC",
            "16",
            "264928^MDC_DIM_RESP_PER_MIN^MDC",
            "8-30",
        ),
        (
            "150364^MDC_TEMP_BODY^MDC",
            "37.2",
            "268192^MDC_DIM_DEGC^MDC",
            "35.5-38.5",
        ),
    ];
    for i in 0..12 {
        let (code, value, unit, range) = rows[i % rows.len()];
        segs.push(format!(
            "OBX|{}|NM|{code}|1.1.1.{}|{value}|{unit}|{range}||||R||||||AMEAS^auto-measurement^MDC",
            i + 4,
            i + 1
        ));
    }
    segs.join("\r")
}
