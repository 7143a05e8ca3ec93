//! IHE PCD-01 waveform messages (IHE PCD WCM rows) from a simulated patient monitor: three ECG
//! leads at 500 Hz, the SpO2 plethysmogram and the arterial pressure at 125 Hz.
//!
//! Owns: the curves (one beat clock drives all of them, so the ECG's R waves, the pleth's
//! pulses and the pressure's upstrokes follow the heart rate the caller passes; the pleth's
//! amplitude follows SpO2 and the pressure swings between the diastolic and systolic values),
//! and the messages that carry them, one per channel group (the ECG leads; pleth and pressure)
//! per segment (`segment_ms`, 800 ms by default).
//!
//! Guarantees:
//! - Deterministic: the same seed and the same vitals give the same bytes.
//! - Contiguous: each segment's first sample follows the previous segment's last by one sample
//!   period, on every channel; OBR-7/OBR-8 and OBX-14 say so.
//! - What is sent is reported exactly ([`SentSegment`]): every position as the integer written
//!   on the wire, or `None` where a sample was dropped ([`GapPlan`]). A dropped sample is an
//!   empty value in the NA array, never a zero.
//!
//! Message layout (decoded by `icu_drivers::hl7::decode_pcd01_waveforms`): MSH/PID/PV1 as the
//! numeric monitor writes them, one OBR (`69121^MDC_OBS_WAVE_CTS^MDC`, OBR-7 first sample,
//! OBR-8 end of the segment), the MDS row with OBX-18, then per channel one `NA` row of integer
//! samples (OBX-14 its first sample's time) and its attribute rows `<sub-id>.1`
//! MDC_ATTR_SAMP_RATE (264608 MDC_DIM_PER_SEC), `.2` MDC_ATTR_DATA_RANGE (`NR`, in written
//! values) and, where the samples are counts, `.3` MDC_ATTR_NU_MSMT_RES (physical units per
//! count), as public WCM captures show them.
//!
//! Sent by the runner (`run.rs`, `RunOptions::waveforms`; `icu-sim pcd01 --waveforms`, and the
//! gateway's demo) on each monitor's MLLP connection, between its numeric messages.

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::pcd01::head_segments;
use crate::physiology::Vitals;
use crate::SimBed;

/// One waveform channel a simulated monitor sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChannelSpec {
    pub code: u32,
    pub refid: &'static str,
    pub unit_code: u32,
    pub unit_refid: &'static str,
    /// OBX-4 of the channel's NA row.
    pub containment: &'static str,
    pub rate_hz: u32,
    /// Physical units per written count (MDC_ATTR_NU_MSMT_RES); `None`: counts are the value.
    pub resolution: Option<f64>,
    /// MDC_ATTR_DATA_RANGE in written counts.
    pub range: (i32, i32),
}

/// ECG lead I, II, III (MDC_ECG_ELEC_POTL_I/II/III) in 5 µV counts.
pub const ECG_I: ChannelSpec = ecg(131_329, "MDC_ECG_ELEC_POTL_I", "1.1.1.101");
pub const ECG_II: ChannelSpec = ecg(131_330, "MDC_ECG_ELEC_POTL_II", "1.1.1.102");
pub const ECG_III: ChannelSpec = ecg(131_389, "MDC_ECG_ELEC_POTL_III", "1.1.1.103");
/// The SpO2 plethysmogram (MDC_PULS_OXIM_PLETH), dimensionless 12-bit counts.
pub const PLETH: ChannelSpec = ChannelSpec {
    code: 150_452,
    refid: "MDC_PULS_OXIM_PLETH",
    unit_code: 262_656,
    unit_refid: "MDC_DIM_DIMLESS",
    containment: "1.2.1.101",
    rate_hz: 125,
    resolution: None,
    range: (0, 4095),
};
/// Arterial pressure (MDC_PRESS_BLD_ART_ABP; 150036 is derived, see the driver's module docs)
/// in 0.1 mmHg counts.
pub const ABP: ChannelSpec = ChannelSpec {
    code: 150_036,
    refid: "MDC_PRESS_BLD_ART_ABP",
    unit_code: 266_016,
    unit_refid: "MDC_DIM_MMHG",
    containment: "1.6.1.101",
    rate_hz: 125,
    resolution: Some(0.1),
    range: (-400, 3000),
};

const fn ecg(code: u32, refid: &'static str, containment: &'static str) -> ChannelSpec {
    ChannelSpec {
        code,
        refid,
        unit_code: 266_418,
        unit_refid: "MDC_DIM_MILLI_VOLT",
        containment,
        rate_hz: 500,
        resolution: Some(0.005),
        range: (-2000, 2000),
    }
}

/// The channel groups, one message each per segment.
pub const GROUPS: [&[ChannelSpec]; 2] = [&[ECG_I, ECG_II, ECG_III], &[PLETH, ABP]];

