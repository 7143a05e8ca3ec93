//! MEDIBUS frames: encoding and the stream decoder (protocols.md §1.3).
//!
//! ```text
//! Command  : ESC CMD [args...] CS_hi CS_lo CR
//! Response : SOH CMD [data...] CS_hi CS_lo CR
//! ```
//! The checksum is the sum of every byte from the header through the last data byte, modulo 256,
//! sent as two upper-case hex characters (the decoder also accepts lower case).
//!
//! Decoding rules:
//! - Bytes ≥ 0x80 are realtime data interleaved on the same line: they are skipped wherever they
//!   appear (also inside a frame) and counted ([`MedibusCodec::realtime_bytes`]). With
//!   [`MedibusCodec::with_realtime`] they also go, in order, to a [`RealtimeDecoder`] whose
//!   frames [`MedibusCodec::take_realtime`] hands over; the slow events are the same either way.
//! - DC1 (0x11) and DC3 (0x13) are software handshake: skipped and counted.
//! - ESC or SOH starts a frame and CR ends it. A header inside an unterminated frame restarts the
//!   frame there; the cut-off frame is reported as [`MedibusEvent::Corrupt`].
//! - Other bytes outside a frame are garbage, reported as [`MedibusEvent::Garbage`] when the next
//!   frame starts, at end of stream, or every [`GARBAGE_REPORT_BYTES`] bytes.
//! - A frame longer than `max_frame_bytes` is reported once as corrupt and dropped up to its CR or
//!   the next header (never buffered beyond the limit).
//! - A bad checksum is reported as corrupt; decoding resumes at the next ESC/SOH.
//!
//! The decoder looks at every byte once and keeps only the current frame (at most
//! `max_frame_bytes`), so its events do not depend on how the stream was split into reads.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Decoder;

use super::realtime::{RealtimeDecoder, RealtimeFrame, RealtimeStats, SampleByteOrder};

/// Command header.
pub const ESC: u8 = 0x1B;
/// Response header.
pub const SOH: u8 = 0x01;
/// Frame terminator.
pub const CR: u8 = 0x0D;
/// End of one text message inside a text-message response.
pub const ETX: u8 = 0x03;
/// XON (resume).
pub const DC1: u8 = 0x11;
/// XOFF (suspend).
pub const DC3: u8 = 0x13;

/// Default longest frame (header through checksum). Large enough for every CP1 data code.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4096;
/// A run of garbage is reported at the latest after this many bytes.
pub const GARBAGE_REPORT_BYTES: usize = 4096;

/// Command or response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Starts with ESC.
    Command,
    /// Starts with SOH (echoes the code of the command it answers).
    Response,
}

/// One frame with a good checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MedibusFrame {
    pub kind: FrameKind,
    /// Command code (echoed by a response), e.g. `b'$'`.
    pub code: u8,
    /// Arguments or response data, header, code, checksum and CR excluded.
    pub data: Bytes,
    /// Stream byte offset of the header.
    pub offset: u64,
}

impl MedibusFrame {
    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        match self.kind {
            FrameKind::Command => encode_command(self.code, &self.data),
            FrameKind::Response => encode_response(self.code, &self.data),
        }
    }
}

/// Why a frame was refused. Offsets are stream byte offsets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error(
        "frame at byte {offset}: checksum '{found}' does not match the computed {expected:02X}; line noise or wrong baud/parity"
    )]
    BadChecksum {
        offset: u64,
        expected: u8,
        found: String,
    },
    #[error(
        "frame at byte {offset}: {len} bytes before CR; a frame needs a header, a command byte and a 2-character checksum"
    )]
    TooShort { offset: u64, len: usize },
    #[error("frame at byte {offset}: cut short by a new frame header at byte {at}")]
    Interrupted { offset: u64, at: u64 },
    #[error("frame at byte {offset}: no CR within {limit} bytes; dropped up to its end")]
    Oversized { offset: u64, limit: usize },
    #[error("frame at byte {offset}: the stream ended before its CR")]
    Unterminated { offset: u64 },
}

