//! MEDIBUS realtime curves as canonical waveform segments: which curves a site may ask for
//! (by name or by the Dräger realtime code), their MDC code and unit, and a decoded
//! [`WaveformRun`] turned into an [`icu_protos::v1::WaveformSegment`].
//!
//! Guarantees:
//! - Lossless: a sample is the device's 12-bit bin as the integer written; `scale` (value per
//!   bin) and `offset` (the value of bin 0) turn it into the curve's unit exactly as the device's
//!   realtime configuration says (`bin / maxbin * (max - min) + min`); `range_low`/`range_high`
//!   are bins 0 and max-bin (a bin above max-bin is kept and listed in `above_range`).
//! - Gaps stay gaps: a bad realtime frame is a missing position (`gaps`), never a zero.
//! - Time: MEDIBUS realtime frames carry no device time, so `first_sample_time_us` is never
//!   set; the segment is placed by its receive time (the gateway takes the last sample to have
//!   arrived when the run was handed over).
//!
//! Codes and units: realtime codes from protocols.md §1.6 (OpenICE `realtime-data.map`): 00
//! airway pressure mbar, 01 flow L/min, 03 volume since the start of inspiration mL; units as
//! the device sends them (pressures stay in mbar, MDC_DIM_MILLI_BAR 266098). MDC codes:
//! MDC_FLOW_AWAY (term 20692 → 151764) and MDC_VOL_AWAY (term 21636 → 152708, "integral flow
//! of gas in airway, typically as a waveform") from a public IEEE 11073-10101 code table;
//! MDC_PRESS_AWAY 151792 is UNCONFIRMED (not found in a source here; derived from its place
//! before MDC_PRESS_AWAY_END_EXP_POS_INTRINSIC 151808). Volume uses MDC_VOL_AWAY rather than
//! MDC_VOL_AWAY_TIDAL (151868, the per-breath numeric) because the curve is a running volume.

use icu_protos::v1::{ObservationStatus, SampleRun, WaveformSegment};

use super::waveform::WaveformRun;

/// One realtime curve the gateway knows how to code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealtimeCurve {
    /// Dräger realtime data code.
    pub code: u8,
    /// The name used in the gateway config, e.g. `airway_pressure`.
    pub name: &'static str,
    pub mdc_code: u32,
    pub mdc_refid: &'static str,
    pub unit_ucum: &'static str,
    pub unit_mdc_code: u32,
}

/// The curves a device config may name (`realtime = ["airway_pressure", "flow", "volume"]`).
pub const CURVES: [RealtimeCurve; 3] = [
    RealtimeCurve {
        code: 0x00,
        name: "airway_pressure",
        mdc_code: 151_792,
        mdc_refid: "MDC_PRESS_AWAY",
        unit_ucum: "mbar",
        unit_mdc_code: 266_098,
    },
    RealtimeCurve {
        code: 0x01,
        name: "flow",
        mdc_code: 151_764,
        mdc_refid: "MDC_FLOW_AWAY",
        unit_ucum: "L/min",
        unit_mdc_code: 265_216,
    },
    RealtimeCurve {
        code: 0x03,
        name: "volume",
        mdc_code: 152_708,
        mdc_refid: "MDC_VOL_AWAY",
        unit_ucum: "mL",
        unit_mdc_code: 263_762,
    },
];

/// The curve a config entry names: its name (`"flow"`) or its realtime code as two hex digits
/// (`"01"`).
pub fn curve_named(entry: &str) -> Option<RealtimeCurve> {
    let entry = entry.trim();
    CURVES.iter().copied().find(|c| {
        c.name.eq_ignore_ascii_case(entry)
            || (entry.len() == 2 && u8::from_str_radix(entry, 16).ok() == Some(c.code))
    })
}

/// The curve of a realtime code.
pub fn curve_of(code: u8) -> Option<RealtimeCurve> {
    CURVES.iter().copied().find(|c| c.code == code)
}

/// A decoded run as a segment (see the module docs). `receive_time_us` is when its last sample
/// arrived. Identity (device, bed, patient, clock) is left for the gateway to set.
pub fn run_to_segment(run: &WaveformRun, receive_time_us: i64) -> WaveformSegment {
    let curve = curve_of(run.code);
    let mut samples = Vec::with_capacity(run.samples.len());
    let mut gaps: Vec<SampleRun> = Vec::new();
    let mut above: Vec<SampleRun> = Vec::new();
    let extend = |runs: &mut Vec<SampleRun>, k: usize| match runs.last_mut() {
        Some(r) if (r.start + r.count) as usize == k => r.count += 1,
        _ => runs.push(SampleRun {
            start: k as u32,
            count: 1,
        }),
    };
    for (k, s) in run.samples.iter().enumerate() {
        match s {
            Some(bin) => {
                // A 12-bit bin above the configured max-bin is kept and flagged.
                if *bin > run.scale.maxbin {
                    extend(&mut above, k);
                }
                samples.push(i32::from(*bin));
            }
            None => extend(&mut gaps, k),
        }
    }
    let interval = f64::from(run.interval_us.max(1));
    WaveformSegment {
        mdc_code: curve.map_or(0, |c| c.mdc_code),
        mdc_refid: curve.map_or_else(
            || format!("MEDIBUS_RT_{:02X}", run.code),
            |c| c.mdc_refid.to_owned(),
        ),
        unit_ucum: curve.map_or("", |c| c.unit_ucum).to_owned(),
        unit_mdc_code: curve.map_or(0, |c| c.unit_mdc_code),
        sample_rate_hz: 1e6 / interval,
        sample_period_us: interval,
        decimal_exponent: 0,
        scale: run.scale.factor(),
        offset: run.scale.min,
        range_low: Some(0.0),
        range_high: Some(f64::from(run.scale.maxbin)),
        first_sample_time_us: None,
        receive_time_us,
        sample_count: run.samples.len() as u32,
        samples,
        gaps,
        above_range: above,
        source_message_id: format!("medibus-rt@{}", run.first_offset),
        source_row: u32::from(run.stream),
        status: ObservationStatus::Valid as i32,
        ..Default::default()
    }
}