/// Which samples a monitor leaves out (a lead off for a moment, a lost packet): on every
/// channel, `length` consecutive positions out of every `every` (counted from the channel's
/// first sample). `every = 0` drops nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GapPlan {
    pub every: u64,
    pub length: u64,
}

impl GapPlan {
    fn drops(&self, position: u64) -> bool {
        self.every > 0 && position % self.every < self.length
    }
}

/// One channel's segment as put on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct SentSegment {
    pub device_id: String,
    pub control_id: String,
    pub mdc_code: u32,
    pub rate_hz: u32,
    /// Microseconds since the Unix epoch of the first position.
    pub first_sample_time_us: i64,
    /// Every position: the count written, or `None` where the sample was dropped.
    pub samples: Vec<Option<i32>>,
}

/// A simulated monitor's waveform output at one bed.
pub struct WaveformMonitor {
    pub bed: SimBed,
    /// Length of one segment, milliseconds; a multiple of 8 so every channel gets whole samples.
    pub segment_ms: u32,
    pub gaps: GapPlan,
    rng: StdRng,
    /// Time of the next segment's first sample, microseconds since the Unix epoch.
    next_us: i64,
    /// Beat clock: 0..1 through the current beat, advanced at the ECG's rate.
    phase: f64,
    /// Samples sent so far per channel group (the position the gap plan counts).
    positions: [u64; GROUPS.len()],
    counter: u64,
}

impl WaveformMonitor {
    /// A monitor whose first sample is at `start` (whole milliseconds are kept).
    pub fn new(bed: SimBed, seed: u64, start: DateTime<Utc>) -> Self {
        let rng = StdRng::seed_from_u64(seed.wrapping_mul(7_919).wrapping_add(bed.index as u64));
        Self {
            bed,
            segment_ms: 800,
            gaps: GapPlan::default(),
            rng,
            next_us: start.timestamp_millis() * 1000,
            // Mid-beat: the first R wave is half a beat in.
            phase: 0.5,
            positions: [0; GROUPS.len()],
            counter: 0,
        }
    }

    /// The next segment: one message per channel group (segments joined by `\r`) and what each
    /// carries, with the curves following `vitals`.
    pub fn next_messages(&mut self, vitals: &Vitals) -> Vec<(String, Vec<SentSegment>)> {
        assert!(
            self.segment_ms > 0 && self.segment_ms.is_multiple_of(8),
            "segment_ms must be a positive multiple of 8 (whole samples at 125 Hz)"
        );
        let start_us = self.next_us;
        let duration_us = i64::from(self.segment_ms) * 1000;
        let curves = self.curves(vitals);
        self.next_us += duration_us;
        GROUPS
            .iter()
            .enumerate()
            .map(|(g, channels)| {
                let first_position = self.positions[g];
                let mut group_len = 0;
                let segments: Vec<(ChannelSpec, Vec<Option<i32>>)> = channels
                    .iter()
                    .map(|spec| {
                        let values = &curves[index_of(spec)];
                        group_len = values.len() as u64;
                        let kept = values
                            .iter()
                            .enumerate()
                            .map(|(i, &v)| {
                                (!self.gaps.drops(first_position + i as u64)).then_some(v)
                            })
                            .collect();
                        (*spec, kept)
                    })
                    .collect();
                self.positions[g] += group_len;
                self.message(start_us, duration_us, &segments)
            })
            .collect()
    }

    /// One message of a channel group.
    fn message(
        &mut self,
        start_us: i64,
        duration_us: i64,
        channels: &[(ChannelSpec, Vec<Option<i32>>)],
    ) -> (String, Vec<SentSegment>) {
        self.counter += 1;
        let control_id = format!("{}-W{:08}", self.bed.device_id.to_uppercase(), self.counter);
        let start = hl7_time(start_us);
        let end = hl7_time(start_us + duration_us);
        let mut segs = head_segments(
            &self.bed,
            &control_id,
            &end,
            "69121^MDC_OBS_WAVE_CTS^MDC",
            &format!("{start}|{end}"),
        );
        let mut sent = Vec::new();
        for (spec, samples) in channels {
            let written: Vec<String> = samples
                .iter()
                .map(|s| s.map(|v| v.to_string()).unwrap_or_default())
                .collect();
            let unit = format!("{}^{}^MDC", spec.unit_code, spec.unit_refid);
            let c = spec.containment;
            // OBX-1: the rows so far after MSH, PID, PV1 and OBR, plus this one.
            let id = segs.len() - 3;
            segs.push(format!(
                "OBX|{id}|NA|{}^{}^MDC|{c}|{}|{unit}|||||R|||{start}",
                spec.code,
                spec.refid,
                written.join("^")
            ));
            segs.push(format!(
                "OBX|{}|NM|0^MDC_ATTR_SAMP_RATE^MDC|{c}.1|{}|264608^MDC_DIM_PER_SEC^MDC|||||R",
                id + 1,
                spec.rate_hz
            ));
            segs.push(format!(
                "OBX|{}|NR|0^MDC_ATTR_DATA_RANGE^MDC|{c}.2|{}^{}|{unit}|||||R",
                id + 2,
                spec.range.0,
                spec.range.1
            ));
            if let Some(res) = spec.resolution {
                segs.push(format!(
                    "OBX|{}|NM|0^MDC_ATTR_NU_MSMT_RES^MDC|{c}.3|{res}|{unit}|||||R",
                    id + 3
                ));
            }
            sent.push(SentSegment {
                device_id: self.bed.device_id.clone(),
                control_id: control_id.clone(),
                mdc_code: spec.code,
                rate_hz: spec.rate_hz,
                first_sample_time_us: start_us,
                samples: samples.clone(),
            });
        }
        (segs.join("\r"), sent)
    }

