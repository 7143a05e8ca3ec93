//! Masimo ASCII 1 serial output (Radical-7, Rad-8, Rad-87, Root), protocols.md §2.
//!
//! Owns: splitting the unsolicited serial stream into CR LF lines ([`MasimoCodec`]), parsing one
//! `MM/DD/YY HH:MM:SS KEY=value ...` line into a [`MasimoRecord`], decoding the ALARM and EXC bit
//! fields, and mapping a record to [`icu_protos::v1::Observation`]s ([`to_observations`]). The
//! serial transport (tokio-serial) is not here: it feeds bytes to the codec.
//!
//! Guarantees:
//! - Pure codec, no I/O, no clock; never panics on any input (property-tested and fuzzed).
//! - Bounded memory: a line longer than `max_line_bytes` (default 512) is dropped as it arrives and
//!   reported once as [`MasimoEvent::Oversized`]; blank lines are skipped silently.
//! - Every event carries the stream byte offset where its line starts; a parse error also names
//!   the byte offset inside the line.
//! - Fields are read by key, not by position (the field set differs by model and firmware).
//!   Unknown keys are kept in [`MasimoRecord::values`].
//! - A value filled with dashes (`---%`, `--.-`, `+--`) is "not available": `value` is `None` and
//!   the observation status is `NOT_AVAILABLE`, never zero. A value that is neither a number nor
//!   dashes is kept as text with status `INVALID`.
//! - Only keys with an MDC code in `terminology/native-masimo.tsv` become observations: SPO2
//!   (150456, `%`), BPM (149530, `/min`) and PI (150448, `%`). SPCO, SPMET, SPHB, SPOC, PVI, DESAT
//!   and PIDELTA have no MDC code in protocols.md §5, so they stay in the record only.
//! - ALARM bit 0x0010 (alarm active) and 0x0020 (silenced) are states, not conditions
//!   ([`MasimoRecord::alarm_active`], [`MasimoRecord::alarm_silenced`]). EXC bit 0x000800
//!   ("Masimo SET") is normal and never reported as a condition. The priorities given to each bit
//!   are this gateway's choice (Masimo does not publish them; protocols.md §2.4 note).

mod codec;
mod record;

pub use codec::{MasimoCodec, MasimoEvent, DEFAULT_MAX_LINE_BYTES};

/// The line Masimo devices send on: 9600 8N1.
pub const LINE: crate::serial_line::LineDefaults = crate::serial_line::LineDefaults {
    baud: 9600,
    data_bits: 8,
    parity: "none",
    stop_bits: 1,
    usual: "Masimo: 9600",
};
pub use record::{
    parse_line, to_observations, AlarmPriority, DeviceAlarm, MasimoError, MasimoRecord,
    MasimoValue, ValueStatus, DRIVER,
};

#[cfg(test)]
mod tests;
