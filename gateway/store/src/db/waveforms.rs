//! Waveform segments in the store (issue 19): how their samples are packed in a row and
//! unpacked for the outbox, and the per-device account of segments not kept for the budget.
//!
//! Owns: the packed form of a stored `WaveformSegment` (and of the segments of an
//! `AlarmSnippet`): `samples` packed by [`crate::waveform_codec`] into `packed_samples`,
//! `samples` left empty. Nothing outside the store ever sees a packed segment: the outbox
//! reader ([`unpack_payload`], called for every record of the waveform and alarm streams)
//! turns it back into `samples`, bit-exact, `packed_samples` empty.
//!
//! Why the codec runs without its own zstd stage and the row's zstd does the general
//! compression. `cargo bench -p icu-store --bench waveform_store` stores 60 s of the simulated
//! 30-bed load (`icu_sim::waveform::WaveformMonitor`: per bed 3 ECG leads at 500 Hz, pleth and
//! ABP at 125 Hz, one PCD-01 message per channel group every 800 ms, decoded by the gateway's
//! decoder) through the real writer into a SQLite file. Bytes per sample present, against
//! 16-bit raw (2 B): the rows' payloads, and the database pages in use (what the disk budget
//! counts):
//!
//! | packing of the samples | ECG rows | ECG pages | pleth+ABP rows | all rows | all pages |
//! |---|---|---|---|---|---|
//! | delta 1 or 2 + varint, row zstd (**chosen**) | 0.655 (3.05:1) | 0.988 (2.03:1) | 2.126 | 0.867 | 1.171 (1.71:1) |
//! | delta 2 + varint, row zstd | 0.702 | 1.006 | 2.126 | 0.907 | 1.330 |
//! | delta 2 + varint + zstd 1, row zstd | 0.947 | 1.277 | 2.220 | 1.131 | 1.551 |
//! | delta 2 + varint + zstd 1, a row per segment | 1.126 | 1.516 | 3.016 | 1.398 | 1.884 |
//! | not packed (`sint32`), row zstd | 1.136 | 1.566 | 3.379 | 1.459 | 1.958 |
//!
//! - One zstd pass, over the run: a frame per segment pays its header, its literal tables and
//!   a fresh window for every segment; the run's frame sees the three ECG leads together and
//!   the ids, units and codes their records repeat. Compressing the codec's zstd output again
//!   adds bytes and CPU. So a message's segments share a row (a `StoredRecordRun`, like its
//!   readings) and the codec only does what zstd cannot: differences, zigzag, varints.
//! - A segment alone in its row (a message of one channel) is stored bare, without the row's
//!   zstd: its samples get the codec's zstd stage instead ([`codec_for`]).
//! - The difference order is chosen per segment ([`order_for`]): the simulated ECG's white
//!   noise makes first differences smaller (0.655 against 0.702 B), the pressures and the
//!   pleth are smoother and take second ones.
//! - Rows are kept within a page cell (`WAVE_ROW_BYTES` in `db.rs`, halving a message's
//!   segments until they fit): a longer row spills into an overflow page of its own, mostly
//!   empty (before: 1.04 B per ECG sample on pages for 0.70 in rows, unpacked 3.7 B).
//!
//! What is left: of the 0.655 B per ECG sample in the rows, 0.21 is the segments' metadata
//! (ids, units, scale, range, times: measured with the samples left out), so the samples
//! themselves take about 0.44 B (4.5:1); pleth and ABP messages carry 200 samples per 800 ms
//! for the same metadata (2.1 B per sample). On pages the b-tree adds about half again: the
//! 30 devices' rows are interleaved in one table clustered by device, so pages split and run
//! about two-thirds full. The 3:1 target on the simulated ECG is met by the rows
//! (3.05:1) but not by the pages in use (2.03:1); longer messages (a segment of several
//! seconds) would amortise the metadata.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use icu_protos::v1::{stored_record::Body, StoredRecord, WaveformSegment};
use icu_protos::Message as _;

use crate::waveform_codec::{Compressor, DeltaOrder, WaveformCodec};

/// How the writer packs the samples of the segments it stores ([`super::StoreDb::set_waveform_packing`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WaveformPacking {
    /// The measured choice: [`codec_for`] the segment's row.
    #[default]
    Auto,
    /// Always this codec (the benchmark's alternatives).
    Codec(WaveformCodec),
    /// Not packed: samples stay protobuf `sint32` (the benchmark's baseline).
    Unpacked,
}

impl WaveformPacking {
    /// Packs `seg`, stored in a row of `records_in_row` records.
    pub fn pack(&self, seg: &mut WaveformSegment, records_in_row: usize) {
        match self {
            WaveformPacking::Auto => {
                let codec = codec_for(&seg.samples, records_in_row);
                pack(seg, &codec);
            }
            WaveformPacking::Codec(codec) => pack(seg, codec),
            WaveformPacking::Unpacked => {}
        }
    }
}

