//! MEDIBUS realtime data: the synchronised stream of curve samples a Dräger device sends next
//! to the slow protocol, on the same line (protocols.md §1.6 "Realtime").
//!
//! Every realtime byte has bit 7 set; the slow protocol uses 7-bit bytes only, so
//! [`super::MedibusCodec`] splits the line on bit 7 and hands the realtime bytes here. Bytes:
//!
//! | byte | meaning |
//! |---|---|
//! | `0xD0`–`0xDF` | sync byte: starts a frame; low nibble = which of streams 1–4 follow |
//! | `0xC0`–`0xCF` | sync command, followed by one argument byte (`0xC0`–`0xCF`, low nibble used) |
//! | `0x80`–`0xBF` | half of a sample: two such bytes carry a 12-bit bin |
//! | `0xE0`–`0xFF` | nothing known: the frame is bad |
//!
//! Sync commands: `C1`/`C2`/`C3` enable streams 1–4/5–8/9–12 (host → device); `C4`/`C5` say
//! streams 5–8/9–12 are transmitted in this frame; `C6` start of inspiration (argument bit 0 =
//! 0) or expiration (bit 0 = 1); `CF` corrupt data; `C0` end of a command sequence. Stream
//! numbers are positions in the host's "configure realtime transmission" (`T`) command.
//!
//! A frame is a sync byte, its sync commands, then one sample per transmitted stream in stream
//! order. It is complete when the next sync byte arrives (or at [`RealtimeDecoder::finish`]);
//! a frame that announces no stream ends at its `C0` (end of sequence), so a host's enable
//! sequence takes effect at once (UNCONFIRMED: no source says when a device acts on it).
//! Sources: OpenICE `RTMedibus.java` (mdpnp/mdpnp) and VSCaptureDrgVent `Class1.cs`; what they
//! do not settle is marked UNCONFIRMED below and is a setting where a setting helps.
//!
//! Guarantees:
//! - No I/O, no clock, no panic on any byte sequence; memory bounded by
//!   [`MAX_PENDING_FRAMES`] frames (older undrained frames are dropped and counted).
//! - A frame that is not exactly "sync, commands, one sample per transmitted stream" carries a
//!   [`RealtimeFault`] and no samples: the consumer turns it into a gap, never into a value.
//! - The slow protocol never sees these bytes; a bad realtime frame cannot reach it.

/// First sync byte (`0xD0`–`0xDF`).
pub const SYNC_BYTE: u8 = 0xD0;
/// End of a sync command sequence.
pub const SC_END_OF_SEQUENCE: u8 = 0xC0;
/// Enable data streams 1–4 (argument: one bit per stream).
pub const SC_ENABLE_1_4: u8 = 0xC1;
/// Enable data streams 5–8.
pub const SC_ENABLE_5_8: u8 = 0xC2;
/// Enable data streams 9–12.
pub const SC_ENABLE_9_12: u8 = 0xC3;
/// Streams 5–8 transmitted in this frame.
pub const SC_TRANSMITTED_5_8: u8 = 0xC4;
/// Streams 9–12 transmitted in this frame.
pub const SC_TRANSMITTED_9_12: u8 = 0xC5;
/// Start of inspiration (argument bit 0 = 0) or expiration (bit 0 = 1).
pub const SC_BREATH_PHASE: u8 = 0xC6;
/// The device marks the data as corrupt.
pub const SC_CORRUPT: u8 = 0xCF;
/// Highest stream number.
pub const MAX_STREAMS: usize = 12;
/// Frames kept for [`RealtimeDecoder::take_frames`] before the oldest are dropped.
pub const MAX_PENDING_FRAMES: usize = 4096;

/// How the two bytes of a sample carry the 12-bit bin.
///
/// OpenICE (`RTMedibus.receiveData`) and VSCaptureDrgVent both read the first byte as the low
/// six bits; one fork of OpenICE tests the opposite. UNCONFIRMED against the Dräger
/// specification, so it is a setting; the default follows the two sources that agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SampleByteOrder {
    /// `bin = (b1 & 0x3F) | (b2 & 0x3F) << 6`.
    #[default]
    LowFirst,
    /// `bin = (b1 & 0x3F) << 6 | (b2 & 0x3F)`.
    HighFirst,
}

