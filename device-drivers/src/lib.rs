//! Device protocol codecs of the ICU edge gateway (`icu-drivers`).
//!
//! Owns one folder per protocol, each a pure codec over bytes (no I/O, no clock, fuzzable), plus
//! the terminology tables the codecs use to normalise codes and units:
//!
//! - [`mllp`]: MLLP framing of HL7 v2 over TCP (`0x0B … 0x1C 0x0D`), with resync and a frame
//!   size limit.
//! - [`hl7`]: the HL7 v2 header, IHE PCD-01 (`ORU^R01`) to [`icu_protos::v1::Observation`], and
//!   ACK/NAK building.
//! - [`masimo`]: Masimo ASCII 1 serial output (one `KEY=value` line per second) to
//!   [`icu_protos::v1::Observation`], with ALARM/EXC bit decoding.
//! - [`medibus`]: Dräger MEDIBUS over RS-232: frame codec, payload parsers, the gateway's polling
//!   session and a device-side responder for the simulator.
//! - [`terminology`]: IEEE 11073-10101 MDC ↔ UCUM ↔ LOINC tables, embedded from
//!   `terminology/*.tsv`, and the native device codes of each driver (`native-<driver>.tsv`).
//!
//! - `fuzzing` (hidden): the body of each cargo-fuzz target, shared with the corpus
//!   regression test.
//!
//! The codecs never touch a socket, a serial port or the clock: the thin transport that feeds a
//! codec bytes sits beside it and reuses one framing path, so every decoder is tested with
//! captured bytes and property tests.

#[doc(hidden)]
pub mod fuzzing;
pub mod hl7;
pub mod masimo;
pub mod medibus;
pub mod mllp;
pub mod mqtt;
pub mod serial_line;
pub mod terminology;