/// What the decoder found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MedibusEvent {
    Frame(MedibusFrame),
    /// A frame that failed a check; `offset` is where its header was.
    Corrupt {
        offset: u64,
        reason: FrameError,
    },
    /// `len` slow-channel bytes outside any frame, the first at `offset`.
    Garbage {
        offset: u64,
        len: usize,
    },
}

/// Sum of `bytes` modulo 256.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, &b| acc.wrapping_add(b))
}

fn hex_digit(n: u8) -> u8 {
    b"0123456789ABCDEF"[usize::from(n & 0x0F)]
}

/// Two upper-case hex characters of `byte` (leading zero kept).
pub fn hex_pair(byte: u8) -> [u8; 2] {
    [hex_digit(byte >> 4), hex_digit(byte)]
}

fn encode(header: u8, code: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 5);
    out.push(header);
    out.push(code);
    out.extend_from_slice(data);
    let cs = hex_pair(checksum(&out));
    out.extend_from_slice(&cs);
    out.push(CR);
    out
}

/// `ESC cmd args CS CR`.
pub fn encode_command(cmd: u8, args: &[u8]) -> Vec<u8> {
    encode(ESC, cmd, args)
}

/// `SOH cmd data CS CR`.
pub fn encode_response(cmd: u8, data: &[u8]) -> Vec<u8> {
    encode(SOH, cmd, data)
}

fn parse_hex_pair(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    match pair {
        [hi, lo] => Some((digit(*hi)? * 16 + digit(*lo)?) as u8),
        _ => None,
    }
}

#[derive(Debug)]
enum State {
    /// Between frames; a garbage run `(offset, len)` may be pending.
    Idle { garbage: Option<(u64, usize)> },
    /// Inside a frame that started at `offset`; `buf` holds its slow bytes from the header on.
    InFrame { offset: u64, buf: Vec<u8> },
    /// Dropping an oversized frame up to its CR or the next header.
    Discarding,
}

/// Decoder of a MEDIBUS byte stream into [`MedibusEvent`]s.
#[derive(Debug)]
pub struct MedibusCodec {
    max_frame_bytes: usize,
    /// Stream offset of the first byte in the decode buffer.
    offset: u64,
    state: State,
    realtime_bytes: u64,
    flow_control_bytes: u64,
    realtime: Option<RealtimeDecoder>,
}