impl SampleByteOrder {
    /// The bin of one sample's two bytes.
    pub fn bin(self, first: u8, second: u8) -> u16 {
        let (a, b) = (u16::from(first & 0x3F), u16::from(second & 0x3F));
        match self {
            Self::LowFirst => a | (b << 6),
            Self::HighFirst => (a << 6) | b,
        }
    }

    /// The two bytes of `bin` (only its low 12 bits are sent).
    pub fn bytes(self, bin: u16) -> [u8; 2] {
        let (lo, hi) = (0x80 | (bin & 0x3F) as u8, 0x80 | ((bin >> 6) & 0x3F) as u8);
        match self {
            Self::LowFirst => [lo, hi],
            Self::HighFirst => [hi, lo],
        }
    }
}

/// Breath phase a `C6` sync command announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreathPhase {
    Inspiration,
    Expiration,
}

/// Why a realtime frame carries no samples.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RealtimeFault {
    #[error("the device marked the frame corrupt (sync command CF)")]
    DeviceCorrupt,
    #[error("{found} samples where the sync byte and commands announce {expected}")]
    SampleCount { expected: usize, found: usize },
    #[error("byte 0x{byte:02X} at byte {at} is not a realtime byte (sync, command or sample)")]
    UnknownByte { byte: u8, at: u64 },
    #[error("sync command 0x{command:02X} at byte {at} has no argument (next byte 0x{next:02X})")]
    MissingArgument { command: u8, at: u64, next: u8 },
    #[error("half a sample at byte {at} (next byte 0x{next:02X})")]
    HalfSample { at: u64, next: u8 },
    #[error(
        "sync command 0x{command:02X} at byte {at} names transmitted streams after samples began"
    )]
    LateStreams { command: u8, at: u64 },
    #[error("the stream ended inside the frame")]
    Truncated,
}

/// One realtime frame: a sync byte and what followed it up to the next sync byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealtimeFrame {
    /// Stream offset of the sync byte (slow and realtime bytes both count).
    pub offset: u64,
    /// Bit `i` set: stream `i + 1` is transmitted in this frame.
    pub streams: u16,
    /// One bin per transmitted stream, ascending stream order; empty when `fault` is set.
    pub bins: Vec<u16>,
    pub fault: Option<RealtimeFault>,
    pub breath: Option<BreathPhase>,
    /// Arguments (low nibble) of `C1`, `C2`, `C3`: the streams 1–4, 5–8, 9–12 a host enables.
    pub enable: [Option<u8>; 3],
}

impl RealtimeFrame {
    fn new(offset: u64, sync: u8) -> Self {
        Self {
            offset,
            streams: u16::from(sync & 0x0F),
            bins: Vec::new(),
            fault: None,
            breath: None,
            enable: [None; 3],
        }
    }

    /// The bins with their stream numbers (1-based), when the frame is good.
    pub fn samples(&self) -> impl Iterator<Item = (u8, u16)> + '_ {
        stream_numbers(self.streams).zip(self.bins.iter().copied())
    }

    /// The streams enabled by `C1`–`C3` commands in this frame, as (mask of the groups the
    /// frame names, enabled bits): a host's enable sequence names every group.
    pub fn enabled_streams(&self) -> Option<(u16, u16)> {
        let mut named = 0u16;
        let mut bits = 0u16;
        for (group, arg) in self.enable.iter().enumerate() {
            if let Some(a) = arg {
                named |= 0x0F << (4 * group);
                bits |= u16::from(*a & 0x0F) << (4 * group);
            }
        }
        (named != 0).then_some((named, bits))
    }

    fn fail(&mut self, fault: RealtimeFault) {
        if self.fault.is_none() {
            self.fault = Some(fault);
        }
    }
}

/// Stream numbers (1-based) of the bits set in `mask`, ascending.
pub fn stream_numbers(mask: u16) -> impl Iterator<Item = u8> {
    (0..MAX_STREAMS as u8)
        .filter(move |i| mask & (1u16 << *i) != 0)
        .map(|i| i + 1)
}

