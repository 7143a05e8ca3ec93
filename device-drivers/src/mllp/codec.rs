//! The MLLP decoder/encoder state machine.
//!
//! Decoding follows the mini-redis pattern: a cheap scan over bytes already buffered decides
//! whether a complete block is present (remembering how far it scanned, so each byte is examined
//! once); only then is the block split off the buffer, without copying.
//!
//! Resynchronisation rules:
//! - bytes before a `0x0B` are garbage; a run of garbage is reported when the next frame starts,
//!   at end of stream, or every [`GARBAGE_REPORT_BYTES`] bytes, whichever comes first, so a device
//!   sending only noise is visible quickly and the report does not depend on read sizes;
//! - a `0x0B` inside an unterminated frame restarts the frame there; the partial frame before it
//!   is reported as garbage;
//! - a `0x1C` not followed by `0x0D` is payload;
//! - a frame whose payload exceeds `max_frame_bytes` is dropped as it arrives (never buffered
//!   beyond the limit) up to its end marker, the next `0x0B`, or end of stream, and reported once
//!   as [`MllpEvent::Oversized`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{CARRIAGE_RETURN, END_BLOCK, START_BLOCK};

/// Default largest accepted payload: 1 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// A run of garbage is reported at the latest after this many bytes.
pub const GARBAGE_REPORT_BYTES: usize = 4096;

/// How many bytes of garbage or of an oversized frame are kept for diagnostics.
const HEAD_BYTES: usize = 256;

/// What the decoder found in the stream.
///
/// For every variant `offset` is the stream byte offset (counted from the first byte the codec
/// saw) where the event's bytes start, and the events tile the stream: the next event starts at
/// `offset + len` (for a frame, `offset + payload.len() + 3`).
#[derive(Debug, Clone, PartialEq)]
pub enum MllpEvent {
    /// A complete frame; payload excludes 0x0B and 0x1C 0x0D. offset = stream byte offset of the 0x0B.
    Frame { offset: u64, payload: Bytes },
    /// Bytes outside any frame (before a 0x0B), skipped to resync. `head` = first <=256 bytes.
    ///
    /// This also reports a partial frame cut short by a new `0x0B` or by the end of the stream
    /// (then `head` starts with the `0x0B`).
    Garbage {
        offset: u64,
        len: usize,
        head: Bytes,
    },
    /// A frame longer than max_frame_bytes: discarded up to its end marker (never buffered beyond the limit); emitted once.
    ///
    /// `len` counts every discarded byte, start and end markers included; `head` is the first
    /// <=256 bytes of the frame, starting with its `0x0B`.
    Oversized {
        offset: u64,
        len: usize,
        head: Bytes,
    },
}

/// A pending run of garbage (bytes before a start-of-block).
#[derive(Debug)]
struct Run {
    offset: u64,
    len: usize,
    head: Vec<u8>,
}

impl Run {
    fn push(&mut self, bytes: &[u8]) {
        let room = HEAD_BYTES.saturating_sub(self.head.len());
        self.head.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.len += bytes.len();
    }

    fn into_event(self) -> MllpEvent {
        MllpEvent::Garbage {
            offset: self.offset,
            len: self.len,
            head: Bytes::from(self.head),
        }
    }
}

#[derive(Debug)]
enum State {
    /// Looking for a start-of-block; `run` holds the garbage seen so far (already consumed).
    Idle { run: Option<Run> },
    /// `buf[0]` is the `0x0B` of a frame; bytes `1..scanned` hold no end marker and no `0x0B`.
    InFrame { scanned: usize },
    /// Dropping an oversized frame that started at `offset`; `len` bytes are already dropped.
    Discarding {
        offset: u64,
        len: usize,
        head: Vec<u8>,
    },
}

/// Decoder of MLLP blocks into [`MllpEvent`]s and encoder of payloads into blocks.
#[derive(Debug)]
pub struct MllpCodec {
    max_frame_bytes: usize,
    /// Stream offset of the first byte currently in the decode buffer.
    offset: u64,
    state: State,
}

