//! Line framing of the ASCII 1 stream (tokio-util [`Decoder`]).
//!
//! mini-redis pattern: a cheap scan for LF over bytes not scanned before (so each byte is looked at
//! once) decides whether a whole line is buffered; only then is the line split off and parsed.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::record::{parse_line, MasimoError, MasimoRecord};

/// Default longest accepted line (CR included, LF excluded). Real lines are under 200 bytes.
pub const DEFAULT_MAX_LINE_BYTES: usize = 512;

/// How much of a refused line is kept in [`MasimoEvent::Invalid`].
const LINE_REPORT_BYTES: usize = 256;

/// What the decoder found. `offset` is the stream byte offset where the line starts.
#[derive(Debug, Clone, PartialEq)]
pub enum MasimoEvent {
    /// A parsed line.
    Line(MasimoRecord),
    /// A line that could not be parsed; `line` is its first 256 bytes (lossy UTF-8) and the
    /// reason names the byte offset inside the line.
    Invalid {
        offset: u64,
        line: String,
        reason: MasimoError,
    },
    /// A line longer than the limit, dropped as it arrived; `len` counts its bytes with the LF.
    Oversized { offset: u64, len: usize },
}

/// Decoder of ASCII 1 lines into [`MasimoEvent`]s.
#[derive(Debug)]
pub struct MasimoCodec {
    max_line_bytes: usize,
    utc_offset_minutes: i32,
    /// Stream offset of `buf[0]`.
    offset: u64,
    /// `buf[..scanned]` holds no LF.
    scanned: usize,
    /// Dropping an oversized line that started at this offset, with this many bytes dropped.
    discarding: Option<(u64, usize)>,
}

impl Default for MasimoCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE_BYTES, 0)
    }
}

impl MasimoCodec {
    /// A codec accepting lines of at most `max_line_bytes`, reading timestamps in
    /// `utc_offset_minutes` (east of UTC positive).
    pub fn new(max_line_bytes: usize, utc_offset_minutes: i32) -> Self {
        Self {
            max_line_bytes,
            utc_offset_minutes,
            offset: 0,
            scanned: 0,
            discarding: None,
        }
    }

    /// Stream offset of the next byte not yet consumed.
    pub fn stream_offset(&self) -> u64 {
        self.offset
    }

    fn consume(&mut self, buf: &mut BytesMut, n: usize) -> BytesMut {
        self.offset += n as u64;
        self.scanned = 0;
        buf.split_to(n)
    }

    fn line_event(&self, offset: u64, line: &[u8]) -> Option<MasimoEvent> {
        if line.len() > self.max_line_bytes {
            return Some(MasimoEvent::Oversized {
                offset,
                len: line.len() + 1,
            });
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(match parse_line(line, self.utc_offset_minutes) {
            Ok(record) => MasimoEvent::Line(record),
            Err(reason) => MasimoEvent::Invalid {
                offset,
                line: head(line),
                reason,
            },
        })
    }
}

fn head(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(LINE_REPORT_BYTES)]).into_owned()
}

impl Decoder for MasimoCodec {
    type Item = MasimoEvent;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<MasimoEvent>, std::io::Error> {
        loop {
            if let Some((offset, len)) = self.discarding {
                return Ok(match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.consume(buf, i + 1);
                        self.discarding = None;
                        Some(MasimoEvent::Oversized {
                            offset,
                            len: len + i + 1,
                        })
                    }
                    None => {
                        let n = buf.len();
                        self.consume(buf, n);
                        self.discarding = Some((offset, len + n));
                        None
                    }
                });
            }
            let from = self.scanned.min(buf.len());
            match buf[from..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let offset = self.offset;
                    let mut line = self.consume(buf, from + i + 1);
                    line.truncate(from + i);
                    if let Some(event) = self.line_event(offset, &line) {
                        return Ok(Some(event));
                    }
                }
                None if buf.len() > self.max_line_bytes => {
                    self.discarding = Some((self.offset, 0));
                }
                None => {
                    self.scanned = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    /// At end of stream a partial line is reported as [`MasimoError::Unterminated`] (or as
    /// oversized when it was being dropped); nothing is dropped silently.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<MasimoEvent>, std::io::Error> {
        if let Some(event) = self.decode(buf)? {
            return Ok(Some(event));
        }
        if let Some((offset, len)) = self.discarding.take() {
            return Ok(Some(MasimoEvent::Oversized { offset, len }));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let offset = self.offset;
        let n = buf.len();
        let line = self.consume(buf, n);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        Ok(Some(MasimoEvent::Invalid {
            offset,
            line: head(&line),
            reason: MasimoError::Unterminated,
        }))
    }
}
