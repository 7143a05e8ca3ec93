//! The device side of a MEDIBUS link, for the simulator: pure, answers commands from supplied
//! values.
//!
//! Until it receives ICC the device answers nothing but ICC (a real device ignores requests on an
//! uninitialised link); after STOP it is uninitialised again. Device-side link time-outs are
//! not simulated here. Realtime: it answers `S` with [`MedibusDevice::realtime_offer`], keeps the
//! curves a `T` asks for, and follows the host's enable sync commands
//! ([`MedibusDevice::on_realtime_frame`]); [`MedibusDevice::realtime_streams`] says which
//! streams to send (the caller makes the frames with [`super::realtime::encode_frame`]).

use super::commands;
use super::frame::{encode_response, FrameKind, MedibusFrame};
use super::payload::{
    encode_alarms, encode_identity, encode_measured, encode_settings, encode_text_messages,
    DeviceIdentity, MedibusAlarm, MedibusText, MedibusValue,
};
use super::realtime::RealtimeFrame;
use super::realtime_config::{
    encode_realtime_config, parse_configure_realtime, RealtimeConfig, RealtimeRequest,
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
    /// The curves it offers (answer to `S`).
    pub realtime_offer: Vec<RealtimeConfig>,
    realtime_requested: Vec<RealtimeRequest>,
    realtime_enabled: u16,
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
            realtime_offer: Vec::new(),
            realtime_requested: Vec::new(),
            realtime_enabled: 0,
            initialised: false,
        }
    }

    /// Applies the host's enable sync commands (`C1`–`C3`) found in a realtime frame.
    pub fn on_realtime_frame(&mut self, frame: &RealtimeFrame) {
        if let Some((named, bits)) = frame.enabled_streams() {
            self.realtime_enabled = (self.realtime_enabled & !named) | bits;
        }
    }

    /// The streams to send now: (stream number, curve), for each stream the last `T` asked for,
    /// that is offered and enabled.
    pub fn realtime_streams(&self) -> Vec<(u8, RealtimeConfig)> {
        if !self.initialised {
            return Vec::new();
        }
        self.realtime_requested
            .iter()
            .enumerate()
            .filter(|(i, _)| self.realtime_enabled & (1 << i) != 0)
            .filter_map(|(i, req)| {
                let offer = self.realtime_offer.iter().find(|c| c.code == req.code)?;
                Some((i as u8 + 1, *offer))
            })
            .collect()
    }

    fn reset_realtime(&mut self) {
        self.realtime_requested.clear();
        self.realtime_enabled = 0;
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
            self.reset_realtime();
            return vec![encode_response(code, &[])];
        }
        if !self.initialised {
            return Vec::new();
        }
        let data = match code {
            commands::STOP => {
                self.initialised = false;
                self.reset_realtime();
                Vec::new()
            }
            commands::REALTIME_CONFIG => encode_realtime_config(&self.realtime_offer),
            commands::CONFIGURE_REALTIME => match parse_configure_realtime(&frame.data) {
                Ok(requested) => {
                    self.realtime_requested = requested;
                    self.realtime_enabled = 0;
                    Vec::new()
                }
                Err(_) => return vec![encode_response(commands::NAK_CORRUPT, &[])],
            },
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