impl Default for MllpCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl MllpCodec {
    /// A codec accepting payloads of at most `max_frame_bytes` bytes (markers excluded).
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes,
            offset: 0,
            state: State::Idle { run: None },
        }
    }

    /// The largest payload this codec accepts.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Stream offset of the next byte the decoder has not yet consumed.
    pub fn stream_offset(&self) -> u64 {
        self.offset
    }

    /// Whether the decoder holds a partial event: a garbage run not yet reported or an
    /// oversized frame being discarded (a frame in progress sits in the caller's buffer).
    /// [`Decoder::decode_eof`] reports it.
    pub fn mid_event(&self) -> bool {
        !matches!(self.state, State::Idle { run: None })
    }

    fn take(&mut self, buf: &mut BytesMut, n: usize) -> BytesMut {
        self.offset += n as u64;
        buf.split_to(n)
    }

    fn skip(&mut self, buf: &mut BytesMut, n: usize) {
        self.offset += n as u64;
        buf.advance(n);
    }

    fn head_of(bytes: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&bytes[..bytes.len().min(HEAD_BYTES)])
    }

    /// Idle: consume garbage up to the next `0x0B`.
    fn decode_idle(&mut self, buf: &mut BytesMut, run: Option<Run>) -> Option<MllpEvent> {
        let room = GARBAGE_REPORT_BYTES - run.as_ref().map_or(0, |r| r.len);
        let window = buf.len().min(room);
        match buf[..window].iter().position(|&b| b == START_BLOCK) {
            Some(0) if run.is_none() => {
                self.state = State::InFrame { scanned: 1 };
                None
            }
            Some(i) => {
                let mut run = run.unwrap_or_else(|| self.new_run());
                run.push(&buf[..i]);
                self.skip(buf, i);
                self.state = State::InFrame { scanned: 1 };
                Some(run.into_event())
            }
            None => {
                let mut run = run.unwrap_or_else(|| self.new_run());
                run.push(&buf[..window]);
                self.skip(buf, window);
                if run.len >= GARBAGE_REPORT_BYTES {
                    self.state = State::Idle { run: None };
                    Some(run.into_event())
                } else {
                    self.state = State::Idle { run: Some(run) };
                    None
                }
            }
        }
    }

    fn new_run(&self) -> Run {
        Run {
            offset: self.offset,
            len: 0,
            head: Vec::new(),
        }
    }

    /// In a frame: look for its end, a restarting `0x0B`, or the size limit.
    fn decode_in_frame(&mut self, buf: &mut BytesMut, scanned: usize) -> Option<MllpEvent> {
        // The 0x1C of an acceptable frame sits at index 1..=max+1 (payload = buf[1..j]).
        let last_end = self.max_frame_bytes.saturating_add(1);
        let mut j = scanned;
        while j < buf.len() && j <= last_end {
            match buf[j] {
                START_BLOCK => {
                    let offset = self.offset;
                    let partial = self.take(buf, j);
                    self.state = State::InFrame { scanned: 1 };
                    return Some(MllpEvent::Garbage {
                        offset,
                        len: j,
                        head: Self::head_of(&partial),
                    });
                }
                END_BLOCK if j + 1 == buf.len() => break,
                END_BLOCK if buf[j + 1] == CARRIAGE_RETURN => {
                    let offset = self.offset;
                    let frame = self.take(buf, j + 2).freeze();
                    self.state = State::Idle { run: None };
                    return Some(MllpEvent::Frame {
                        offset,
                        payload: frame.slice(1..j),
                    });
                }
                _ => j += 1,
            }
        }
        if j > last_end {
            // Every acceptable end position has been seen without an end marker: oversized.
            let offset = self.offset;
            let head = buf[..j.min(HEAD_BYTES)].to_vec();
            self.skip(buf, j);
            self.state = State::Discarding {
                offset,
                len: j,
                head,
            };
            return self.decode_discarding(buf);
        }
        self.state = State::InFrame { scanned: j };
        None
    }

    /// Dropping an oversized frame until its end marker or the next `0x0B`.
    fn decode_discarding(&mut self, buf: &mut BytesMut) -> Option<MllpEvent> {
        let State::Discarding {
            offset,
            mut len,
            mut head,
        } = std::mem::replace(&mut self.state, State::Idle { run: None })
        else {
            return None;
        };
        // (bytes to drop, state after the frame if it ended here)
        let mut k = 0;
        let (dropped, next) = loop {
            if k >= buf.len() {
                break (k, None);
            }
            match buf[k] {
                START_BLOCK => break (k, Some(State::InFrame { scanned: 1 })),
                // Keep a trailing 0x1C: its 0x0D may come with the next read.
                END_BLOCK if k + 1 == buf.len() => break (k, None),
                END_BLOCK if buf[k + 1] == CARRIAGE_RETURN => {
                    break (k + 2, Some(State::Idle { run: None }))
                }
                _ => k += 1,
            }
        };
        let room = HEAD_BYTES.saturating_sub(head.len());
        head.extend_from_slice(&buf[..dropped.min(room)]);
        len += dropped;
        self.skip(buf, dropped);
        if let Some(next) = next {
            self.state = next;
            return Some(MllpEvent::Oversized {
                offset,
                len,
                head: Bytes::from(head),
            });
        }
        self.state = State::Discarding { offset, len, head };
        None
    }
}

