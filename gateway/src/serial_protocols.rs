//! Adapters from the pure serial codecs of `icu_drivers` to the serial transport.
//!
//! Owns: turning codec events into [`SerialAction`]s. Masimo ASCII 1 is listen-only: each line
//! becomes observations, and its ALARM/EXC bit fields become device conditions raised when a
//! bit sets and cleared when it clears. Dräger MEDIBUS is driven by the gateway: the session
//! state machine polls, keeps the link alive and re-initialises; measured data (with the last
//! known alarm limits) becomes observations and the ventilator's alarm list becomes conditions.
//!
//! MEDIBUS realtime curves (issue 19), only for a device with `realtime = [...]`: the session
//! sets them up behind the slow protocol and the adapter hands their runs to the device actor as
//! waveform segments (at most [`REALTIME_SEGMENT_SAMPLES`] positions each, gaps where a frame was
//! bad). MEDIBUS realtime frames carry no checksum: what stands for "a realtime frame with a bad
//! checksum" is a frame that is not "sync byte, sync commands, one two-byte sample per announced
//! stream" (a stray byte, half a sample, a wrong sample count) or one the device marks corrupt
//! (`CF`). Each is a gap in its streams and is dead-lettered with the device and the stream
//! offset of its sync byte (the first at once, then at most one dead letter a second naming the
//! count and the first fault, so a noisy line cannot flood the store), with a log line; the slow protocol never sees those bytes and polls on. The
//! realtime configuration (`S` answer) does have the slow protocol's checksum: a bad checksum
//! there is a corrupt slow frame (re-initialise), an unreadable configuration is dead-lettered
//! and realtime is asked for again after the session's backoff. Restarts of the realtime part
//! (device said `V`, stream silent, refusal) are logged; the slow link stays up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use icu_drivers::masimo::{self, MasimoCodec, MasimoEvent};
use icu_drivers::medibus::{
    self, Action, MedibusCodec, MedibusData, MedibusEvent, MedibusLimits, MedibusSession,
    RealtimeEvent, RealtimeRequest, RealtimeSettings, SampleByteOrder, SessionTimings,
};
use icu_drivers::terminology::Terminology;
use icu_protos::v1::WaveformSegment;
use tokio_util::codec::Decoder;

use crate::device::DeviceCondition;
use crate::domain::{Device, Protocol};
use crate::serial::{SerialAction, SerialProtocol};

/// Positions per MEDIBUS realtime segment handed to the device actor: 1 s at the usual 125 Hz
/// (8 ms interval), 0.25 s at 500 Hz.
pub const REALTIME_SEGMENT_SAMPLES: usize = 125;

