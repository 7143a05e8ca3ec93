//! Adapters from the pure serial codecs of `icu_drivers` to the serial transport.
//!
//! Owns: turning codec events into [`SerialAction`]s. Masimo ASCII 1 is listen-only: each line
//! becomes observations, and its ALARM/EXC bit fields become device conditions raised when a
//! bit sets and cleared when it clears. Dräger MEDIBUS is driven by the gateway: the session
//! state machine polls, keeps the link alive and re-initialises; measured data (with the last
//! known alarm limits) becomes observations and the ventilator's alarm list becomes conditions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use icu_drivers::masimo::{self, MasimoCodec, MasimoEvent};
use icu_drivers::medibus::{
    self, Action, MedibusCodec, MedibusData, MedibusEvent, MedibusLimits, MedibusSession,
    SessionTimings,
};
use icu_drivers::terminology::Terminology;
use tokio_util::codec::Decoder;

use crate::device::DeviceCondition;
use crate::domain::{Device, Protocol};
use crate::serial::{SerialAction, SerialProtocol};

/// The adapter for a configured serial device.
pub fn for_device(device: &Device, terminology: Arc<Terminology>) -> Box<dyn SerialProtocol> {
    match device.protocol {
        Protocol::Medibus => Box::new(MedibusAdapter::new(terminology)),
        _ => Box::new(MasimoAdapter::new(terminology)),
    }
}

/// Raises and clears conditions as a set of active ones changes.
#[derive(Default)]
struct Conditions {
    active: BTreeMap<String, (String, String, String)>,
}

impl Conditions {
    /// `now`: the full set of active conditions `(id, text, priority, alert type)`.
    fn update(
        &mut self,
        now: Vec<(String, String, String, String)>,
        time_us: i64,
    ) -> Vec<SerialAction> {
        let mut out = Vec::new();
        let next: BTreeMap<String, (String, String, String)> = now
            .into_iter()
            .map(|(id, text, prio, kind)| (id, (text, prio, kind)))
            .collect();
        for (id, (text, priority, alert_type)) in &self.active {
            if !next.contains_key(id) {
                out.push(SerialAction::Condition(DeviceCondition {
                    id: id.clone(),
                    text: text.clone(),
                    priority: priority.clone(),
                    alert_type: alert_type.clone(),
                    active: false,
                    time_us,
                }));
            }
        }
        for (id, (text, priority, alert_type)) in &next {
            if !self.active.contains_key(id) {
                out.push(SerialAction::Condition(DeviceCondition {
                    id: id.clone(),
                    text: text.clone(),
                    priority: priority.clone(),
                    alert_type: alert_type.clone(),
                    active: true,
                    time_us,
                }));
            }
        }
        self.active = next;
        out
    }
}

pub struct MasimoAdapter {
    codec: MasimoCodec,
    terminology: Arc<Terminology>,
    conditions: Conditions,
}

impl MasimoAdapter {
    pub fn new(terminology: Arc<Terminology>) -> Self {
        Self {
            codec: MasimoCodec::default(),
            terminology,
            conditions: Conditions::default(),
        }
    }
}

impl SerialProtocol for MasimoAdapter {
    fn on_open(&mut self, _now_us: i64) -> Vec<SerialAction> {
        // A new line: forget a partial line from the old one.
        self.codec = MasimoCodec::default();
        Vec::new()
    }

    fn on_bytes(&mut self, buf: &mut BytesMut, now_us: i64) -> Vec<SerialAction> {
        let mut out = Vec::new();
        loop {
            match self.codec.decode(buf) {
                Ok(Some(MasimoEvent::Line(record))) => {
                    let obs = masimo::to_observations(&record, now_us, &self.terminology);
                    if !obs.is_empty() {
                        out.push(SerialAction::Observations(obs));
                    }
                    let mut active: Vec<(String, String, String, String)> = record
                        .technical_conditions()
                        .into_iter()
                        .map(|c| {
                            (
                                format!("masimo:exc:{}", c.code),
                                c.text.to_owned(),
                                c.priority.code().to_owned(),
                                "ST".to_owned(),
                            )
                        })
                        .collect();
                    active.extend(record.alarms().into_iter().map(|a| {
                        (
                            format!("masimo:alarm:{}", a.code),
                            a.text.to_owned(),
                            a.priority.code().to_owned(),
                            "SP".to_owned(),
                        )
                    }));
                    out.extend(self.conditions.update(active, now_us));
                }
                Ok(Some(MasimoEvent::Invalid {
                    offset,
                    line,
                    reason,
                })) => out.push(SerialAction::Reject {
                    offset,
                    len: line.len(),
                    reason: reason.to_string(),
                    raw: line.into_bytes(),
                }),
                Ok(Some(MasimoEvent::Oversized { offset, len })) => {
                    out.push(SerialAction::Reject {
                        offset,
                        len,
                        reason: format!("line of {len} bytes exceeds the Masimo line limit"),
                        raw: Vec::new(),
                    })
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(SerialAction::Lost(format!("masimo decoder: {e}")));
                    break;
                }
            }
        }
        out
    }

