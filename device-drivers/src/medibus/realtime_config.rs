//! The slow-protocol side of MEDIBUS realtime data: the device's realtime configuration (answer
//! to "request realtime configuration", `S`) and the host's "configure realtime transmission"
//! (`T`) arguments.
//!
//! `S` answer, 23 characters per curve the device can send (OpenICE `RTMedibus
//! .receiveRealtimeConfig`, VSCaptureDrgVent `ReadRealtimeConfigResponse`):
//!
//! | chars | field |
//! |---|---|
//! | 2 | data code, ASCII hex (realtime codes, protocols.md §1.6) |
//! | 8 | sample interval in microseconds, decimal, space padded |
//! | 5 | value of bin 0 ("min"), decimal, may be signed |
//! | 5 | value of bin max-bin ("max"), decimal, may be signed |
//! | 3 | max-bin, ASCII hex |
//!
//! A bin becomes a value as `bin / maxbin * (max - min) + min`. Microseconds: protocols.md and
//! VSCaptureDrgVent (which divides by 1000 for milliseconds); one OpenICE fork reads
//! milliseconds. UNCONFIRMED against the Dräger text, see [`IntervalUnit`].
//!
//! `T` arguments: per wanted curve its code (2 hex) and a "multiplier" (2 hex). OpenICE and
//! VSCaptureDrgVent always send multiplier 1; what other values do (a longer interval?) is
//! UNCONFIRMED, so the session sends the configured value and never interprets it.

use super::frame::hex_pair;
use super::payload::{fixed_records, parse_code, parse_number, PayloadError};

/// Characters of one record of the realtime configuration.
pub const REALTIME_CONFIG_WIDTH: usize = 23;

/// The unit of the interval field of the realtime configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IntervalUnit {
    /// protocols.md §1.6 and VSCaptureDrgVent.
    #[default]
    Microseconds,
    /// One OpenICE fork.
    Milliseconds,
}

/// How bins map to values: `bin / maxbin * (max - min) + min`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RealtimeScale {
    pub min: f64,
    pub max: f64,
    /// 1..=4095 (a configuration record with 0 is refused).
    pub maxbin: u16,
}

impl RealtimeScale {
    /// The value of `bin` in the curve's unit.
    pub fn value(&self, bin: u16) -> f64 {
        f64::from(bin) / f64::from(self.maxbin) * (self.max - self.min) + self.min
    }

    /// Value per bin (FHIR SampledData `factor`; `min` is its `origin`).
    pub fn factor(&self) -> f64 {
        (self.max - self.min) / f64::from(self.maxbin)
    }
}

/// One curve the device offers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RealtimeConfig {
    /// Realtime data code (e.g. 0x00 airway pressure, 0x01 flow, 0x03 volume).
    pub code: u8,
    /// Time between two samples, microseconds.
    pub interval_us: u32,
    pub scale: RealtimeScale,
}

fn field(
    record: &[u8],
    at: usize,
    len: usize,
    offset: usize,
    what: &'static str,
) -> Result<f64, PayloadError> {
    let raw = &record[at..at + len];
    // OpenICE drops spaces anywhere ("-  80" is -80).
    let text: String = raw
        .iter()
        .filter(|&&c| c != b' ')
        .map(|&c| c as char)
        .collect();
    parse_number(&text).ok_or_else(|| PayloadError::BadField {
        offset: offset + at,
        what,
        found: String::from_utf8_lossy(raw).into_owned(),
    })
}

/// Parses the answer to `S`.
pub fn parse_realtime_config(
    data: &[u8],
    unit: IntervalUnit,
) -> Result<Vec<RealtimeConfig>, PayloadError> {
    let per_unit = match unit {
        IntervalUnit::Microseconds => 1.0,
        IntervalUnit::Milliseconds => 1000.0,
    };
    fixed_records(
        data,
        REALTIME_CONFIG_WIDTH,
        "realtime configuration",
        |offset, record| {
            let code = parse_code(&record[0..2], offset)?;
            let interval_us = field(record, 2, 8, offset, "sample interval")? * per_unit;
            let min = field(record, 10, 5, offset, "minimum")?;
            let max = field(record, 15, 5, offset, "maximum")?;
            let maxbin_text = &record[20..23];
            let maxbin = std::str::from_utf8(maxbin_text)
                .ok()
                .map(str::trim)
                .and_then(|t| u16::from_str_radix(t, 16).ok())
                .filter(|&m| (1..=0x0FFF).contains(&m))
                .ok_or_else(|| PayloadError::BadField {
                    offset: offset + 20,
                    what: "max-bin (3 hex digits, 001-FFF)",
                    found: String::from_utf8_lossy(maxbin_text).into_owned(),
                })?;
            if !(1.0..=f64::from(u32::MAX)).contains(&interval_us) || max == min {
                return Err(PayloadError::BadField {
                    offset,
                    what: "realtime configuration (interval >= 1 us, max != min)",
                    found: String::from_utf8_lossy(record).into_owned(),
                });
            }
            Ok(RealtimeConfig {
                code,
                interval_us: interval_us.round() as u32,
                scale: RealtimeScale { min, max, maxbin },
            })
        },
    )
}

fn number(x: f64, width: usize) -> String {
    let s = if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    };
    format!("{s:>width$}")
}

/// The answer to `S` a device sends (for the simulator). Values wider than their field are
/// cut from the left: keep min/max within 5 characters.
pub fn encode_realtime_config(configs: &[RealtimeConfig]) -> Vec<u8> {
    let mut out = Vec::with_capacity(configs.len() * REALTIME_CONFIG_WIDTH);
    for c in configs {
        let mut rec = Vec::with_capacity(REALTIME_CONFIG_WIDTH);
        rec.extend(hex_pair(c.code));
        for (text, width) in [
            (format!("{:>8}", c.interval_us), 8),
            (number(c.scale.min, 5), 5),
            (number(c.scale.max, 5), 5),
            (format!("{:03X}", c.scale.maxbin & 0x0FFF), 3),
        ] {
            let b = text.as_bytes();
            rec.extend_from_slice(&b[b.len().saturating_sub(width)..]);
        }
        out.extend(rec);
    }
    out
}

/// One curve the host asks for with `T`, in stream order (the first is stream 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealtimeRequest {
    pub code: u8,
    /// Sent as is (UNCONFIRMED meaning; OpenICE and VSCaptureDrgVent send 1).
    pub multiplier: u8,
}

/// The arguments of `T` for `streams` (at most 12 are sent).
pub fn encode_configure_realtime(streams: &[RealtimeRequest]) -> Vec<u8> {
    streams
        .iter()
        .take(super::realtime::MAX_STREAMS)
        .flat_map(|s| hex_pair(s.code).into_iter().chain(hex_pair(s.multiplier)))
        .collect()
}

/// Parses the arguments of `T` (the simulated device's side).
pub fn parse_configure_realtime(data: &[u8]) -> Result<Vec<RealtimeRequest>, PayloadError> {
    fixed_records(data, 4, "realtime transmission request", |offset, chunk| {
        Ok(RealtimeRequest {
            code: parse_code(&chunk[0..2], offset)?,
            multiplier: parse_code(&chunk[2..4], offset + 2)?,
        })
    })
}
