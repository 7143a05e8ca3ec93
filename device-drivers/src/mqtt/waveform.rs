//! Waveform segments in the protobuf MQTT payload (`MqttBatch.waveforms`, field 3): the
//! checks a wearable's curve passes before the gateway keeps it. Pure: no I/O, no clock.
//!
//! The rules are those of the PCD-01 waveform decoder (`crate::hl7::waveform`), with its
//! default bounds ([`WaveformConfig::default`]):
//! - a channel: `mdc_code` is not 0;
//! - a sample rate: `sample_rate_hz` and/or `sample_period_us`, finite, above 0 and at most
//!   `max_sample_rate_hz`; when both are given they agree (within 1 ppm); the missing one is
//!   filled in;
//! - a bounded length: `sample_count` (present plus missing positions) at least 1 and at most
//!   `max_samples`;
//! - a consistent count: `sample_count` equals `samples` plus the positions of `gaps` (0 means
//!   "count them for me"); every run (`gaps`, `below_range`, `above_range`) has a count above 0,
//!   lies inside the segment, and the runs of one list are ascending and do not overlap;
//! - finite `scale` (0 means 1: the written values are physical), `offset` and range, and
//!   `range_low <= range_high`; a known `status`; `packed_samples` empty (store-internal).
//!
//! Identity and time stamps are the gateway's, never the payload's: `device_id`, `bed`, `seq`,
//! `patient_id`, `clock_synced` and `device_time_untrusted` are cleared, `receive_time_us` is
//! the caller's; `first_sample_time_us` is the device's own time (optional). Gaps stay gaps.

use icu_protos::v1::{ObservationStatus, SampleRun, WaveformSegment};

use crate::hl7::WaveformConfig;
use crate::terminology::Terminology;

/// Why a segment was refused: the field (relative to the segment) and what to fix.
pub(super) type Refusal = (String, String);

fn refuse(field: &str, reason: impl Into<String>) -> Refusal {
    (field.to_owned(), reason.into())
}

