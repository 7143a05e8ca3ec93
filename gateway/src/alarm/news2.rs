//! NEWS2 scoring (Royal College of Physicians 2017), protocols.md §6.3.
//!
//! Owns: the per-parameter bands and the aggregate. Pure functions only. Values are rounded to
//! the chart's resolution before scoring (whole numbers; temperature to 0.1 °C), so a band edge
//! such as "RR 9-11" covers 8.5 ≤ RR < 11.5.

/// The parameters the gateway can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum News2Param {
    RespRate,
    Spo2,
    Systolic,
    Pulse,
    Temperature,
}

impl News2Param {
    pub const ALL: [News2Param; 5] = [
        News2Param::RespRate,
        News2Param::Spo2,
        News2Param::Systolic,
        News2Param::Pulse,
        News2Param::Temperature,
    ];

    /// Which NEWS2 parameter an MDC code measures (protocols.md §5.3).
    pub fn for_code(code: u32) -> Option<News2Param> {
        Some(match code {
            151562 | 151578 | 151594 | 151570 => News2Param::RespRate,
            150456 => News2Param::Spo2,
            150301 | 150021 | 150037 | 150033 | 150017 => News2Param::Systolic,
            147842 | 149530 | 149514 => News2Param::Pulse,
            150364 | 150368 | 150344 => News2Param::Temperature,
            _ => return None,
        })
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

fn whole(v: f64) -> i64 {
    v.round() as i64
}

/// Respiration rate: ≤8 → 3, 9-11 → 1, 12-20 → 0, 21-24 → 2, ≥25 → 3.
pub fn score_resp_rate(rr: f64) -> u8 {
    match whole(rr) {
        ..=8 => 3,
        9..=11 => 1,
        12..=20 => 0,
        21..=24 => 2,
        _ => 3,
    }
}

/// SpO2 scale 1: ≤91 → 3, 92-93 → 2, 94-95 → 1, ≥96 → 0.
pub fn score_spo2_scale1(spo2: f64) -> u8 {
    match whole(spo2) {
        ..=91 => 3,
        92..=93 => 2,
        94..=95 => 1,
        _ => 0,
    }
}

/// SpO2 scale 2: ≤83 → 3, 84-85 → 2, 86-87 → 1, 88-92 → 0, ≥93 on air → 0;
/// on oxygen 93-94 → 1, 95-96 → 2, ≥97 → 3.
pub fn score_spo2_scale2(spo2: f64, on_oxygen: bool) -> u8 {
    match whole(spo2) {
        ..=83 => 3,
        84..=85 => 2,
        86..=87 => 1,
        88..=92 => 0,
        _ if !on_oxygen => 0,
        93..=94 => 1,
        95..=96 => 2,
        _ => 3,
    }
}

/// Systolic BP: ≤90 → 3, 91-100 → 2, 101-110 → 1, 111-219 → 0, ≥220 → 3.
pub fn score_systolic(sbp: f64) -> u8 {
    match whole(sbp) {
        ..=90 => 3,
        91..=100 => 2,
        101..=110 => 1,
        111..=219 => 0,
        _ => 3,
    }
}

/// Pulse: ≤40 → 3, 41-50 → 1, 51-90 → 0, 91-110 → 1, 111-130 → 2, ≥131 → 3.
pub fn score_pulse(pulse: f64) -> u8 {
    match whole(pulse) {
        ..=40 => 3,
        41..=50 => 1,
        51..=90 => 0,
        91..=110 => 1,
        111..=130 => 2,
        _ => 3,
    }
}

/// Temperature: ≤35.0 → 3, 35.1-36.0 → 1, 36.1-38.0 → 0, 38.1-39.0 → 1, ≥39.1 → 2.
pub fn score_temperature(celsius: f64) -> u8 {
    match (celsius * 10.0).round() as i64 {
        ..=350 => 3,
        351..=360 => 1,
        361..=380 => 0,
        381..=390 => 1,
        _ => 2,
    }
}

/// The values scored; `None` when unknown (counts 0).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct News2Inputs {
    pub resp_rate: Option<f64>,
    pub spo2: Option<f64>,
    pub systolic: Option<f64>,
    pub pulse: Option<f64>,
    pub temperature: Option<f64>,
    /// Supplemental oxygen (scores 2); unknown to the gateway, so `false` (air).
    pub on_oxygen: bool,
    /// New confusion / CVPU (scores 3); unknown to the gateway, so `false` (alert).
    pub not_alert: bool,
}

/// An aggregate score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct News2Score {
    /// Sum of all parameter scores, 0-20.
    pub total: u8,
    /// The highest single-parameter score.
    pub max_single: u8,
    /// How many of the five measured parameters had a value.
    pub measured: u8,
}

/// Scores `inputs` on SpO2 scale `spo2_scale` (1 or 2).
pub fn score(inputs: &News2Inputs, spo2_scale: u8) -> News2Score {
    let parts = [
        inputs.resp_rate.map(score_resp_rate),
        inputs.spo2.map(|s| {
            if spo2_scale == 2 {
                score_spo2_scale2(s, inputs.on_oxygen)
            } else {
                score_spo2_scale1(s)
            }
        }),
        inputs.systolic.map(score_systolic),
        inputs.pulse.map(score_pulse),
        inputs.temperature.map(score_temperature),
        Some(if inputs.on_oxygen { 2 } else { 0 }),
        Some(if inputs.not_alert { 3 } else { 0 }),
    ];
    let measured = parts[..5].iter().filter(|p| p.is_some()).count() as u8;
    let scores = parts.iter().flatten();
    News2Score {
        total: scores.clone().sum(),
        max_single: scores.copied().max().unwrap_or(0),
        measured,
    }
}
