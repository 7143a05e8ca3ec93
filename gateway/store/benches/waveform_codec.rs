//! Bytes per sample of the waveform codec (`icu_store::waveform_codec`) and its alternatives,
//! on synthetic curves shaped like what the gateway will store: a 3-lead-style ECG at 500 Hz,
//! an arterial pressure at 125 Hz and a ventilator's airway pressure at 125 Hz, each 10 min,
//! cut into 10 s segments (one stored segment each), with a few gaps.
//!
//! `cargo bench -p icu-store --bench waveform_codec` prints, per curve and method, bytes per
//! sample, the ratio against 16-bit raw samples, and encode/decode time per sample. The curves
//! are deterministic (fixed seed), so the sizes are the same on every machine.

use std::time::Instant;

use icu_store::waveform_codec::{Compressor, DeltaOrder, WaveformCodec};

/// A small deterministic generator (xorshift), so no dependency is needed for noise.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
}

fn gauss(t: f64, centre: f64, width: f64) -> f64 {
    (-((t - centre) / width).powi(2) / 2.0).exp()
}

/// ECG lead II at 500 Hz in ADC units of 5 µV (200 per mV): P, QRS, T waves at 72/min with
/// beat-to-beat variation, baseline wander and ±2 units of noise.
fn ecg(seconds: usize) -> Vec<Option<i32>> {
    let mut noise = Noise(0x1234_5678);
    let fs = 500.0;
    let mut beat_start = 0.0;
    let mut rr = 60.0 / 72.0;
    (0..seconds * 500)
        .map(|i| {
            let t = i as f64 / fs;
            if t - beat_start >= rr {
                beat_start += rr;
                rr = 60.0 / 72.0 * (1.0 + 0.04 * noise.next());
            }
            let u = t - beat_start;
            let mv = 0.15 * gauss(u, 0.10, 0.025) - 0.10 * gauss(u, 0.19, 0.008)
                + 1.2 * gauss(u, 0.21, 0.010)
                - 0.25 * gauss(u, 0.23, 0.010)
                + 0.30 * gauss(u, 0.45, 0.045)
                + 0.08 * (2.0 * std::f64::consts::PI * 0.25 * t).sin();
            Some((mv * 200.0 + 4.0 * noise.next()).round() as i32)
        })
        .collect()
}

/// Arterial pressure at 125 Hz in 0.1 mmHg: systolic upstroke, dicrotic notch, diastolic
/// run-off between 80 and 120 mmHg, ±0.3 mmHg noise.
fn arterial(seconds: usize) -> Vec<Option<i32>> {
    let mut noise = Noise(0x9E37_79B9);
    let rr = 60.0 / 72.0;
    (0..seconds * 125)
        .map(|i| {
            let t = i as f64 / 125.0;
            let u = t.rem_euclid(rr);
            let runoff = if u > 0.3 {
                10.0 * (-(u / 0.5)).exp()
            } else {
                0.0
            };
            let mmhg = 80.0 + 40.0 * gauss(u, 0.12, 0.05) + 8.0 * gauss(u, 0.32, 0.04) + runoff;
            Some(((mmhg + 0.6 * noise.next()) * 10.0).round() as i32)
        })
        .collect()
}

/// Airway pressure at 125 Hz as 12-bit bins (-20..80 mbar): pressure-controlled breaths at
/// 14/min, PEEP 5, 17 above PEEP, as the simulated ventilator sends them.
fn airway(seconds: usize) -> Vec<Option<i32>> {
    let period = 60.0 / 14.0;
    let ti = period / 3.0;
    (0..seconds * 125)
        .map(|i| {
            let t = (i as f64 / 125.0).rem_euclid(period);
            let p = if t < ti {
                5.0 + 17.0 * (1.0 - (-t / 0.05).exp())
            } else {
                5.0 + 17.0 * (-(t - ti) / 0.05).exp()
            };
            Some(((p + 20.0) / 100.0 * 4095.0).round() as i32)
        })
        .collect()
}

/// Cuts `samples` into segments of `len`, and drops 3 samples every 997 (gaps).
fn segments(mut samples: Vec<Option<i32>>, len: usize) -> Vec<Vec<Option<i32>>> {
    for i in (500..samples.len()).step_by(997) {
        for s in samples.iter_mut().skip(i).take(3) {
            *s = None;
        }
    }
    samples.chunks(len).map(<[_]>::to_vec).collect()
}

enum Method {
    Codec(WaveformCodec),
    Lz4(DeltaOrder),
}

fn main() {
    let curves = [
        ("ECG 500 Hz", segments(ecg(600), 5000)),
        ("arterial pressure 125 Hz", segments(arterial(600), 1250)),
        ("airway pressure 125 Hz", segments(airway(600), 1250)),
    ];
    let methods = [
        (
            "delta1 + varint",
            Method::Codec(WaveformCodec {
                order: DeltaOrder::First,
                compressor: Compressor::None,
            }),
        ),
        (
            "delta2 + varint",
            Method::Codec(WaveformCodec {
                order: DeltaOrder::Second,
                compressor: Compressor::None,
            }),
        ),
        ("delta1 + varint + lz4_flex", Method::Lz4(DeltaOrder::First)),
        (
            "delta2 + varint + lz4_flex",
            Method::Lz4(DeltaOrder::Second),
        ),
        (
            "delta1 + varint + zstd 3",
            Method::Codec(WaveformCodec {
                order: DeltaOrder::First,
                compressor: Compressor::Zstd { level: 3 },
            }),
        ),
        (
            "delta2 + varint + zstd 1 (default)",
            Method::Codec(WaveformCodec::default()),
        ),
        (
            "delta2 + varint + zstd 3",
            Method::Codec(WaveformCodec {
                order: DeltaOrder::Second,
                compressor: Compressor::Zstd { level: 3 },
            }),
        ),
        (
            "delta2 + varint + zstd 9",
            Method::Codec(WaveformCodec {
                order: DeltaOrder::Second,
                compressor: Compressor::Zstd { level: 9 },
            }),
        ),
    ];
    println!(
        "{:<26} {:<36} {:>8} {:>8} {:>10} {:>10}",
        "curve (10 s segments)", "method", "B/sample", "vs 16bit", "enc ns/s", "dec ns/s"
    );
    for (name, segs) in &curves {
        let n: usize = segs.iter().map(Vec::len).sum();
        for (label, method) in &methods {
            let start = Instant::now();
            let encoded: Vec<Vec<u8>> = segs
                .iter()
                .map(|s| match method {
                    Method::Codec(c) => c.encode(s),
                    Method::Lz4(order) => {
                        lz4_flex::block::compress_prepend_size(&WaveformCodec::payload(*order, s))
                    }
                })
                .collect();
            let enc = start.elapsed();
            let start = Instant::now();
            for (e, s) in encoded.iter().zip(segs) {
                match method {
                    Method::Codec(_) => {
                        assert_eq!(&WaveformCodec::decode(e).expect("decodes"), s);
                    }
                    Method::Lz4(_) => {
                        let payload = lz4_flex::block::decompress_size_prepended(e).expect("lz4");
                        assert!(!payload.is_empty());
                    }
                }
            }
            let dec = start.elapsed();
            let bytes: usize = encoded.iter().map(Vec::len).sum();
            let per = bytes as f64 / n as f64;
            println!(
                "{:<26} {:<36} {:>8.3} {:>7.2}:1 {:>10.1} {:>10.1}",
                name,
                label,
                per,
                2.0 / per,
                enc.as_nanos() as f64 / n as f64,
                dec.as_nanos() as f64 / n as f64,
            );
        }
    }
}
