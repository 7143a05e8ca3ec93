//! Dräger MEDIBUS realtime data: sync bytes, sync commands and samples mixed into the slow
//! protocol, through the codec's realtime decoder and a session with realtime on. The body is
//! `icu_drivers::fuzzing::medibus_realtime`, which `device-drivers/tests/fuzz_corpus.rs` also
//! runs over this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| icu_drivers::fuzzing::medibus_realtime(data));