impl Default for MedibusCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl MedibusCodec {
    /// A decoder accepting frames of at most `max_frame_bytes` (header through checksum).
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes: max_frame_bytes.max(4),
            offset: 0,
            state: State::Idle { garbage: None },
            realtime_bytes: 0,
            flow_control_bytes: 0,
            realtime: None,
        }
    }

    /// Also decodes the realtime bytes (see [`super::realtime`]).
    pub fn with_realtime(mut self, order: SampleByteOrder) -> Self {
        self.realtime = Some(RealtimeDecoder::new(order));
        self
    }

    /// Realtime frames completed so far (none without [`Self::with_realtime`]).
    pub fn take_realtime(&mut self) -> Vec<RealtimeFrame> {
        self.realtime
            .as_mut()
            .map(RealtimeDecoder::take_frames)
            .unwrap_or_default()
    }

    /// The realtime decoder's counters, when it is on.
    pub fn realtime_stats(&self) -> Option<RealtimeStats> {
        self.realtime.as_ref().map(RealtimeDecoder::stats)
    }

    /// Realtime bytes (≥ 0x80) skipped so far.
    pub fn realtime_bytes(&self) -> u64 {
        self.realtime_bytes
    }

    /// DC1/DC3 bytes skipped so far.
    pub fn flow_control_bytes(&self) -> u64 {
        self.flow_control_bytes
    }

    /// Stream offset of the next byte not yet consumed.
    pub fn stream_offset(&self) -> u64 {
        self.offset
    }

    /// Checks a complete frame (`buf` = header .. checksum, CR removed).
    fn finish(offset: u64, buf: &[u8]) -> MedibusEvent {
        if buf.len() < 4 {
            return MedibusEvent::Corrupt {
                offset,
                reason: FrameError::TooShort {
                    offset,
                    len: buf.len(),
                },
            };
        }
        let (body, cs) = buf.split_at(buf.len() - 2);
        let expected = checksum(body);
        if parse_hex_pair(cs) != Some(expected) {
            return MedibusEvent::Corrupt {
                offset,
                reason: FrameError::BadChecksum {
                    offset,
                    expected,
                    found: String::from_utf8_lossy(cs).into_owned(),
                },
            };
        }
        MedibusEvent::Frame(MedibusFrame {
            kind: if body[0] == ESC {
                FrameKind::Command
            } else {
                FrameKind::Response
            },
            code: body[1],
            data: Bytes::copy_from_slice(&body[2..]),
            offset,
        })
    }

    /// Feeds one slow-channel byte at stream offset `at`; returns an event when one completes.
    fn step(&mut self, b: u8, at: u64) -> Option<MedibusEvent> {
        let header = b == ESC || b == SOH;
        let state = std::mem::replace(&mut self.state, State::Idle { garbage: None });
        let (next, event) = match state {
            State::Idle { garbage } if header => (
                State::InFrame {
                    offset: at,
                    buf: vec![b],
                },
                garbage.map(|(offset, len)| MedibusEvent::Garbage { offset, len }),
            ),
            State::Idle { garbage } => {
                let (offset, len) = garbage.map_or((at, 1), |(o, l)| (o, l + 1));
                if len >= GARBAGE_REPORT_BYTES {
                    (
                        State::Idle { garbage: None },
                        Some(MedibusEvent::Garbage { offset, len }),
                    )
                } else {
                    (
                        State::Idle {
                            garbage: Some((offset, len)),
                        },
                        None,
                    )
                }
            }
            State::InFrame { offset, .. } if header => (
                State::InFrame {
                    offset: at,
                    buf: vec![b],
                },
                Some(MedibusEvent::Corrupt {
                    offset,
                    reason: FrameError::Interrupted { offset, at },
                }),
            ),
            State::InFrame { offset, buf } if b == CR => (
                State::Idle { garbage: None },
                Some(Self::finish(offset, &buf)),
            ),
            State::InFrame { offset, buf } if buf.len() >= self.max_frame_bytes => (
                State::Discarding,
                Some(MedibusEvent::Corrupt {
                    offset,
                    reason: FrameError::Oversized {
                        offset,
                        limit: self.max_frame_bytes,
                    },
                }),
            ),
            State::InFrame { offset, mut buf } => {
                buf.push(b);
                (State::InFrame { offset, buf }, None)
            }
            State::Discarding if header => (
                State::InFrame {
                    offset: at,
                    buf: vec![b],
                },
                None,
            ),
            State::Discarding if b == CR => (State::Idle { garbage: None }, None),
            State::Discarding => (State::Discarding, None),
        };
        self.state = next;
        event
    }
}

impl Decoder for MedibusCodec {
    type Item = MedibusEvent;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<MedibusEvent>, std::io::Error> {
        let mut used = 0;
        let mut event = None;
        while used < buf.len() && event.is_none() {
            let b = buf[used];
            let at = self.offset + used as u64;
            used += 1;
            if b >= 0x80 {
                self.realtime_bytes += 1;
                if let Some(rt) = self.realtime.as_mut() {
                    rt.push(b, at);
                }
            } else if b == DC1 || b == DC3 {
                self.flow_control_bytes += 1;
            } else {
                event = self.step(b, at);
            }
        }
        let _ = buf.split_to(used);
        self.offset += used as u64;
        Ok(event)
    }

    /// At end of stream a pending garbage run or an unterminated frame is reported.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<MedibusEvent>, std::io::Error> {
        if let Some(event) = self.decode(buf)? {
            return Ok(Some(event));
        }
        if let Some(rt) = self.realtime.as_mut() {
            rt.finish();
        }
        let state = std::mem::replace(&mut self.state, State::Idle { garbage: None });
        Ok(match state {
            State::Idle { garbage } => {
                garbage.map(|(offset, len)| MedibusEvent::Garbage { offset, len })
            }
            State::InFrame { offset, .. } => Some(MedibusEvent::Corrupt {
                offset,
                reason: FrameError::Unterminated { offset },
            }),
            State::Discarding => None,
        })
    }
}
