//! The gateway's domain units, shared by every component: beds, devices and their protocols,
//! serial line settings, the gateway clock policy, link states and the shape of a config
//! problem.
//!
//! Owns: plain data types only. Guarantees: this module imports nothing from the rest of the
//! gateway (only `allow`'s address lists, which import nothing either), so every component can
//! use these types and the config can sit on top of all of them: imports point one way.

use std::path::PathBuf;
use std::time::Duration;

/// One invalid field: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Line settings of one serial port (validated from config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    pub port: PathBuf,
    pub baud: u32,
    pub data_bits: u8,
    /// "none", "even" or "odd".
    pub parity: String,
    pub stop_bits: u8,
    /// MEDIBUS realtime curves to receive (Dräger realtime codes, stream order); empty: none.
    pub realtime: Vec<u8>,
}

impl SerialSettings {
    /// Speed and framing as on the device's menu, e.g. `9600 8N1`.
    pub fn line_text(&self) -> String {
        format!(
            "{} {}{}{}",
            self.baud,
            self.data_bits,
            self.parity
                .chars()
                .next()
                .unwrap_or('n')
                .to_ascii_uppercase(),
            self.stop_bits
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockPolicy {
    Auto,
    Synced,
    Unsynced,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Bed {
    pub id: String,
    pub label: String,
    pub adt_location: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Pcd01,
    Masimo,
    Medibus,
    Mqtt,
}

impl Protocol {
    pub fn is_serial(self) -> bool {
        matches!(self, Protocol::Masimo | Protocol::Medibus)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Device {
    pub id: String,
    pub bed: String,
    pub protocol: Protocol,
    /// Set for message-based protocols (pcd01).
    pub match_id: Option<String>,
    #[serde(skip)]
    pub serial: Option<SerialSettings>,
    pub silent_after: Duration,
    /// For pcd01: where its messages may come from (empty: any address).
    pub allow_from: crate::allow::AllowList,
}

/// What the transport knows about the link to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Opening the port / waiting for the device's first answer.
    Connecting,
    /// The link is up.
    Up,
    /// The link was lost; the transport retries with backoff.
    Reconnecting,
    /// The transport gave up (e.g. the port does not exist); it still retries slowly.
    Failed,
}
