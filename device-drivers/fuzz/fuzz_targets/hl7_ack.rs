//! The HL7 ACK the PCD-04 alarm output reads back (MSA and ERR).
//! The body is `icu_drivers::fuzzing::hl7_ack`, which `device-drivers/tests/fuzz_corpus.rs` also runs
//! over this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| icu_drivers::fuzzing::hl7_ack(data));