/// Checks and normalises one segment (see the module docs).
pub(super) fn check_segment(
    mut w: WaveformSegment,
    receive_time_us: i64,
    terminology: &Terminology,
    bounds: &WaveformConfig,
) -> Result<WaveformSegment, Refusal> {
    if w.mdc_code == 0 {
        return Err(refuse(
            "mdc_code",
            "is required (the IEEE 11073-10101 code of the channel)",
        ));
    }
    let max_rate = bounds.max_sample_rate_hz;
    let rate_ok = |r: f64| r.is_finite() && r > 0.0 && r <= max_rate;
    let (r, p) = (w.sample_rate_hz, w.sample_period_us);
    if r == 0.0 && p == 0.0 {
        return Err(refuse(
            "sample_rate_hz",
            "is 0: a curve needs its sample rate (or sample_period_us)",
        ));
    }
    if r != 0.0 && !rate_ok(r) {
        return Err(refuse(
            "sample_rate_hz",
            format!("{r} is not a sample rate above 0 and at most {max_rate} per second"),
        ));
    }
    if p != 0.0 && !(p.is_finite() && p > 0.0 && rate_ok(1e6 / p)) {
        return Err(refuse(
            "sample_period_us",
            format!(
                "{p} µs is not a sample period for a rate above 0 and at most {max_rate} per second"
            ),
        ));
    }
    if p == 0.0 {
        w.sample_period_us = 1e6 / r;
    } else if r == 0.0 {
        w.sample_rate_hz = 1e6 / p;
    } else if ((1e6 / r) - p).abs() > p * 1e-6 {
        return Err(refuse(
            "sample_period_us",
            format!("{p} µs does not match sample_rate_hz {r} (1e6 / rate)"),
        ));
    }
    let gap_positions = runs_within(&w.gaps, "gaps", None)?;
    let positions = w.samples.len() as u64 + gap_positions;
    if w.sample_count == 0 {
        w.sample_count = u32::try_from(positions).unwrap_or(u32::MAX);
    } else if u64::from(w.sample_count) != positions {
        return Err(refuse(
            "sample_count",
            format!(
                "{} does not equal the {} samples plus the {gap_positions} gap positions",
                w.sample_count,
                w.samples.len()
            ),
        ));
    }
    if positions == 0 {
        return Err(refuse(
            "sample_count",
            "the segment has no positions (no samples and no gaps)",
        ));
    }
    if positions > u64::from(bounds.max_samples) {
        return Err(refuse(
            "sample_count",
            format!(
                "{positions} positions exceed the bound of {} per segment; send shorter segments",
                bounds.max_samples
            ),
        ));
    }
    runs_within(&w.gaps, "gaps", Some(w.sample_count))?;
    runs_within(&w.below_range, "below_range", Some(w.sample_count))?;
    runs_within(&w.above_range, "above_range", Some(w.sample_count))?;
    if w.scale == 0.0 {
        w.scale = 1.0;
    }
    for (field, v) in [
        ("scale", Some(w.scale)),
        ("offset", Some(w.offset)),
        ("range_low", w.range_low),
        ("range_high", w.range_high),
    ] {
        if v.is_some_and(|v| !v.is_finite()) {
            return Err(refuse(field, "must be a finite number"));
        }
    }
    if let (Some(lo), Some(hi)) = (w.range_low, w.range_high) {
        if lo > hi {
            return Err(refuse(
                "range_low",
                format!("{lo} is above range_high {hi}"),
            ));
        }
    }
    let status = ObservationStatus::try_from(w.status).map_err(|_| {
        refuse(
            "status",
            format!("{} is not an icu.v1.ObservationStatus (0 to 5)", w.status),
        )
    })?;
    if status == ObservationStatus::Unspecified {
        w.status = ObservationStatus::Valid as i32;
    }
    if !w.packed_samples.is_empty() {
        return Err(refuse(
            "packed_samples",
            "is the store's field; send the samples in `samples`",
        ));
    }
    if w.unit_ucum.is_empty() && w.unit_mdc_code != 0 {
        w.unit_ucum = terminology
            .ucum_for_unit(w.unit_mdc_code)
            .ok_or_else(|| {
                refuse(
                    "unit_mdc_code",
                    format!(
                        "MDC unit code {} is not in the gateway unit table",
                        w.unit_mdc_code
                    ),
                )
            })?
            .to_owned();
    }
    if w.mdc_refid.is_empty() {
        if let Some(term) = terminology.by_mdc(w.mdc_code) {
            w.mdc_refid = term.refid.clone();
        }
    }
    w.device_id.clear();
    w.bed.clear();
    w.seq = 0;
    w.patient_id.clear();
    w.clock_synced = false;
    w.device_time_untrusted = false;
    w.receive_time_us = receive_time_us;
    Ok(w)
}

/// The positions the runs cover, after checking each run (count above 0, ascending, no
/// overlap, and inside `0..len` when `len` is known).
fn runs_within(runs: &[SampleRun], field: &str, len: Option<u32>) -> Result<u64, Refusal> {
    let mut covered = 0u64;
    let mut next_free = 0u64;
    for (k, r) in runs.iter().enumerate() {
        let at = format!("{field}[{k}]");
        if r.count == 0 {
            return Err(refuse(&at, "has a count of 0"));
        }
        let (start, end) = (u64::from(r.start), u64::from(r.start) + u64::from(r.count));
        if start < next_free {
            return Err(refuse(
                &at,
                format!("starts at {start}, inside or before the previous run"),
            ));
        }
        if let Some(len) = len {
            if end > u64::from(len) {
                return Err(refuse(
                    &at,
                    format!("ends at {end}, past the segment's {len} positions"),
                ));
            }
        }
        next_free = end;
        covered += u64::from(r.count);
    }
    Ok(covered)
}
