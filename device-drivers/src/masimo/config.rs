//! Configuration of one Masimo oximeter on a serial port.

use serde::{Deserialize, Serialize};

/// A Masimo oximeter (Radical-7, Rad-8, Rad-87, Root) sending ASCII 1 lines on a serial port.
///
/// The device must be set to serial output "ASCII 1" (Rad-8 ships with ASCII 2: hold Enter + Down
/// for 5 s to reach the level-3 menu and choose AS1). It sends one line per second unasked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasimoConfig {
    /// Serial device, e.g. `/dev/ttyUSB0` or a pty path from the simulator.
    pub port: String,
    /// Baud rate. Masimo devices use 9600.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Data bits per character: 7 or 8. Masimo uses 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Parity: `none`, `even` or `odd`. Masimo uses `none`.
    #[serde(default = "default_parity")]
    pub parity: String,
    /// Stop bits: 1 or 2. Masimo uses 1.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Offset of the device's clock from UTC in minutes (east positive, e.g. 60 for CET). The
    /// device sends local time without a zone; this turns it into UTC.
    #[serde(default)]
    pub utc_offset_minutes: i32,
    /// The device is reported silent (technical alarm) after this many seconds without a line.
    #[serde(default = "default_silent_after_s")]
    pub silent_after_s: u32,
}

fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_parity() -> String {
    "none".to_owned()
}
fn default_stop_bits() -> u8 {
    1
}
fn default_silent_after_s() -> u32 {
    5
}

/// One problem in a [`MasimoConfig`], naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct MasimoConfigError {
    pub field: &'static str,
    pub message: String,
}

impl MasimoConfig {
    /// A config for `port` with every other field at its default.
    pub fn new(port: impl Into<String>) -> Self {
        Self {
            port: port.into(),
            baud: default_baud(),
            data_bits: default_data_bits(),
            parity: default_parity(),
            stop_bits: default_stop_bits(),
            utc_offset_minutes: 0,
            silent_after_s: default_silent_after_s(),
        }
    }

    /// Every problem of this config (empty when valid).
    pub fn validate(&self) -> Result<(), Vec<MasimoConfigError>> {
        let mut problems = Vec::new();
        let mut bad = |field, message: String| problems.push(MasimoConfigError { field, message });
        for (field, message) in crate::serial_line::line_problems(
            &self.port,
            self.baud,
            self.data_bits,
            &self.parity,
            self.stop_bits,
            "Masimo: 9600",
        ) {
            bad(field, message);
        }
        if !(-14 * 60..=14 * 60).contains(&self.utc_offset_minutes) {
            bad(
                "utc_offset_minutes",
                format!("{} is outside -840..=840", self.utc_offset_minutes),
            );
        }
        if self.silent_after_s == 0 {
            bad(
                "silent_after_s",
                "must be at least 1 (the device sends every second)".into(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
