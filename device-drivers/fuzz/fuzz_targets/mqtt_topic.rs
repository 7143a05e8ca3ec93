//! MQTT observation topics.
//! The body is `icu_drivers::fuzzing::mqtt_topic`, which `device-drivers/tests/fuzz_corpus.rs` also runs
//! over this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| icu_drivers::fuzzing::mqtt_topic(data));
