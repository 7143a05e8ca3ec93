//! MLLP framing: arbitrary bytes, fed in two chunks, through the decode loop.
//! The body is `icu_drivers::fuzzing::mllp`, which `device-drivers/tests/fuzz_corpus.rs` also runs
//! over this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| icu_drivers::fuzzing::mllp(data));