/// The adapter for a configured serial device.
pub fn for_device(device: &Device, terminology: Arc<Terminology>) -> Box<dyn SerialProtocol> {
    match device.protocol {
        Protocol::Medibus => {
            let curves = device
                .serial
                .as_ref()
                .map(|s| s.realtime.clone())
                .unwrap_or_default();
            Box::new(MedibusAdapter::new(terminology).with_realtime(&curves))
        }
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
    /// Set when the device's config asks for realtime curves.
    realtime: Option<RealtimeSettings>,
    /// Bad realtime frames not dead-lettered yet: (offset of the first, its fault, count).
    bad_frames: Option<(u64, String, usize)>,
    /// When the last realtime dead letter was written (at most one a second).
    last_bad_letter: Option<Instant>,
}

impl MedibusAdapter {
    pub fn new(terminology: Arc<Terminology>) -> Self {
        Self {
            codec: MedibusCodec::new(medibus::DEFAULT_MAX_FRAME_BYTES),
            session: MedibusSession::new(SessionTimings::default()),
            limits: MedibusLimits::default(),
            terminology,
            conditions: Conditions::default(),
            realtime: None,
            bad_frames: None,
            last_bad_letter: None,
        }
    }

    /// Also receives the realtime curves of `codes` (Dräger realtime codes, stream order);
    /// none: the adapter is exactly the slow-protocol one.
    pub fn with_realtime(mut self, codes: &[u8]) -> Self {
        if !codes.is_empty() {
            let mut settings = RealtimeSettings::ventilator();
            settings.streams = codes
                .iter()
                .map(|&code| RealtimeRequest {
                    code,
                    multiplier: 1,
                })
                .collect();
            settings.run_len = REALTIME_SEGMENT_SAMPLES;
            self.realtime = Some(settings);
        }
        self.open_line();
        self
    }

    /// A fresh codec and session for a (re)opened line.
    fn open_line(&mut self) {
        self.codec = MedibusCodec::new(medibus::DEFAULT_MAX_FRAME_BYTES);
        self.session = match &self.realtime {
            Some(settings) => {
                // UNCONFIRMED sample byte order: the default of the two sources that agree.
                self.codec =
                    std::mem::take(&mut self.codec).with_realtime(SampleByteOrder::LowFirst);
                MedibusSession::with_realtime(SessionTimings::default(), settings.clone())
            }
            None => MedibusSession::new(SessionTimings::default()),
        };
    }

    /// Dead-letters the bad realtime frames seen so far: the first at once, then at most one
    /// letter a second (a noisy line is a few letters naming counts, not one per frame).
    fn bad_frame_letter(&mut self, out: &mut Vec<SerialAction>) {
        let now = Instant::now();
        if self.bad_frames.is_none()
            || self
                .last_bad_letter
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        let Some((offset, fault, n)) = self.bad_frames.take() else {
            return;
        };
        self.last_bad_letter = Some(now);
        let reason = if n == 1 {
            format!("bad MEDIBUS realtime frame at byte {offset}: {fault}; its samples are a gap")
        } else {
            format!(
                "{n} bad MEDIBUS realtime frames from byte {offset} (first: {fault}); their samples are gaps"
            )
        };
        out.push(SerialAction::Reject {
            offset,
            len: 0,
            reason,
            raw: Vec::new(),
        });
    }

    /// Realtime events to serial actions: segments in one [`SerialAction::Waveforms`], bad
    /// frames in dead letters (see [`Self::bad_frame_letter`]).
    fn realtime_events(
        &mut self,
        events: Vec<RealtimeEvent>,
        now_us: i64,
        out: &mut Vec<SerialAction>,
    ) {
        let mut segments: Vec<WaveformSegment> = Vec::new();
        for event in events {
            match event {
                RealtimeEvent::Waveform(run) => {
                    segments.push(medibus::run_to_segment(&run, now_us));
                }
                RealtimeEvent::BadFrame { offset, fault } => match self.bad_frames.as_mut() {
                    Some((_, _, n)) => *n += 1,
                    None => self.bad_frames = Some((offset, fault.to_string(), 1)),
                },
                RealtimeEvent::BadConfig {
                    frame_offset,
                    error,
                } => out.push(SerialAction::Reject {
                    offset: frame_offset,
                    len: 0,
                    reason: format!(
                        "unreadable MEDIBUS realtime configuration (answer to S): {error}; realtime curves off, asked again after a backoff"
                    ),
                    raw: Vec::new(),
                }),
                RealtimeEvent::Offered(offered) => {
                    let codes: Vec<String> =
                        offered.iter().map(|c| format!("{:02X}", c.code)).collect();
                    tracing::info!(offered = %codes.join(","), "medibus realtime curves offered");
                }
                RealtimeEvent::Started(specs) => {
                    let codes: Vec<String> =
                        specs.iter().map(|c| format!("{:02X}", c.code)).collect();
                    tracing::info!(streams = %codes.join(","), "medibus realtime curves started");
                }
                RealtimeEvent::Unavailable(reason) => {
                    tracing::warn!(%reason, "medibus realtime curves unavailable; numerics polled on");
                }
                RealtimeEvent::Restart(reason) => {
                    tracing::warn!(%reason, "medibus realtime curves restarting; slow link kept");
                }
            }
        }
        self.bad_frame_letter(out);
        if !segments.is_empty() {
            for w in &segments {
                tracing::trace!(mdc_code = w.mdc_code, first = %w.source_message_id,
                    positions = w.sample_count, curve = %curve_text(w), "serial curve segment");
            }
            out.push(SerialAction::Waveforms(segments));
        }
    }

    fn actions(&mut self, actions: Vec<Action>, now_us: i64) -> Vec<SerialAction> {
        let mut out = Vec::new();
        let mut realtime = Vec::new();
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
                Action::Realtime(event) => realtime.push(event),
            }
        }
        self.realtime_events(realtime, now_us, &mut out);
        out
    }
}

impl SerialProtocol for MedibusAdapter {
    fn on_open(&mut self, now_us: i64) -> Vec<SerialAction> {
        // The curve samples received on the old line are handed over, not dropped.
        let mut actions = self.session.flush_realtime();
        self.open_line();
        actions.extend(self.session.on_tick(Instant::now()));
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
        let frames = self.codec.take_realtime();
        if !frames.is_empty() {
            let actions = self.session.on_realtime(&frames, Instant::now());
            out.extend(self.actions(actions, now_us));
        }
        out
    }

    fn on_tick(&mut self, now_us: i64) -> Vec<SerialAction> {
        let actions = self.session.on_tick(Instant::now());
        let mut out = self.actions(actions, now_us);
        self.bad_frame_letter(&mut out);
        out
    }

    fn tick(&self) -> Duration {
        Duration::from_millis(100)
    }

    fn name(&self) -> &'static str {
        "medibus"
    }
}