/// Counters of the realtime decoder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RealtimeStats {
    pub frames: u64,
    pub bad_frames: u64,
    /// Realtime bytes before the first sync byte (nothing to attribute them to).
    pub orphan_bytes: u64,
    /// Sync commands `C7`–`CE` (no known meaning; ignored).
    pub unknown_commands: u64,
    /// Frames dropped because the consumer did not take them.
    pub dropped_frames: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    /// A sync command at `at` waiting for its argument.
    Command {
        command: u8,
        at: u64,
    },
    /// The first byte of a sample at `at`.
    Half {
        byte: u8,
        at: u64,
    },
}

/// Decoder of the realtime bytes of a MEDIBUS line into [`RealtimeFrame`]s (see module docs).
#[derive(Debug)]
pub struct RealtimeDecoder {
    order: SampleByteOrder,
    frame: Option<RealtimeFrame>,
    pending: Pending,
    out: std::collections::VecDeque<RealtimeFrame>,
    stats: RealtimeStats,
}

impl RealtimeDecoder {
    pub fn new(order: SampleByteOrder) -> Self {
        Self {
            order,
            frame: None,
            pending: Pending::None,
            out: std::collections::VecDeque::new(),
            stats: RealtimeStats::default(),
        }
    }

    pub fn stats(&self) -> RealtimeStats {
        self.stats
    }

    /// Frames completed so far, oldest first.
    pub fn take_frames(&mut self) -> Vec<RealtimeFrame> {
        self.out.drain(..).collect()
    }

    /// Feeds one realtime byte (bit 7 set) found at stream offset `at`.
    pub fn push(&mut self, b: u8, at: u64) {
        match self.pending {
            Pending::Command {
                command,
                at: cmd_at,
            } => {
                self.pending = Pending::None;
                if (0xC0..=0xCF).contains(&b) {
                    self.command(command, b & 0x0F, cmd_at);
                    return;
                }
                // UNCONFIRMED: both sources only send arguments 0xC0-0xCF; anything else is
                // taken as the next byte, not swallowed (a sync byte here starts a frame).
                self.fail(RealtimeFault::MissingArgument {
                    command,
                    at: cmd_at,
                    next: b,
                });
            }
            Pending::Half { byte, at: half_at } => {
                self.pending = Pending::None;
                if (0x80..=0xBF).contains(&b) {
                    let bin = self.order.bin(byte, b);
                    if let Some(f) = self.frame.as_mut() {
                        f.bins.push(bin);
                    }
                    return;
                }
                self.fail(RealtimeFault::HalfSample {
                    at: half_at,
                    next: b,
                });
            }
            Pending::None => {}
        }
        match b {
            0xD0..=0xDF => {
                self.complete();
                self.frame = Some(RealtimeFrame::new(at, b));
            }
            _ if self.frame.is_none() => self.stats.orphan_bytes += 1,
            0xC0..=0xCF => self.pending = Pending::Command { command: b, at },
            0x80..=0xBF => self.pending = Pending::Half { byte: b, at },
            _ => self.fail(RealtimeFault::UnknownByte { byte: b, at }),
        }
    }

    /// The stream ended (or the port closed): the frame in progress is completed, as truncated
    /// if it still waited for a byte.
    pub fn finish(&mut self) {
        if self.pending != Pending::None {
            self.pending = Pending::None;
            self.fail(RealtimeFault::Truncated);
        }
        self.complete();
    }

    fn fail(&mut self, fault: RealtimeFault) {
        if let Some(f) = self.frame.as_mut() {
            f.fail(fault);
        }
    }

