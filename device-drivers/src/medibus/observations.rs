//! MEDIBUS values to [`Observation`]s, with the last known alarm limits.

use std::collections::HashMap;

use icu_protos::v1::{Observation, ObservationStatus};

use super::payload::MedibusValue;
use crate::terminology::Terminology;

/// Driver name of the native-code table (`terminology/native-medibus.tsv`).
pub const DRIVER: &str = "medibus";

/// The last low and high alarm limits the device reported, by data code.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MedibusLimits {
    low: HashMap<u8, f64>,
    high: HashMap<u8, f64>,
}

impl MedibusLimits {
    /// Replaces the low limits with the content of a low-limits response.
    pub fn update_low(&mut self, values: &[MedibusValue]) {
        self.low = values
            .iter()
            .filter_map(|v| Some((v.code, v.value?)))
            .collect();
    }

    /// Replaces the high limits with the content of a high-limits response.
    pub fn update_high(&mut self, values: &[MedibusValue]) {
        self.high = values
            .iter()
            .filter_map(|v| Some((v.code, v.value?)))
            .collect();
    }

    pub fn low(&self, code: u8) -> Option<f64> {
        self.low.get(&code).copied()
    }

    pub fn high(&self, code: u8) -> Option<f64> {
        self.high.get(&code).copied()
    }
}

fn status(v: &MedibusValue) -> ObservationStatus {
    if v.value.is_some() {
        ObservationStatus::Valid
    } else if v.is_not_available() {
        ObservationStatus::NotAvailable
    } else {
        ObservationStatus::Invalid
    }
}

fn observation(
    v: &MedibusValue,
    native_code: &str,
    index: usize,
    device_time_us: Option<i64>,
    receive_time_us: i64,
    terminology: &Terminology,
) -> Option<Observation> {
    let native = terminology.native(DRIVER, native_code)?;
    let term = terminology.by_mdc(native.mdc_code);
    Some(Observation {
        mdc_code: native.mdc_code,
        mdc_refid: term.map(|t| t.refid.clone()).unwrap_or_default(),
        value: v.value.map(|x| x * native.scale),
        value_text: v.raw.trim().to_owned(),
        unit_ucum: native.ucum.clone(),
        unit_mdc_code: native.unit_mdc_code,
        device_time_us,
        receive_time_us,
        status: status(v) as i32,
        loinc: term.and_then(|t| t.loinc.clone()).unwrap_or_default(),
        source_row: u32::try_from(index + 1).unwrap_or(u32::MAX),
        ..Observation::default()
    })
}

/// Observations of a measured-data response: one per data code with a native code in
/// `native-medibus.tsv` (codes without an MDC mapping are skipped), with the last known limits
/// of the same code as `limit_low`/`limit_high`. Units are the device's (pressures in `mbar`).
/// `source_row` is the 1-based record position in the response. `device_id`, `bed`, `seq` and
/// `clock_synced` are left for the gateway.
pub fn medibus_to_observations(
    measured: &[MedibusValue],
    limits: &MedibusLimits,
    device_time_us: Option<i64>,
    receive_time_us: i64,
    terminology: &Terminology,
) -> Vec<Observation> {
    measured
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let code = format!("{:02X}", v.code);
            let mut o = observation(v, &code, i, device_time_us, receive_time_us, terminology)?;
            let scale = terminology.native(DRIVER, &code).map_or(1.0, |n| n.scale);
            o.limit_low = limits.low(v.code).map(|x| x * scale);
            o.limit_high = limits.high(v.code).map(|x| x * scale);
            Some(o)
        })
        .collect()
}

/// Observations of a device-settings response (native codes `S<code>`, e.g. `S01` for the set
/// FiO2); settings without an MDC mapping are skipped.
pub fn medibus_settings_to_observations(
    settings: &[MedibusValue],
    device_time_us: Option<i64>,
    receive_time_us: i64,
    terminology: &Terminology,
) -> Vec<Observation> {
    settings
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let code = format!("S{:02X}", v.code);
            observation(v, &code, i, device_time_us, receive_time_us, terminology)
        })
        .collect()
}
