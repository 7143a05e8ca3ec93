//! Decode cost of a realistic ~2 KB IHE PCD-01 message: (a) hl7-parser's `Message::parse`
//! alone, (c) the zero-copy splitter that replaced it on the decode path (`hl7/message.rs`),
//! made to visit every field, repetition, component and subcomponent as hl7-parser builds
//! them, and (b) the full `decode_pcd01` (header, splitting, row rules, terminology).
//!
//! Run with `cargo bench -p icu-drivers --bench pcd01`. A plain `main` timed with `Instant`, so
//! it needs no bench framework; numbers are indicative, not statistically rigorous.

use std::hint::black_box;
use std::time::Instant;

use icu_drivers::hl7::{decode_pcd01, split_for_bench};
use icu_drivers::terminology::Terminology;

const N: u32 = 20_000;

/// A bedside monitor's PCD-01: MSH, PID, PV1, OBR, MDS/VMD/CHAN rows and 12 metric rows.
fn message() -> String {
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

fn time(label: &str, mut f: impl FnMut()) {
    for _ in 0..N / 10 {
        f(); // warm-up
    }
    let start = Instant::now();
    for _ in 0..N {
        f();
    }
    let per_message = start.elapsed().as_secs_f64() * 1e6 / f64::from(N);
    println!("{label:<38} {per_message:>8.2} µs/message");
}

fn main() {
    let text = message();
    let terminology = Terminology::builtin();
    let decoded = decode_pcd01(text.as_bytes(), 0, &terminology).expect("bench message decodes");
    println!(
        "message: {} bytes, {} segments, {} observations; N = {N}",
        text.len(),
        text.split('\r').count(),
        decoded.observations.len()
    );
    time("(a) hl7_parser::Message::parse", || {
        let parsed = hl7_parser::Message::parse(black_box(&text)).expect("parses");
        black_box(parsed);
    });
    time("(c) zero-copy splitter, all values", || {
        let parsed = split_for_bench(black_box(text.as_bytes())).expect("splits");
        black_box(parsed);
    });
    time("(b) decode_pcd01", || {
        let decoded = decode_pcd01(black_box(text.as_bytes()), 0, &terminology);
        let _ = black_box(decoded);
    });
}