    fn command(&mut self, command: u8, arg: u8, at: u64) {
        let Some(f) = self.frame.as_mut() else {
            return;
        };
        match command {
            SC_ENABLE_1_4 | SC_ENABLE_5_8 | SC_ENABLE_9_12 => {
                f.enable[usize::from(command - SC_ENABLE_1_4)] = Some(arg);
            }
            SC_TRANSMITTED_5_8 | SC_TRANSMITTED_9_12 => {
                if !f.bins.is_empty() {
                    f.fail(RealtimeFault::LateStreams { command, at });
                }
                let shift = if command == SC_TRANSMITTED_5_8 { 4 } else { 8 };
                f.streams |= u16::from(arg) << shift;
            }
            SC_BREATH_PHASE => {
                f.breath = Some(if arg & 1 == 0 {
                    BreathPhase::Inspiration
                } else {
                    BreathPhase::Expiration
                });
            }
            SC_CORRUPT => f.fail(RealtimeFault::DeviceCorrupt),
            SC_END_OF_SEQUENCE => {
                // A frame that announces no stream is a command sequence (a host's enable):
                // it ends here rather than at the next sync byte, which may be far off.
                if f.streams == 0 {
                    self.complete();
                }
            }
            _ => self.stats.unknown_commands += 1,
        }
    }

    fn complete(&mut self) {
        let Some(mut f) = self.frame.take() else {
            return;
        };
        let expected = f.streams.count_ones() as usize;
        if f.fault.is_none() && f.bins.len() != expected {
            f.fault = Some(RealtimeFault::SampleCount {
                expected,
                found: f.bins.len(),
            });
        }
        if f.fault.is_some() {
            f.bins.clear();
            self.stats.bad_frames += 1;
        }
        self.stats.frames += 1;
        if self.out.len() >= MAX_PENDING_FRAMES {
            self.out.pop_front();
            self.stats.dropped_frames += 1;
        }
        self.out.push_back(f);
    }
}

/// The bytes of one frame: sync byte, `C4`/`C5` for streams above 4, `C6` for a breath phase,
/// then the bins (low 12 bits) in stream order. `bins` must hold one bin per set bit of
/// `streams` (extra bins are not sent; missing ones make a frame the decoder calls bad).
pub fn encode_frame(
    streams: u16,
    bins: &[u16],
    breath: Option<BreathPhase>,
    order: SampleByteOrder,
) -> Vec<u8> {
    let n = (streams & 0x0FFF).count_ones() as usize;
    let mut out = Vec::with_capacity(7 + 2 * n);
    out.push(SYNC_BYTE | (streams & 0x0F) as u8);
    if streams & 0x00F0 != 0 {
        out.extend([SC_TRANSMITTED_5_8, 0xC0 | ((streams >> 4) & 0x0F) as u8]);
    }
    if streams & 0x0F00 != 0 {
        out.extend([SC_TRANSMITTED_9_12, 0xC0 | ((streams >> 8) & 0x0F) as u8]);
    }
    if let Some(phase) = breath {
        let arg = match phase {
            BreathPhase::Inspiration => 0xC0,
            BreathPhase::Expiration => 0xC1,
        };
        out.extend([SC_BREATH_PHASE, arg]);
    }
    for &bin in bins.iter().take(n) {
        out.extend(order.bytes(bin));
    }
    out
}

/// A frame the device marks corrupt: sync byte, `CF`, no samples.
pub fn encode_corrupt_frame(streams: u16) -> Vec<u8> {
    vec![
        SYNC_BYTE | (streams & 0x0F) as u8,
        SC_CORRUPT,
        SC_END_OF_SEQUENCE,
    ]
}

/// What a host sends to enable exactly the streams of `mask` (bit `i` = stream `i + 1`) and
/// disable the others, in OpenICE's order: `D0 C3 a C2 a C1 a C0 C0`. VSCaptureDrgVent sends
/// one group at a time (`D0 C1 a C0 C0`); the decoder reads both.
pub fn encode_enable(mask: u16) -> Vec<u8> {
    let group = |shift: u16| 0xC0 | ((mask >> shift) & 0x0F) as u8;
    vec![
        SYNC_BYTE,
        SC_ENABLE_9_12,
        group(8),
        SC_ENABLE_5_8,
        group(4),
        SC_ENABLE_1_4,
        group(0),
        SC_END_OF_SEQUENCE,
        SC_END_OF_SEQUENCE,
    ]
}
