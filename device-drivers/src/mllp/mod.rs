//! MLLP (Minimal Lower Layer Protocol) framing for HL7 v2 over TCP.
//!
//! Owns: splitting a byte stream into `0x0B <payload> 0x1C 0x0D` blocks and wrapping outgoing
//! payloads (ACKs) in the same framing (protocols.md §4.2).
//!
//! Guarantees:
//! - Pure codec, no I/O: the TCP listener hands bytes in through
//!   [`tokio_util::codec::FramedRead`] (or calls [`MllpCodec`] directly in tests).
//! - Every byte of the stream is accounted for: it is part of exactly one [`MllpEvent`]
//!   (a frame, a skipped run of garbage, or a discarded oversized frame), and each event carries the
//!   stream byte offset where it starts, so a log line can name the exact position.
//! - Bounded memory: the decoder never buffers more than `max_frame_bytes + 2` bytes of a frame;
//!   garbage and oversized frames are counted and dropped as they arrive, keeping only their first
//!   256 bytes for diagnostics.
//! - The events do not depend on how the stream was chunked into reads.

mod codec;

pub use codec::{
    encode_frame, MllpCodec, MllpEvent, DEFAULT_MAX_FRAME_BYTES, GARBAGE_REPORT_BYTES,
};

/// Start-of-block byte (`<VT>`).
pub const START_BLOCK: u8 = 0x0B;
/// First end-of-block byte (`<FS>`).
pub const END_BLOCK: u8 = 0x1C;
/// Second end-of-block byte (`<CR>`).
pub const CARRIAGE_RETURN: u8 = 0x0D;

#[cfg(test)]
mod tests;
