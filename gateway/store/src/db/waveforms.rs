//! Waveform segments in the store (issue 19): how their samples are packed in a row and
//! unpacked for the outbox, and the per-device account of segments not kept for the budget.
//!
//! Owns: the packed form of a stored `WaveformSegment` (and of the segments of an
//! `AlarmSnippet`): `samples` packed by [`crate::waveform_codec`] into `packed_samples`,
//! `samples` left empty. Nothing outside the store ever sees a packed segment: the outbox
//! reader ([`unpack_payload`], called for every record of the waveform and alarm streams)
//! turns it back into `samples`, bit-exact, `packed_samples` empty.
//!
//! Why the codec runs without its own zstd stage, and the row's zstd does the general
//! compression (`cargo bench -p icu-store --bench waveform_store`, the simulated 30-bed load
//! of `icu_sim::waveform::WaveformMonitor` through the real writer into a SQLite file, bytes
//! of database pages in use per sample; README "Waveform compression"):
//!
//! | packing of the samples | rows | ECG B/sample | pleth + ABP B/sample | all |
//! |---|---|---|---|---|
//! | delta2 + varint, then the row's zstd (chosen) | one per message | 0.47 (4.3:1) | 0.63 | 0.50 (4.0:1) |
//! | delta2 + varint + zstd 1, then the row's zstd | one per message | 0.55 | 0.79 | 0.59 |
//! | delta2 + varint + zstd 1 | one per segment | 0.61 | 0.97 | 0.67 |
//!
//! One zstd frame over a message's segments sees the three ECG leads together (lead III is
//! lead II minus lead I) and the ids, units and codes the segments repeat; a frame per segment
//! pays its header and a fresh window 5 times per message and compresses the samples of one
//! lead only. Compressing twice costs CPU and saves nothing. So a message's segments are one
//! row (a `StoredRecordRun`, like its readings), and the codec only removes what zstd cannot
//! see (the curve's smoothness: second differences, zigzag, varints). A segment that ends up
//! alone in its row (a message with one channel) is stored bare, without the row's zstd: its
//! samples are then packed with the codec's zstd stage instead ([`codec_for`]), so every
//! sample is compressed exactly once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use icu_protos::v1::{stored_record::Body, StoredRecord, WaveformSegment};
use icu_protos::Message as _;

use crate::waveform_codec::{Compressor, DeltaOrder, WaveformCodec};

/// The codec for a segment stored in a row of `records_in_row` records: without zstd when the
/// row is compressed as a whole (more than one record), with it when the segment is alone.
pub fn codec_for(records_in_row: usize) -> WaveformCodec {
    WaveformCodec {
        order: DeltaOrder::Second,
        compressor: if records_in_row > 1 {
            Compressor::None
        } else {
            Compressor::Zstd { level: 1 }
        },
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
