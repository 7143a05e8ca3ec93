//! Masimo ASCII 1: line codec, record parsing and mapping to observations.
//! The body is `icu_drivers::fuzzing::masimo`, which `device-drivers/tests/fuzz_corpus.rs` also runs
//! over this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| icu_drivers::fuzzing::masimo(data));
