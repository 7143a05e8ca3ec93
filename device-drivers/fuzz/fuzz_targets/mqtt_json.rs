//! MQTT JSON observation payloads.
//! The body is `icu_drivers::fuzzing::mqtt_json`, which `device-drivers/tests/fuzz_corpus.rs` also runs
//! over this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| icu_drivers::fuzzing::mqtt_json(data));
