//! The device side of a MEDIBUS link, for the simulator: pure, answers commands from supplied
//! values.
//!
//! Until it receives ICC the device answers nothing but ICC (a real device ignores requests on an
//! uninitialised link); after STOP it is uninitialised again. Device-side link time-outs and
//! realtime data are not simulated here.

use super::commands;
use super::frame::{encode_response, FrameKind, MedibusFrame};
use super::payload::{
    encode_alarms, encode_identity, encode_measured, encode_settings, encode_text_messages,
    DeviceIdentity, MedibusAlarm, MedibusText, MedibusValue,
};

/// A simulated MEDIBUS device. Set the public fields; [`MedibusDevice::on_frame`] answers.
#[derive(Debug, Clone, PartialEq)]
pub struct MedibusDevice {
    pub identity: DeviceIdentity,
    /// Measured data CP1 (answer to `$`).
    pub measured: Vec<MedibusValue>,
    /// Low alarm limits CP1 (answer to `%`).
    pub low_limits: Vec<MedibusValue>,
    /// High alarm limits CP1 (answer to `&`).
    pub high_limits: Vec<MedibusValue>,
    /// Current alarms CP1 (answer to `'`).
    pub alarms: Vec<MedibusAlarm>,
    /// Device settings (answer to `)`).
    pub settings: Vec<MedibusValue>,
    /// Text messages (answer to `*`).
    pub texts: Vec<MedibusText>,
    /// Date/time text (answer to `(`), e.g. `14:30:05 07-OKT-14`.
    pub date_time: String,
    initialised: bool,
}

impl MedibusDevice {
    pub fn new(identity: DeviceIdentity) -> Self {
        Self {
            identity,
            measured: Vec::new(),
            low_limits: Vec::new(),
            high_limits: Vec::new(),
            alarms: Vec::new(),
            settings: Vec::new(),
            texts: Vec::new(),
            date_time: String::new(),
            initialised: false,
        }
    }

    /// Whether the host has initialised the link (ICC received, no STOP since).
    pub fn is_initialised(&self) -> bool {
        self.initialised
    }

    /// The frames to send back for one received frame (empty for responses and, before ICC,
    /// for every command but ICC).
    pub fn on_frame(&mut self, frame: &MedibusFrame) -> Vec<Vec<u8>> {
        if frame.kind != FrameKind::Command {
            return Vec::new();
        }
        let code = frame.code;
        if code == commands::ICC {
            self.initialised = true;
            return vec![encode_response(code, &[])];
        }
        if !self.initialised {
            return Vec::new();
        }
        let data = match code {
            commands::STOP => {
                self.initialised = false;
                Vec::new()
            }
            commands::DEVICE_ID => encode_identity(&self.identity),
            commands::MEASURED_CP1 => encode_measured(&self.measured),
            commands::LOW_LIMITS_CP1 => encode_measured(&self.low_limits),
            commands::HIGH_LIMITS_CP1 => encode_measured(&self.high_limits),
            commands::ALARMS_CP1 => encode_alarms(&self.alarms),
            commands::DEVICE_SETTINGS => encode_settings(&self.settings),
            commands::TEXT_MESSAGES => encode_text_messages(&self.texts),
            commands::DATE_TIME => self
                .date_time
                .bytes()
                .filter(|b| (0x20..0x7F).contains(b))
                .collect(),
            // NOP, configure, time changed and anything unknown: echo without data.
            _ => Vec::new(),
        };
        vec![encode_response(code, &data)]
    }
}
