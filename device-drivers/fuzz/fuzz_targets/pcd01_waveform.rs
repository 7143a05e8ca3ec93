//! IHE PCD-01 waveform decoding (WCM) of one MLLP payload.
//! The body is `icu_drivers::fuzzing::pcd01_waveform`, which `device-drivers/tests/fuzz_corpus.rs`
//! also runs over this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| icu_drivers::fuzzing::pcd01_waveform(data));
