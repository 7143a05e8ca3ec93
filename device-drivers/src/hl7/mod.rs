//! HL7 v2 over MLLP: message header, IHE PCD-01 decoding and acknowledgements.
//!
//! Owns: reading the MSH of any HL7 v2 message ([`parse_header`]), decoding IHE PCD-01
//! `ORU^R01` into canonical [`icu_protos::v1::Observation`]s ([`decode_pcd01`]) and, with its
//! waveform rows (IHE PCD WCM), into [`icu_protos::v1::WaveformSegment`]s as well
//! ([`decode_pcd01_waveforms`]), the reasons a
//! message is refused ([`Hl7Error`], mapped to HL7 tables 0008 and 0357) and the ACK sent back
//! ([`build_ack`]).
//!
//! Guarantees:
//! - Pure functions over bytes: no I/O, no clock (the caller passes receive and ACK times).
//! - Never panics on any input; a refused message yields exactly one [`Hl7Error`] whose location
//!   (`SEG^occurrence^field[^component]`) and message tell the biomedical engineer what to fix.
//! - The header is readable even when later segments are broken, so every frame that starts
//!   with `MSH` gets a correlated ACK.
//! - Lenient where senders differ harmlessly: segment separators `\r`, `\n` or `\r\n`, a leading
//!   byte-order mark, blank lines, non-standard delimiters declared in MSH-2, unknown segments.
//!
//! Acknowledge only what is durable: the caller sends the AA built by [`build_ack`] after the
//! store committed the observations, and [`Hl7Error::internal`] (AR 207) when the store failed.

mod ack;
mod adt;
mod error;
mod header;
mod message;
mod pcd01;
mod pcd04;
mod time;
mod waveform;

pub use ack::{ack_error_text, build_ack, parse_msa, GATEWAY_APPLICATION};
pub use adt::{decode_adt, AdtEventKind, AdtLocation, AdtMessage, AdtPatient};
pub use error::{AckCode, ErrorCode, ErrorLocation, Hl7Error};
pub use header::{parse_header, MessageHeader};
pub use pcd01::{decode_pcd01, Pcd01Message};
pub use pcd04::{
    build_pcd04, MetricRow, Pcd04Context, DEFAULT_METRIC_CONTAINMENT, MDC_EVT_ALARM_CWE,
    MDC_EVT_HI_CWE, PCD04_PROFILE_DEFAULT,
};
pub use time::{parse_dtm, DtmError};
pub use waveform::{decode_pcd01_waveforms, Pcd01Waveforms, WaveformConfig};

/// The zero-copy splitter alone, for `benches/pcd01.rs` (next to hl7-parser's
/// `Message::parse`): splits a payload into segments and fields and visits every repetition,
/// component and subcomponent; returns the number of subcomponents. Not part of the API.
#[doc(hidden)]
pub fn split_for_bench(payload: &[u8]) -> Result<usize, Hl7Error> {
    header::split_everything(payload)
}

#[cfg(test)]
mod tests;
