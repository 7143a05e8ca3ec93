//! A lossless codec for runs of sampled integers (waveform segments), with gaps.
//!
//! Owns the byte format of a stored waveform segment's samples (`WaveformSegment.packed_samples`
//! while the segment sits in the store; `db/waveforms.rs` packs and unpacks, and says which
//! settings the writer uses and why).
//!
//! Format (all integers LEB128 varints unless said otherwise):
//!
//! ```text
//! byte 0     method: low nibble = compressor (0 none, 1 zstd), high nibble = delta order (1, 2)
//! then, zstd-compressed when the compressor says so:
//!   n        samples in the run, gaps included (at most MAX_SAMPLES)
//!   g        gap runs, then g pairs (present samples since the previous gap run, gap length)
//!   values   the present samples: zigzag of x0, then zigzag of the first (order 1) or second
//!            (order 2) difference; a gap does not reset the predictor
//! ```
//!
//! Guarantees:
//! - `decode(encode(x)) == x` for every `&[Option<i32>]` (property-tested), gaps included: a
//!   gap is never turned into a value, and a value is never lost.
//! - Decoding is bounded: more than [`MAX_SAMPLES`] samples, or a zstd frame that would
//!   expand beyond [`MAX_DECODED_BYTES`], is an error, never an allocation of what the input
//!   claims; any input gives a value or an error, never a panic.
//!
//! Why this shape (figures: `cargo bench -p icu-store --bench waveform_codec`, README
//! "Waveform compression"): sampled curves are smooth, so differences are small; zigzag makes
//! them non-negative, varints store a small difference in one byte, and zstd then removes what
//! repeats (the beat-to-beat shape), which lz4 barely does.

/// Most samples one encoded run may hold (about 35 min at 500 Hz).
pub const MAX_SAMPLES: usize = 1 << 20;
/// Largest uncompressed payload a decoder accepts.
pub const MAX_DECODED_BYTES: usize = 12 * MAX_SAMPLES;

/// The general-purpose compressor behind the varints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    None,
    Zstd { level: i32 },
}

/// Which difference is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaOrder {
    First,
    Second,
}

/// Encoder settings; [`WaveformCodec::default`] is the measured choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaveformCodec {
    pub order: DeltaOrder,
    pub compressor: Compressor,
}

impl Default for WaveformCodec {
    /// Second-order differences and zstd level 1: on every curve of the benchmark at least as
    /// small as levels 3 and 9 and the fastest to encode (README "Waveform compression").
    fn default() -> Self {
        Self {
            order: DeltaOrder::Second,
            compressor: Compressor::Zstd { level: 1 },
        }
    }
}

/// Why encoded samples could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaveformCodecError {
    #[error("encoded waveform is empty")]
    Empty,
    #[error("unknown waveform encoding method 0x{0:02X}")]
    UnknownMethod(u8),
    #[error("waveform zstd frame does not decompress within {limit} bytes: {reason}")]
    Decompress { limit: usize, reason: String },
    #[error("encoded waveform ends inside a number at byte {at}")]
    Truncated { at: usize },
    #[error("encoded waveform claims {n} samples; at most {limit} are accepted")]
    TooMany { n: u64, limit: usize },
    #[error("encoded waveform's gaps do not fit its {n} samples")]
    BadGaps { n: usize },
    #[error("encoded waveform has a sample outside 32 bits at sample {index}")]
    OutOfRange { index: usize },
    #[error("encoded waveform has {extra} bytes after its last sample")]
    Trailing { extra: usize },
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn get(&mut self) -> Result<u64, WaveformCodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.data.get(self.at) else {
                return Err(WaveformCodecError::Truncated { at: self.at });
            };
            self.at += 1;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WaveformCodecError::Truncated { at: self.at })
    }
}