impl Decoder for MllpCodec {
    type Item = MllpEvent;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<MllpEvent>, std::io::Error> {
        loop {
            if buf.is_empty() {
                return Ok(None);
            }
            let state = std::mem::replace(&mut self.state, State::Idle { run: None });
            let event = match state {
                State::Idle { run } => {
                    let event = self.decode_idle(buf, run);
                    if event.is_none() && matches!(self.state, State::InFrame { .. }) {
                        continue; // a frame starts at buf[0]
                    }
                    event
                }
                State::InFrame { scanned } => self.decode_in_frame(buf, scanned),
                discarding @ State::Discarding { .. } => {
                    self.state = discarding;
                    self.decode_discarding(buf)
                }
            };
            return Ok(event);
        }
    }

    /// At end of stream nothing is dropped silently: a pending garbage run, a truncated frame
    /// (reported as [`MllpEvent::Garbage`]) or an oversized frame still being discarded is
    /// reported.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<MllpEvent>, std::io::Error> {
        if let Some(event) = self.decode(buf)? {
            return Ok(Some(event));
        }
        let state = std::mem::replace(&mut self.state, State::Idle { run: None });
        let event = match state {
            State::Idle { run } => run.map(Run::into_event),
            State::InFrame { .. } => {
                let offset = self.offset;
                let len = buf.len();
                let partial = self.take(buf, len);
                Some(MllpEvent::Garbage {
                    offset,
                    len,
                    head: Self::head_of(&partial),
                })
            }
            State::Discarding {
                offset,
                len,
                mut head,
            } => {
                let n = buf.len();
                let room = HEAD_BYTES.saturating_sub(head.len());
                head.extend_from_slice(&buf[..n.min(room)]);
                self.skip(buf, n);
                Some(MllpEvent::Oversized {
                    offset,
                    len: len + n,
                    head: Bytes::from(head),
                })
            }
        };
        Ok(event)
    }
}

impl Encoder<&[u8]> for MllpCodec {
    type Error = std::io::Error;

    /// Wraps `payload` in `0x0B .. 0x1C 0x0D`. A payload containing `0x0B` or `0x1C` would
    /// corrupt the framing for the peer and is refused with `InvalidInput`.
    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), std::io::Error> {
        if let Some(pos) = payload
            .iter()
            .position(|&b| b == START_BLOCK || b == END_BLOCK)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "refusing to send an MLLP payload containing framing byte 0x{:02X} at offset {pos}",
                    payload[pos]
                ),
            ));
        }
        dst.reserve(payload.len() + 3);
        dst.put_u8(START_BLOCK);
        dst.put_slice(payload);
        dst.put_u8(END_BLOCK);
        dst.put_u8(CARRIAGE_RETURN);
        Ok(())
    }
}

/// `0x0B <payload> 0x1C 0x0D`. The caller must not pass `0x0B` or `0x1C` inside `payload`
/// (use the [`Encoder`] impl to have that checked).
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(payload);
    out.push(END_BLOCK);
    out.push(CARRIAGE_RETURN);
    out
}
