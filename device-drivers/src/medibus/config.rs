//! Configuration of one Dräger MEDIBUS device on a serial port.

use serde::{Deserialize, Serialize};

/// A Dräger device (Evita, V500, Apollo, ...) speaking MEDIBUS on an RS-232 port.
///
/// Match the device's COM-port setup: baud and parity differ between models and sites (Evita 4
/// and Apollo use even parity, Evita XL and V500 none; protocols.md §1.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MedibusConfig {
    /// Serial device, e.g. `/dev/ttyS0` or a pty path from the simulator.
    pub port: String,
    /// Baud rate: 19200 on most Dräger ventilators, 9600 on Apollo, 38400 on some V500.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Data bits per character: 7 or 8. MEDIBUS uses 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Parity: `even` (default; Evita 4, Apollo), `none` (Evita XL, V500) or `odd`.
    #[serde(default = "default_parity")]
    pub parity: String,
    /// Stop bits: 1 or 2. MEDIBUS uses 1.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Send NOP when nothing was sent for this long, in milliseconds. The device drops the link
    /// after 3000 ms without traffic, so keep it at most 2000.
    #[serde(default = "default_keep_alive_ms")]
    pub keep_alive_ms: u64,
    /// Re-initialise the link when a request is not answered within this many milliseconds.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Start a poll cycle (measured data, limits, alarms, settings, text) this often, in
    /// milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// The device is reported silent (technical alarm) after this many seconds without data.
    #[serde(default = "default_silent_after_s")]
    pub silent_after_s: u32,
}

fn default_baud() -> u32 {
    19200
}
fn default_data_bits() -> u8 {
    8
}
fn default_parity() -> String {
    "even".to_owned()
}
fn default_stop_bits() -> u8 {
    1
}
fn default_keep_alive_ms() -> u64 {
    1000
}
fn default_response_timeout_ms() -> u64 {
    5000
}
fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_silent_after_s() -> u32 {
    5
}

/// One problem in a [`MedibusConfig`], naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct MedibusConfigError {
    pub field: &'static str,
    pub message: String,
}

impl MedibusConfig {
    /// A config for `port` with every other field at its default.
    pub fn new(port: impl Into<String>) -> Self {
        Self {
            port: port.into(),
            baud: default_baud(),
            data_bits: default_data_bits(),
            parity: default_parity(),
            stop_bits: default_stop_bits(),
            keep_alive_ms: default_keep_alive_ms(),
            response_timeout_ms: default_response_timeout_ms(),
            poll_interval_ms: default_poll_interval_ms(),
            silent_after_s: default_silent_after_s(),
        }
    }

    /// Every problem of this config (empty when valid).
    pub fn validate(&self) -> Result<(), Vec<MedibusConfigError>> {
        let mut problems = Vec::new();
        let mut bad = |field, message: String| problems.push(MedibusConfigError { field, message });
        for (field, message) in crate::serial_line::line_problems(
            &self.port,
            self.baud,
            self.data_bits,
            &self.parity,
            self.stop_bits,
            "MEDIBUS: 19200",
        ) {
            bad(field, message);
        }
        if !(100..=2000).contains(&self.keep_alive_ms) {
            bad(
                "keep_alive_ms",
                format!(
                    "{} is outside 100..=2000; the device drops the link after 3000 ms of silence",
                    self.keep_alive_ms
                ),
            );
        }
        if !(100..=60_000).contains(&self.response_timeout_ms) {
            bad(
                "response_timeout_ms",
                format!("{} is outside 100..=60000", self.response_timeout_ms),
            );
        }
        if !(100..=60_000).contains(&self.poll_interval_ms) {
            bad(
                "poll_interval_ms",
                format!("{} is outside 100..=60000", self.poll_interval_ms),
            );
        }
        if self.silent_after_s == 0 {
            bad("silent_after_s", "must be at least 1".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