impl WaveformCodec {
    /// The varint payload before compression (also what the benchmark hands other
    /// compressors).
    pub fn payload(order: DeltaOrder, samples: &[Option<i32>]) -> Vec<u8> {
        let mut out = Vec::with_capacity(samples.len() + 16);
        put(&mut out, samples.len() as u64);
        let mut gaps = Vec::new();
        let mut present_since = 0u64;
        let mut i = 0;
        while i < samples.len() {
            if samples[i].is_none() {
                let start = i;
                while i < samples.len() && samples[i].is_none() {
                    i += 1;
                }
                gaps.push((present_since, (i - start) as u64));
                present_since = 0;
            } else {
                present_since += 1;
                i += 1;
            }
        }
        put(&mut out, gaps.len() as u64);
        for (skip, len) in gaps {
            put(&mut out, skip);
            put(&mut out, len);
        }
        let (mut prev, mut prev_delta) = (0i64, 0i64);
        for (k, x) in samples.iter().flatten().map(|&x| i64::from(x)).enumerate() {
            let delta = x - prev;
            let stored = match (order, k) {
                (_, 0) | (DeltaOrder::First, _) => delta,
                (DeltaOrder::Second, _) => delta - prev_delta,
            };
            put(&mut out, zigzag(stored));
            prev = x;
            prev_delta = if k == 0 { 0 } else { delta };
        }
        out
    }

    /// Encodes `samples` (`None` = a gap).
    pub fn encode(&self, samples: &[Option<i32>]) -> Vec<u8> {
        let order_bits = match self.order {
            DeltaOrder::First => 0x10,
            DeltaOrder::Second => 0x20,
        };
        let payload = Self::payload(self.order, samples);
        match self.compressor {
            Compressor::None => {
                let mut out = Vec::with_capacity(payload.len() + 1);
                out.push(order_bits);
                out.extend(payload);
                out
            }
            Compressor::Zstd { level } => {
                let mut out = vec![order_bits | 1];
                // Compressing an in-memory buffer cannot fail but for allocation.
                match zstd::bulk::compress(&payload, level) {
                    Ok(z) => out.extend(z),
                    Err(_) => {
                        out[0] = order_bits;
                        out.extend(payload);
                    }
                }
                out
            }
        }
    }

