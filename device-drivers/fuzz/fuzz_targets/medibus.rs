//! Dräger MEDIBUS: frame codec, payload parsers, the gateway session and the device responder.
//! The body is `icu_drivers::fuzzing::medibus`, which `device-drivers/tests/fuzz_corpus.rs` also runs
//! over this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| icu_drivers::fuzzing::medibus(data));