/// The codec for `samples` stored in a row of `records_in_row` records: without zstd when the
/// row is compressed as a whole (more than one record), with it when the segment is alone; the
/// difference order that [`order_for`] expects to be smaller.
pub fn codec_for(samples: &[i32], records_in_row: usize) -> WaveformCodec {
    WaveformCodec {
        order: order_for(samples),
        compressor: if records_in_row > 1 {
            Compressor::None
        } else {
            Compressor::Zstd { level: 1 }
        },
    }
}

/// The difference order whose zigzag values need fewer bits in all (a cheap stand-in for
/// their entropy): first-order for a noisy curve (the simulated ECG leads: white noise of a
/// few units grows under a second difference), second-order for a smooth one (pressures,
/// pleth). The codec records the order per segment.
pub fn order_for(samples: &[i32]) -> DeltaOrder {
    let bits = |v: i64| u64::from(64 - ((v << 1) ^ (v >> 63)).leading_zeros());
    let (mut first, mut second) = (0u64, 0u64);
    for w in samples.windows(3) {
        let (a, b, c) = (i64::from(w[0]), i64::from(w[1]), i64::from(w[2]));
        first += bits(c - b);
        second += bits((c - b) - (b - a));
    }
    if first < second {
        DeltaOrder::First
    } else {
        DeltaOrder::Second
    }
}

/// Packs `seg.samples` into `seg.packed_samples` with `codec` (samples cleared). A segment
/// without samples is left as it is.
pub fn pack(seg: &mut WaveformSegment, codec: &WaveformCodec) {
    if seg.samples.is_empty() {
        return;
    }
    let present: Vec<Option<i32>> = seg.samples.iter().copied().map(Some).collect();
    seg.packed_samples = codec.encode(&present);
    seg.samples = Vec::new();
}

/// Turns a packed segment back into `samples` (`packed_samples` emptied); a segment that is
/// not packed is left as it is.
pub fn unpack(seg: &mut WaveformSegment) -> Result<(), String> {
    if seg.packed_samples.is_empty() {
        return Ok(());
    }
    if !seg.samples.is_empty() {
        return Err("a stored waveform segment has both samples and packed samples".into());
    }
    let decoded = WaveformCodec::decode(&seg.packed_samples).map_err(|e| e.to_string())?;
    let mut samples = Vec::with_capacity(decoded.len());
    for (i, s) in decoded.into_iter().enumerate() {
        // The store packs the present samples only (gaps are `seg.gaps`).
        samples.push(s.ok_or_else(|| format!("packed waveform samples hold a gap at {i}"))?);
    }
    seg.samples = samples;
    seg.packed_samples = Vec::new();
    Ok(())
}

/// Unpacks every segment of a record (a waveform segment or an alarm snippet); returns
/// whether it changed anything.
pub fn unpack_record(rec: &mut StoredRecord) -> Result<bool, String> {
    let segments: &mut [WaveformSegment] = match &mut rec.body {
        Some(Body::Waveform(w)) => std::slice::from_mut(w),
        Some(Body::AlarmSnippet(s)) => &mut s.segments,
        _ => return Ok(false),
    };
    let mut changed = false;
    for seg in segments {
        changed |= !seg.packed_samples.is_empty();
        unpack(seg)?;
    }
    Ok(changed)
}

/// An encoded `StoredRecord` as the outbox hands it on: with its waveform samples unpacked
/// (re-encoded only when something was packed; other records are returned as they are).
pub fn unpack_payload(payload: Vec<u8>) -> Result<Vec<u8>, String> {
    let mut rec = StoredRecord::decode(payload.as_slice())
        .map_err(|e| format!("stored record does not decode: {e}"))?;
    if unpack_record(&mut rec)? {
        Ok(rec.encode_to_vec())
    } else {
        Ok(payload)
    }
}

/// How often the segments not kept of one device are logged, at most.
const NOT_STORED_LOG_EVERY: Duration = Duration::from_secs(60);

/// Segments of stored messages not kept because the store was at its waveform limit, per
/// device since its last log line (logged at warn, at most once a minute per device).
#[derive(Debug, Default)]
pub struct NotStored {
    devices: HashMap<String, NotStoredDevice>,
}

#[derive(Debug, Default)]
struct NotStoredDevice {
    segments: u64,
    samples: u64,
    logged: Option<Instant>,
}

impl NotStored {
    /// Counts `segments` of `device` (with `samples` sample positions) not kept, and logs what
    /// the device lost since its last line when a minute has passed.
    pub fn count(&mut self, device: &str, segments: u64, samples: u64, limit_bytes: u64) {
        let d = self.devices.entry(device.to_owned()).or_default();
        d.segments += segments;
        d.samples += samples;
        let now = Instant::now();
        if d.logged
            .is_none_or(|t| now.duration_since(t) >= NOT_STORED_LOG_EVERY)
        {
            tracing::warn!(device = %device, segments = d.segments, samples = d.samples,
                waveform_limit_bytes = limit_bytes,
                "store at its waveform limit: waveform segments not kept (the message's readings are stored)");
            d.segments = 0;
            d.samples = 0;
            d.logged = Some(now);
        }
    }
}