    /// Decodes what [`Self::encode`] wrote (any settings).
    pub fn decode(bytes: &[u8]) -> Result<Vec<Option<i32>>, WaveformCodecError> {
        let (&method, rest) = bytes.split_first().ok_or(WaveformCodecError::Empty)?;
        let order = match method >> 4 {
            1 => DeltaOrder::First,
            2 => DeltaOrder::Second,
            _ => return Err(WaveformCodecError::UnknownMethod(method)),
        };
        let owned;
        let payload = match method & 0x0F {
            0 => rest,
            1 => {
                owned = zstd::bulk::decompress(rest, MAX_DECODED_BYTES).map_err(|e| {
                    WaveformCodecError::Decompress {
                        limit: MAX_DECODED_BYTES,
                        reason: e.to_string(),
                    }
                })?;
                &owned[..]
            }
            _ => return Err(WaveformCodecError::UnknownMethod(method)),
        };
        let mut r = Reader {
            data: payload,
            at: 0,
        };
        let n = r.get()?;
        if n > MAX_SAMPLES as u64 {
            return Err(WaveformCodecError::TooMany {
                n,
                limit: MAX_SAMPLES,
            });
        }
        let n = n as usize;
        let g = r.get()?;
        if g > n as u64 {
            return Err(WaveformCodecError::BadGaps { n });
        }
        let mut is_gap = vec![false; n];
        let mut pos = 0usize;
        for _ in 0..g {
            let skip = r.get()?;
            let len = r.get()?;
            let start = (pos as u64).saturating_add(skip);
            let end = start.saturating_add(len);
            if len == 0 || end > n as u64 {
                return Err(WaveformCodecError::BadGaps { n });
            }
            is_gap[start as usize..end as usize].fill(true);
            pos = end as usize;
        }
        let mut out = Vec::with_capacity(n);
        let (mut prev, mut prev_delta, mut k) = (0i64, 0i64, 0usize);
        for (index, gap) in is_gap.into_iter().enumerate() {
            if gap {
                out.push(None);
                continue;
            }
            let stored = unzigzag(r.get()?);
            let delta = match (order, k) {
                (_, 0) | (DeltaOrder::First, _) => stored,
                (DeltaOrder::Second, _) => prev_delta
                    .checked_add(stored)
                    .ok_or(WaveformCodecError::OutOfRange { index })?,
            };
            let x = prev
                .checked_add(delta)
                .ok_or(WaveformCodecError::OutOfRange { index })?;
            let x32 = i32::try_from(x).map_err(|_| WaveformCodecError::OutOfRange { index })?;
            out.push(Some(x32));
            prev_delta = if k == 0 { 0 } else { delta };
            prev = x;
            k += 1;
        }
        if r.at != payload.len() {
            return Err(WaveformCodecError::Trailing {
                extra: payload.len() - r.at,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ALL: [WaveformCodec; 4] = [
        WaveformCodec {
            order: DeltaOrder::First,
            compressor: Compressor::None,
        },
        WaveformCodec {
            order: DeltaOrder::Second,
            compressor: Compressor::None,
        },
        WaveformCodec {
            order: DeltaOrder::First,
            compressor: Compressor::Zstd { level: 3 },
        },
        WaveformCodec {
            order: DeltaOrder::Second,
            compressor: Compressor::Zstd { level: 3 },
        },
    ];

    #[test]
    fn gaps_and_extremes_round_trip() {
        let samples = vec![
            None,
            Some(i32::MIN),
            Some(i32::MAX),
            None,
            None,
            Some(0),
            Some(-1),
            Some(i32::MIN),
            None,
        ];
        for codec in ALL {
            assert_eq!(
                WaveformCodec::decode(&codec.encode(&samples)),
                Ok(samples.clone())
            );
            assert_eq!(WaveformCodec::decode(&codec.encode(&[])), Ok(Vec::new()));
        }
    }

    #[test]
    fn a_smooth_curve_costs_about_a_byte_a_sample_before_zstd() {
        let curve: Vec<Option<i32>> = (0..5000)
            .map(|i| Some((2000.0 * (f64::from(i) / 50.0).sin()) as i32))
            .collect();
        let plain = WaveformCodec {
            order: DeltaOrder::Second,
            compressor: Compressor::None,
        }
        .encode(&curve);
        assert!(plain.len() < 5000 + 16, "{}", plain.len());
        let z = WaveformCodec::default().encode(&curve);
        assert!(
            z.len() * 3 < 5000 * 2,
            "{} bytes: not 3:1 against 16-bit raw",
            z.len()
        );
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic_or_a_huge_allocation() {
        assert_eq!(WaveformCodec::decode(&[]), Err(WaveformCodecError::Empty));
        assert!(matches!(
            WaveformCodec::decode(&[0x33]),
            Err(WaveformCodecError::UnknownMethod(0x33))
        ));
        // Claims 2^40 samples.
        let mut huge = vec![0x20];
        put(&mut huge, 1 << 40);
        assert!(matches!(
            WaveformCodec::decode(&huge),
            Err(WaveformCodecError::TooMany { .. })
        ));
        // A gap past the end.
        let mut bad = vec![0x20];
        for v in [3, 1, 2, 5] {
            put(&mut bad, v);
        }
        assert_eq!(
            WaveformCodec::decode(&bad),
            Err(WaveformCodecError::BadGaps { n: 3 })
        );
        // Cut short, and a byte too many.
        let ok = WaveformCodec::default().encode(&[Some(1), Some(2)]);
        let plain = WaveformCodec {
            order: DeltaOrder::First,
            compressor: Compressor::None,
        }
        .encode(&[Some(1), Some(2)]);
        assert!(WaveformCodec::decode(&plain[..plain.len() - 1]).is_err());
        assert!(WaveformCodec::decode(&[plain.as_slice(), &[0]].concat()).is_err());
        assert!(WaveformCodec::decode(&ok[..ok.len() - 1]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(
            samples in proptest::collection::vec(proptest::option::weighted(0.9, any::<i32>()), 0..600),
            pick in 0usize..4,
        ) {
            let codec = ALL[pick];
            prop_assert_eq!(WaveformCodec::decode(&codec.encode(&samples)), Ok(samples));
        }

        #[test]
        fn round_trip_of_curves(
            start in -4096i32..4096,
            steps in proptest::collection::vec(proptest::option::weighted(0.95, -40i32..40), 0..2000),
        ) {
            let mut x = start;
            let samples: Vec<Option<i32>> = steps
                .iter()
                .map(|s| s.map(|d| { x += d; x }))
                .collect();
            for codec in ALL {
                prop_assert_eq!(WaveformCodec::decode(&codec.encode(&samples)), Ok(samples.clone()));
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = WaveformCodec::decode(&bytes);
        }
    }
}