    /// One segment of every channel, in the order of [`index_of`]: the beat clock runs at the
    /// ECG's rate; the 125 Hz channels take every fourth instant.
    fn curves(&mut self, v: &Vitals) -> [Vec<i32>; 5] {
        let n = (500 * self.segment_ms / 1000) as usize;
        let dt = 1.0 / 500.0;
        let beat_s = 60.0 / v.heart_rate.max(20.0);
        let mut out: [Vec<i32>; 5] = Default::default();
        // Perfusion falls with saturation: a smaller pleth below 90 %.
        let pleth_amp = 1400.0 * ((v.spo2 - 70.0) / 28.0).clamp(0.25, 1.0);
        let (sys, dia) = (v.nibp_sys, v.nibp_dia);
        for i in 0..n {
            let t = self.phase * beat_s; // seconds since this beat's R wave
            let noise = self.rng.gen_range(-3..=3);
            let lead_ii = ecg_mv(t, beat_s);
            let lead_i = 0.6 * lead_ii + 0.02 * (t * 7.0).sin();
            let counts = |mv: f64| (mv / 0.005).round() as i32;
            let (ci, cii) = (counts(lead_i) + noise, counts(lead_ii) + noise);
            out[0].push(ci);
            out[1].push(cii);
            out[2].push(cii - ci); // Einthoven: III = II - I
            if i % 4 == 0 {
                let pulse = pulse_shape(t - 0.2, beat_s);
                out[3].push((2048.0 - 700.0 + pleth_amp * pulse).round() as i32);
                let abp = dia + (sys - dia) * pulse_shape(t - 0.12, beat_s);
                out[4].push((abp * 10.0).round() as i32);
            }
            self.phase += dt / beat_s;
            if self.phase >= 1.0 {
                self.phase -= 1.0;
            }
        }
        out
    }
}

/// Position of a channel in [`WaveformMonitor::curves`]' output.
fn index_of(spec: &ChannelSpec) -> usize {
    match spec.code {
        131_329 => 0,
        131_330 => 1,
        131_389 => 2,
        150_452 => 3,
        _ => 4,
    }
}

/// Lead II in mV, `t` seconds after the R wave of a beat lasting `beat_s`: P, Q, R, S and T as
/// Gaussian bumps (the P wave belongs to the next beat).
fn ecg_mv(t: f64, beat_s: f64) -> f64 {
    let bump = |centre: f64, width: f64, height: f64| {
        let d = (t - centre) / width;
        height * (-0.5 * d * d).exp()
    };
    let qt = 0.35 * beat_s.sqrt();
    bump(0.0, 0.010, 1.2)
        + bump(-0.025, 0.008, -0.12)
        + bump(0.025, 0.009, -0.25)
        + bump(qt - 0.08, 0.040, 0.30)
        + bump(beat_s - 0.16, 0.025, 0.12)
        + bump(-0.16, 0.025, 0.12)
}

/// A pulse wave between 0 and 1, `t` seconds after its foot: a fast systolic rise, a dicrotic
/// notch and an exponential diastolic run-off until the next foot.
fn pulse_shape(t: f64, beat_s: f64) -> f64 {
    let t = t.rem_euclid(beat_s);
    let rise = 0.10;
    if t < rise {
        (std::f64::consts::FRAC_PI_2 * t / rise).sin()
    } else {
        let fall = (-(t - rise) / (0.45 * beat_s)).exp();
        let notch = 0.08 * (-((t - 0.32) / 0.03).powi(2)).exp();
        (fall + notch).min(1.0)
    }
}

/// HL7 DTM with four fraction digits, UTC.
fn hl7_time(us: i64) -> String {
    let t = DateTime::from_timestamp_micros(us).unwrap_or_default();
    format!(
        "{}.{:04}+0000",
        t.format("%Y%m%d%H%M%S"),
        t.timestamp_subsec_micros() / 100
    )
}

#[cfg(test)]
#[path = "waveform_tests.rs"]
mod tests;