    fn on_tick(&mut self, _now_us: i64) -> Vec<SerialAction> {
        Vec::new()
    }

    fn name(&self) -> &'static str {
        "masimo"
    }
}

pub struct MedibusAdapter {
    codec: MedibusCodec,
    session: MedibusSession,
    limits: MedibusLimits,
    terminology: Arc<Terminology>,
    conditions: Conditions,
}

impl MedibusAdapter {
    pub fn new(terminology: Arc<Terminology>) -> Self {
        Self {
            codec: MedibusCodec::new(medibus::DEFAULT_MAX_FRAME_BYTES),
            session: MedibusSession::new(SessionTimings::default()),
            limits: MedibusLimits::default(),
            terminology,
            conditions: Conditions::default(),
        }
    }

    fn actions(&mut self, actions: Vec<Action>, now_us: i64) -> Vec<SerialAction> {
        let mut out = Vec::new();
        for a in actions {
            match a {
                Action::Send(bytes) => out.push(SerialAction::Write(bytes)),
                Action::Connected(identity) => {
                    tracing::info!(identity = ?identity, "medibus device identified");
                    out.push(SerialAction::Up);
                }
                Action::Reinit { reason } => out.push(SerialAction::Lost(format!(
                    "medibus re-initialising: {reason:?}"
                ))),
                Action::BadPayload { .. } => out.push(SerialAction::Reject {
                    offset: self.codec.stream_offset(),
                    len: 0,
                    reason: format!("{a:?}"),
                    raw: Vec::new(),
                }),
                Action::Data(MedibusData::Measured(values)) => {
                    let obs = medibus::medibus_to_observations(
                        &values,
                        &self.limits,
                        None,
                        now_us,
                        &self.terminology,
                    );
                    if !obs.is_empty() {
                        out.push(SerialAction::Observations(obs));
                    }
                }
                Action::Data(MedibusData::LowLimits(v)) => self.limits.update_low(&v),
                Action::Data(MedibusData::HighLimits(v)) => self.limits.update_high(&v),
                Action::Data(MedibusData::Alarms(alarms)) => {
                    let active = alarms
                        .into_iter()
                        .map(|a| {
                            let priority = match a.priority {
                                25..=31 => "PH",
                                11..=24 => "PM",
                                _ => "PL",
                            };
                            (
                                format!("medibus:alarm:{:02X}", a.code),
                                a.phrase,
                                priority.to_owned(),
                                "SP".to_owned(),
                            )
                        })
                        .collect();
                    out.extend(self.conditions.update(active, now_us));
                }
                Action::Data(MedibusData::Settings(values)) => {
                    let obs = medibus::medibus_settings_to_observations(
                        &values,
                        None,
                        now_us,
                        &self.terminology,
                    );
                    if !obs.is_empty() {
                        out.push(SerialAction::Observations(obs));
                    }
                }
                Action::Data(MedibusData::Text(_)) => {}
                // Realtime curves are not requested by this adapter yet (issue 19: the
                // waveform ingest is a later step), so the session never reports them.
                Action::Realtime(_) => {}
            }
        }
        out
    }
}

impl SerialProtocol for MedibusAdapter {
    fn on_open(&mut self, now_us: i64) -> Vec<SerialAction> {
        self.codec = MedibusCodec::new(medibus::DEFAULT_MAX_FRAME_BYTES);
        self.session = MedibusSession::new(SessionTimings::default());
        let actions = self.session.on_tick(Instant::now());
        self.actions(actions, now_us)
    }

    fn on_bytes(&mut self, buf: &mut BytesMut, now_us: i64) -> Vec<SerialAction> {
        let mut out = Vec::new();
        loop {
            match self.codec.decode(buf) {
                Ok(Some(event)) => {
                    if let MedibusEvent::Corrupt { offset, reason } = &event {
                        out.push(SerialAction::Reject {
                            offset: *offset,
                            len: 0,
                            reason: reason.to_string(),
                            raw: Vec::new(),
                        });
                    }
                    if let MedibusEvent::Garbage { offset, len } = &event {
                        out.push(SerialAction::Reject {
                            offset: *offset,
                            len: *len,
                            reason: format!("{len} bytes outside a MEDIBUS frame"),
                            raw: Vec::new(),
                        });
                    }
                    let actions = self.session.on_event(&event, Instant::now());
                    out.extend(self.actions(actions, now_us));
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(SerialAction::Lost(format!("medibus decoder: {e}")));
                    break;
                }
            }
        }
        out
    }

    fn on_tick(&mut self, now_us: i64) -> Vec<SerialAction> {
        let actions = self.session.on_tick(Instant::now());
        self.actions(actions, now_us)
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(100)
    }

    fn name(&self) -> &'static str {
        "medibus"
    }
}