/// A segment's samples as text for the trace log: positions comma-separated, `_` for a gap.
fn curve_text(w: &WaveformSegment) -> String {
    let mut gaps = w.gaps.iter().peekable();
    let mut samples = w.samples.iter();
    let mut out = String::with_capacity(w.sample_count as usize * 5);
    for k in 0..w.sample_count {
        if k > 0 {
            out.push(',');
        }
        while gaps.peek().is_some_and(|g| g.start + g.count <= k) {
            gaps.next();
        }
        if gaps.peek().is_some_and(|g| g.start <= k) {
            out.push('_');
        } else if let Some(v) = samples.next() {
            out.push_str(&v.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use icu_drivers::medibus::{
        encode_corrupt_frame, encode_frame, DeviceIdentity, MedibusDevice, MedibusValue,
        RealtimeConfig, RealtimeScale,
    };

    use super::*;

    /// The adapter against a pure MEDIBUS device until quiet; returns the adapter's actions.
    fn exchange(
        adapter: &mut MedibusAdapter,
        device: &mut MedibusDevice,
        mut actions: Vec<SerialAction>,
    ) -> Vec<SerialAction> {
        let mut all = Vec::new();
        for _ in 0..20 {
            let mut answers = Vec::new();
            for a in &actions {
                if let SerialAction::Write(bytes) = a {
                    let mut buf = BytesMut::from(&bytes[..]);
                    let mut codec = MedibusCodec::default();
                    while let Ok(Some(MedibusEvent::Frame(f))) = codec.decode(&mut buf) {
                        answers.extend(device.on_frame(&f).concat());
                    }
                }
            }
            all.append(&mut actions);
            if answers.is_empty() {
                break;
            }
            actions = adapter.on_bytes(&mut BytesMut::from(&answers[..]), 0);
        }
        all
    }

    #[test]
    fn realtime_runs_become_segments_and_a_burst_of_bad_frames_one_dead_letter() {
        let mut device = MedibusDevice::new(DeviceIdentity {
            device_id: "0161".into(),
            name: "Evita".into(),
            revision: "04.03".into(),
        });
        device.measured = vec![MedibusValue::number(0x7D, 22.0)];
        let scale = RealtimeScale {
            min: -20.0,
            max: 80.0,
            maxbin: 4095,
        };
        device.realtime_offer = [0x00, 0x01, 0x03]
            .map(|code| RealtimeConfig {
                code,
                interval_us: 8000,
                scale,
            })
            .to_vec();
        let mut adapter = MedibusAdapter::new(Terminology::builtin()).with_realtime(&[0x00, 0x03]);
        let opened = adapter.on_open(0);
        exchange(&mut adapter, &mut device, opened);
        let polled = adapter.on_tick(0);
        exchange(&mut adapter, &mut device, polled);

        // Streams 1 and 2 are airway pressure and volume: one run of 125, then bad frames.
        let mut line = Vec::new();
        for k in 0..REALTIME_SEGMENT_SAMPLES as u16 {
            line.extend(encode_frame(
                0b11,
                &[k, 4000 - k],
                None,
                SampleByteOrder::LowFirst,
            ));
        }
        let out = adapter.on_bytes(&mut BytesMut::from(&line[..]), 7);
        let mut burst = Vec::new();
        for _ in 0..5 {
            let mut bad = encode_corrupt_frame(0b11);
            bad.extend(encode_frame(0b11, &[1, 1], None, SampleByteOrder::LowFirst));
            burst.extend(adapter.on_bytes(&mut BytesMut::from(&bad[..]), 8));
        }
        let segments: Vec<&WaveformSegment> = out
            .iter()
            .chain(&burst)
            .filter_map(|a| match a {
                SerialAction::Waveforms(w) => Some(w),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(segments.len(), 2, "one segment per curve: {out:?}");
        assert_eq!(segments[0].mdc_refid, "MDC_PRESS_AWAY");
        assert_eq!(segments[0].samples, (0..125).collect::<Vec<i32>>());
        assert_eq!(segments[1].mdc_refid, "MDC_VOL_AWAY");
        assert_eq!(segments[1].samples[..2], [4000, 3999]);
        // A frame is complete when the next sync byte arrives: the run's last one came with the
        // first bad frame, at 8.
        assert_eq!(segments[0].receive_time_us, 8);
        let letters: Vec<&String> = burst
            .iter()
            .filter_map(|a| match a {
                SerialAction::Reject { reason, .. } => Some(reason),
                _ => None,
            })
            .collect();
        assert_eq!(
            letters.len(),
            1,
            "a burst within a second is one letter: {letters:?}"
        );
        assert!(letters[0].starts_with("bad MEDIBUS realtime frame at byte"));
        // The rest of the burst is counted into the next letter, not dropped.
        assert_eq!(adapter.bad_frames.as_ref().map(|b| b.2), Some(4));
    }
}
