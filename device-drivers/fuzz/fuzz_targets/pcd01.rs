//! IHE PCD-01 decoding of one MLLP payload.
#![no_main]

use icu_drivers::hl7::decode_pcd01;
use icu_drivers::terminology::Terminology;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_pcd01(data, 0, &Terminology::builtin());
});
