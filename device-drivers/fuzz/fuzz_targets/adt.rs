//! HL7 v2 ADT decoding of one MLLP payload (the census feed).
//! The body is `icu_drivers::fuzzing::adt`, which `device-drivers/tests/fuzz_corpus.rs` also runs
//! over this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| icu_drivers::fuzzing::adt(data));
