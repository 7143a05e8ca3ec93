//! Dräger MEDIBUS over RS-232 (protocols.md §1).
//!
//! Owns:
//! - [`frame`](MedibusCodec): the frame codec (`ESC`/`SOH` … checksum `CR`), with resync, realtime
//!   and DC1/DC3 filtering and a frame size bound;
//! - payload parsers and builders (measured data, limits, settings, alarms, text messages, device
//!   identification);
//! - [`MedibusSession`]: the gateway's polling state machine (pure, time injected);
//! - [`MedibusDevice`]: a device-side responder for the simulator (pure);
//! - [`medibus_to_observations`]: values plus last known limits to
//!   [`icu_protos::v1::Observation`]s, coded through `terminology/native-medibus.tsv`.
//!
//! The serial transport (tokio-serial) is not here: it feeds bytes to [`MedibusCodec`], hands
//! events and clock ticks to [`MedibusSession`] and writes the bytes of [`Action::Send`].
//!
//! Guarantees:
//! - No I/O, no clock, no panics on any input (property-tested and fuzzed).
//! - Every frame, corrupt frame and garbage run is reported with its stream byte offset; payload
//!   errors name the record offset inside the data.
//! - Units are the device's: pressures stay in mbar (MDC 266098), never converted to cmH2O. Only
//!   data codes with an MDC code in protocols.md §5 become observations (see the tsv); the
//!   others stay in [`MedibusData`].
//! - Realtime (waveform) bytes ≥ 0x80 never reach the slow protocol: they are skipped and
//!   counted, and with [`MedibusCodec::with_realtime`] decoded by [`RealtimeDecoder`]
//!   (`realtime.rs`: sync bytes, sync commands, 12-bit samples) into frames that
//!   [`MedibusSession::with_realtime`] sets up (`S`/`T`/`V`, `realtime_config.rs`) and turns into
//!   [`WaveformRun`]s per stream (`waveform.rs`), with gaps where a frame was bad; `curves.rs`
//!   names the curves a config may ask for and turns a run into a canonical waveform segment.

mod curves;
mod device;
mod frame;
mod observations;
mod payload;
mod realtime;
mod realtime_config;
mod session;
mod waveform;

/// The usual MEDIBUS line: 19200 8E1 (Evita 4; sites and models differ, protocols.md §1.2).
pub const LINE: crate::serial_line::LineDefaults = crate::serial_line::LineDefaults {
    baud: 19200,
    data_bits: 8,
    parity: "even",
    stop_bits: 1,
    usual: "MEDIBUS: usually 19200",
};
pub use curves::{curve_named, curve_of, run_to_segment, RealtimeCurve, CURVES};
pub use device::MedibusDevice;
pub use frame::{
    checksum, encode_command, encode_response, hex_pair, FrameError, FrameKind, MedibusCodec,
    MedibusEvent, MedibusFrame, CR, DC1, DC3, DEFAULT_MAX_FRAME_BYTES, ESC, ETX,
    GARBAGE_REPORT_BYTES, SOH,
};
pub use observations::{
    medibus_settings_to_observations, medibus_to_observations, MedibusLimits, DRIVER,
};
pub use payload::{
    encode_alarms, encode_identity, encode_measured, encode_settings, encode_text_messages,
    format_value, parse_alarms, parse_identity, parse_measured, parse_number, parse_settings,
    parse_text_messages, DeviceIdentity, MedibusAlarm, MedibusText, MedibusValue, PayloadError,
    ALARM_PHRASE_WIDTH, MEASURED_VALUE_WIDTH, REVISION_WIDTH, SETTING_VALUE_WIDTH,
};
pub use realtime::{
    encode_corrupt_frame, encode_enable, encode_frame, stream_numbers, BreathPhase,
    RealtimeDecoder, RealtimeFault, RealtimeFrame, RealtimeStats, SampleByteOrder,
    MAX_PENDING_FRAMES, MAX_STREAMS,
};
pub use realtime_config::{
    encode_configure_realtime, encode_realtime_config, parse_configure_realtime,
    parse_realtime_config, IntervalUnit, RealtimeConfig, RealtimeRequest, RealtimeScale,
    REALTIME_CONFIG_WIDTH,
};
pub use session::{
    Action, MedibusData, MedibusSession, RealtimeEvent, RealtimeSettings, ReinitReason,
    SessionState, SessionStats, SessionTimings, ICC_RETRY, LINK_TIMEOUT, POLL_CYCLE,
    REALTIME_MAX_BACKOFF,
};
pub use waveform::{StreamSpec, WaveformAssembler, WaveformRun, WaveformStats, MAX_READY_RUNS};

/// Command codes (protocols.md §1.4).
pub mod commands {
    /// Request current alarms, codepage 3.
    pub const ALARMS_CP3: u8 = 0x23;
    /// Request current measured data, codepage 1.
    pub const MEASURED_CP1: u8 = 0x24;
    /// Request current low alarm limits, codepage 1.
    pub const LOW_LIMITS_CP1: u8 = 0x25;
    /// Request current high alarm limits, codepage 1.
    pub const HIGH_LIMITS_CP1: u8 = 0x26;
    /// Request current alarms, codepage 1.
    pub const ALARMS_CP1: u8 = 0x27;
    /// Request current date and time.
    pub const DATE_TIME: u8 = 0x28;
    /// Request current device settings.
    pub const DEVICE_SETTINGS: u8 = 0x29;
    /// Request current text messages.
    pub const TEXT_MESSAGES: u8 = 0x2A;
    /// Request measured data, codepage 2.
    pub const MEASURED_CP2: u8 = 0x2B;
    /// No operation (keep-alive).
    pub const NOP: u8 = 0x30;
    /// Response code for a corrupt or invalid command.
    pub const NAK_CORRUPT: u8 = 0x15;
    /// Time changed (device → host).
    pub const TIME_CHANGED: u8 = 0x49;
    /// Configure data response.
    pub const CONFIGURE: u8 = 0x4A;
    /// Initialize communication.
    pub const ICC: u8 = 0x51;
    /// Request device identification.
    pub const DEVICE_ID: u8 = 0x52;
    /// Request realtime configuration.
    pub const REALTIME_CONFIG: u8 = 0x53;
    /// Configure realtime transmission.
    pub const CONFIGURE_REALTIME: u8 = 0x54;
    /// Realtime configuration changed (device → host).
    pub const REALTIME_CONFIG_CHANGED: u8 = 0x56;
    /// Stop communication.
    pub const STOP: u8 = 0x55;
}

#[cfg(test)]
mod realtime_tests;
#[cfg(test)]
mod tests;
