//! The gateway side of a MEDIBUS link: a pure, time-injected polling state machine.
//!
//! ```text
//! Disconnected ──tick: send ICC──▶ Initialising ──SOH Q: send ESC R──▶ Identifying
//!      ▲                             │ no answer for icc_retry: send ICC again
//!      │                             ▼
//!      └── Reinit (sends ICC) ◀── Polling ◀──SOH R (Connected)──┘
//! ```
//!
//! Rules (protocols.md §1.5):
//! - One request in flight. A poll cycle is measured data CP1 → low limits → high limits →
//!   alarms CP1 → settings → text messages; each request is sent when the previous one is
//!   answered. A new cycle starts `poll_interval` after the previous one started.
//! - Keep-alive: when connected, nothing is in flight and nothing was sent for `keep_alive`, send
//!   NOP (the device drops the link after 3 s without traffic).
//! - Re-initialise (emit [`Action::Reinit`] and send ICC) on: 3 s without any byte from the
//!   device, no answer within `response_timeout`, a corrupt frame, a device-sent ICC or STOP, or an
//!   unreadable identification.
//! - Every command the device sends is echoed with a response of the same code and no data.
//! - Responses that match nothing in flight are ignored and counted.
//!
//! Realtime curves (only with [`MedibusSession::with_realtime`]; off, the session behaves
//! exactly as without them):
//! - Once identified, before the first poll cycle: request the realtime configuration (`S`),
//!   ask with `T` for the configured curves the device offers (stream order = the settings'
//!   order, curves it does not offer left out), and when `T` is answered send the sync bytes
//!   that enable those streams. A NAK or an unreadable answer leaves realtime off for the
//!   backoff below (or until the next re-initialisation); polling goes on.
//! - The device's "realtime configuration changed" (`V`) and `silence_timeout` without any
//!   realtime frame while streaming both set realtime up again the same way, between poll
//!   cycles (the realtime part's own reconnect; the slow link is not touched). With backoff:
//!   each set-up that brings no frame doubles the silence allowed before the next one (up to
//!   [`REALTIME_MAX_BACKOFF`]); a frame resets it. A refusal (NAK, unreadable configuration,
//!   none of the curves offered) is retried after the same backoff, never in a tight loop.
//! - Realtime frames ([`MedibusSession::on_realtime`]) become [`RealtimeEvent::Waveform`] runs
//!   per stream; a bad frame is a gap in them and a [`RealtimeEvent::BadFrame`] to dead-letter.
//!
//! The session never reads a clock: the transport passes `now` to [`MedibusSession::on_event`]
//! and calls [`MedibusSession::on_tick`] at least every 100 ms (or at
//! [`MedibusSession::next_deadline`]).

use std::time::{Duration, Instant};

use super::commands;
use super::frame::{encode_command, encode_response, FrameKind, MedibusEvent, MedibusFrame};
use super::payload::{
    parse_alarms, parse_identity, parse_measured, parse_settings, parse_text_messages,
    DeviceIdentity, MedibusAlarm, MedibusText, MedibusValue, PayloadError,
};
use super::realtime::{encode_enable, RealtimeFault, RealtimeFrame};
use super::realtime_config::{
    encode_configure_realtime, parse_realtime_config, IntervalUnit, RealtimeConfig, RealtimeRequest,
};
use super::waveform::{StreamSpec, WaveformAssembler, WaveformRun};

/// The device drops the link after this long without traffic (protocols.md §1.5 fact 3).
pub const LINK_TIMEOUT: Duration = Duration::from_secs(3);
/// ICC is repeated after this long without its echo.
pub const ICC_RETRY: Duration = Duration::from_secs(2);

/// Longest wait between two set-ups of a realtime stream that stays silent or refused.
pub const REALTIME_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The slow requests of one poll cycle, in order.
pub const POLL_CYCLE: [u8; 6] = [
    commands::MEASURED_CP1,
    commands::LOW_LIMITS_CP1,
    commands::HIGH_LIMITS_CP1,
    commands::ALARMS_CP1,
    commands::DEVICE_SETTINGS,
    commands::TEXT_MESSAGES,
];

/// Timing of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimings {
    pub keep_alive: Duration,
    pub response_timeout: Duration,
    pub poll_interval: Duration,
    pub link_timeout: Duration,
    pub icc_retry: Duration,
}

impl Default for SessionTimings {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_millis(1000),
            response_timeout: Duration::from_millis(5000),
            poll_interval: Duration::from_millis(1000),
            link_timeout: LINK_TIMEOUT,
            icc_retry: ICC_RETRY,
        }
    }
}

/// What the session asks of a device's realtime curves.
#[derive(Debug, Clone, PartialEq)]
pub struct RealtimeSettings {
    /// The curves wanted, in stream order.
    pub streams: Vec<RealtimeRequest>,
    /// Unit of the configuration's interval field (UNCONFIRMED; see `realtime_config`).
    pub interval_unit: IntervalUnit,
    /// Streaming without a realtime frame for this long sets realtime up again (UNCONFIRMED
    /// cadence: the slow link's 3 s).
    pub silence_timeout: Duration,
    /// Samples per [`WaveformRun`] handed over.
    pub run_len: usize,
}

impl RealtimeSettings {
    /// Airway pressure (0x00), flow (0x01) and volume since inspiration began (0x03), as
    /// OpenICE's default ventilator curves; multiplier 1.
    pub fn ventilator() -> Self {
        Self {
            streams: [0x00, 0x01, 0x03]
                .into_iter()
                .map(|code| RealtimeRequest {
                    code,
                    multiplier: 1,
                })
                .collect(),
            interval_unit: IntervalUnit::Microseconds,
            silence_timeout: LINK_TIMEOUT,
            run_len: 128,
        }
    }
}

/// What happened to the realtime curves.
#[derive(Debug, Clone, PartialEq)]
pub enum RealtimeEvent {
    /// The device's realtime configuration (answer to `S`).
    Offered(Vec<RealtimeConfig>),
    /// Transmission configured and the streams enabled.
    Started(Vec<StreamSpec>),
    /// Samples of one stream.
    Waveform(WaveformRun),
    /// A realtime frame that was not well formed (its streams got a gap).
    BadFrame { offset: u64, fault: RealtimeFault },
    /// The realtime configuration could not be read (realtime stays off).
    BadConfig {
        frame_offset: u64,
        error: PayloadError,
    },
    /// Realtime is off; asked for again after the backoff (or at the next re-initialisation).
    Unavailable(String),
    /// Realtime is set up again (the device changed its configuration, or went silent).
    Restart(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RtPhase {
    /// Not connected.
    Idle,
    /// `S` to be sent when nothing is in flight.
    Wanted,
    AwaitConfig,
    AwaitConfigure,
    Streaming {
        since: Instant,
    },
    /// Refused at `since`: asked again after the backoff.
    Unavailable {
        since: Instant,
    },
}

#[derive(Debug)]
struct RealtimeLink {
    settings: RealtimeSettings,
    phase: RtPhase,
    specs: Vec<StreamSpec>,
    assembler: Option<WaveformAssembler>,
    last_frame: Option<Instant>,
    /// Set-ups in a row that brought no frame (the backoff's exponent).
    failures: u32,
}

impl RealtimeLink {
    /// How long a silent stream or a refusal waits before the next set-up.
    fn backoff(&self) -> Duration {
        let base = self.settings.silence_timeout;
        base.saturating_mul(1u32 << self.failures.min(8))
            .min(REALTIME_MAX_BACKOFF.max(base))
    }

    /// Hands over the unfinished runs and stops mapping frames.
    fn stop(&mut self, actions: &mut Vec<Action>) {
        if let Some(mut asm) = self.assembler.take() {
            asm.flush();
            for run in asm.take_runs() {
                actions.push(Action::Realtime(RealtimeEvent::Waveform(run)));
            }
        }
    }
}

/// Decoded data of one response.
#[derive(Debug, Clone, PartialEq)]
pub enum MedibusData {
    Measured(Vec<MedibusValue>),
    LowLimits(Vec<MedibusValue>),
    HighLimits(Vec<MedibusValue>),
    Alarms(Vec<MedibusAlarm>),
    Settings(Vec<MedibusValue>),
    Text(Vec<MedibusText>),
}

/// Why the session went back to initialisation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReinitReason {
    #[error("nothing received from the device for {0:?}")]
    Silence(Duration),
    #[error("no answer to command 0x{code:02X} within {after:?}")]
    ResponseTimeout { code: u8, after: Duration },
    #[error("corrupt frame: {0}")]
    Corrupt(String),
    #[error("the device re-initialised the link (sent ICC)")]
    DeviceIcc,
    #[error("the device stopped communication (sent STOP)")]
    DeviceStop,
    #[error("unreadable device identification: {0}")]
    BadIdentity(PayloadError),
}

/// What the transport must do (in order).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write these bytes to the port.
    Send(Vec<u8>),
    /// Data decoded from a poll response.
    Data(MedibusData),
    /// The link went back to initialisation (a technical condition to report).
    Reinit { reason: ReinitReason },
    /// The device identified itself: the link is up and polling starts.
    Connected(DeviceIdentity),
    /// A response whose data could not be parsed (dead-letter it); polling goes on.
    BadPayload {
        code: u8,
        frame_offset: u64,
        error: PayloadError,
    },
    /// Realtime curves (only with [`MedibusSession::with_realtime`]).
    Realtime(RealtimeEvent),
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Disconnected,
    /// ICC sent, waiting for its echo.
    Initialising,
    /// Identification requested.
    Identifying,
    /// Connected and polling.
    Polling,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    code: u8,
    sent_at: Instant,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub reinits: u64,
    pub unexpected_responses: u64,
    pub echoed_commands: u64,
    pub bad_payloads: u64,
    /// Realtime set up again after `V` or silence.
    pub realtime_restarts: u64,
    /// Realtime frames that arrived while no transmission was configured.
    pub realtime_ignored_frames: u64,
}

/// The gateway's MEDIBUS session (see module docs).
#[derive(Debug)]
pub struct MedibusSession {
    timings: SessionTimings,
    state: SessionState,
    in_flight: Option<InFlight>,
    last_sent: Option<Instant>,
    last_received: Option<Instant>,
    /// Index in [`POLL_CYCLE`] of the request in flight, while a cycle runs.
    cycle_pos: Option<usize>,
    cycle_started: Option<Instant>,
    identity: Option<DeviceIdentity>,
    stats: SessionStats,
    realtime: Option<RealtimeLink>,
}

impl MedibusSession {
    pub fn new(timings: SessionTimings) -> Self {
        Self {
            timings,
            state: SessionState::Disconnected,
            in_flight: None,
            last_sent: None,
            last_received: None,
            cycle_pos: None,
            cycle_started: None,
            identity: None,
            stats: SessionStats::default(),
            realtime: None,
        }
    }

    /// A session that also sets up and decodes the device's realtime curves.
    pub fn with_realtime(timings: SessionTimings, settings: RealtimeSettings) -> Self {
        let mut session = Self::new(timings);
        session.realtime = Some(RealtimeLink {
            settings,
            phase: RtPhase::Idle,
            specs: Vec::new(),
            assembler: None,
            last_frame: None,
            failures: 0,
        });
        session
    }

    /// The streams being received, when realtime is streaming.
    pub fn realtime_streams(&self) -> &[StreamSpec] {
        match &self.realtime {
            Some(rt) if matches!(rt.phase, RtPhase::Streaming { .. }) => &rt.specs,
            _ => &[],
        }
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    /// The identification of the connected device.
    pub fn identity(&self) -> Option<&DeviceIdentity> {
        self.identity.as_ref()
    }

    /// The code of the command waiting for its answer.
    pub fn in_flight(&self) -> Option<u8> {
        self.in_flight.map(|f| f.code)
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The latest time by which [`Self::on_tick`] must be called for the timers to be exact.
    pub fn next_deadline(&self) -> Option<Instant> {
        let t = &self.timings;
        let mut deadlines = Vec::new();
        match self.state {
            SessionState::Disconnected => return None,
            SessionState::Initialising => {
                deadlines.extend(self.in_flight.map(|f| f.sent_at + t.icc_retry));
            }
            SessionState::Identifying | SessionState::Polling => {
                deadlines.extend(self.last_received.map(|r| r + t.link_timeout));
                deadlines.extend(self.in_flight.map(|f| f.sent_at + t.response_timeout));
                if self.state == SessionState::Polling && self.in_flight.is_none() {
                    deadlines.extend(self.cycle_started.map(|s| s + t.poll_interval));
                    deadlines.extend(self.last_sent.map(|s| s + t.keep_alive));
                }
                if let Some(rt) = &self.realtime {
                    match rt.phase {
                        RtPhase::Streaming { since } => {
                            let last = rt.last_frame.map_or(since, |l| l.max(since));
                            deadlines.push(last + rt.backoff());
                        }
                        RtPhase::Unavailable { since } => deadlines.push(since + rt.backoff()),
                        _ => {}
                    }
                }
            }
        }
        deadlines.into_iter().min()
    }

    fn send(&mut self, code: u8, now: Instant, actions: &mut Vec<Action>) {
        self.send_args(code, &[], now, actions);
    }

    fn send_args(&mut self, code: u8, args: &[u8], now: Instant, actions: &mut Vec<Action>) {
        actions.push(Action::Send(encode_command(code, args)));
        self.in_flight = Some(InFlight { code, sent_at: now });
        self.last_sent = Some(now);
    }

    fn reinit(&mut self, reason: ReinitReason, now: Instant, actions: &mut Vec<Action>) {
        if let Some(rt) = self.realtime.as_mut() {
            rt.stop(actions);
            rt.phase = RtPhase::Idle;
        }
        self.stats.reinits += 1;
        self.identity = None;
        self.cycle_pos = None;
        self.cycle_started = None;
        self.last_received = None;
        actions.push(Action::Reinit { reason });
        self.state = SessionState::Initialising;
        self.send(commands::ICC, now, actions);
    }

    fn start_cycle(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.cycle_started = Some(now);
        self.cycle_pos = Some(0);
        self.send(POLL_CYCLE[0], now, actions);
    }

    /// Advances the timers.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let t = self.timings;
        let elapsed = |since: Option<Instant>, limit: Duration| {
            since.is_some_and(|s| now.saturating_duration_since(s) >= limit)
        };
        match self.state {
            SessionState::Disconnected => {
                self.state = SessionState::Initialising;
                self.send(commands::ICC, now, &mut actions);
            }
            SessionState::Initialising => {
                if elapsed(self.in_flight.map(|f| f.sent_at), t.icc_retry) {
                    self.send(commands::ICC, now, &mut actions);
                }
            }
            SessionState::Identifying | SessionState::Polling => {
                if elapsed(self.last_received, t.link_timeout) {
                    self.reinit(ReinitReason::Silence(t.link_timeout), now, &mut actions);
                } else if let Some(f) = self
                    .in_flight
                    .filter(|f| elapsed(Some(f.sent_at), t.response_timeout))
                {
                    let reason = ReinitReason::ResponseTimeout {
                        code: f.code,
                        after: t.response_timeout,
                    };
                    self.reinit(reason, now, &mut actions);
                } else if self.state == SessionState::Polling && self.in_flight.is_none() {
                    self.realtime_silence(now, &mut actions);
                    if self.realtime_wanted() {
                        self.request_realtime_config(now, &mut actions);
                    } else if self.cycle_started.is_none()
                        || elapsed(self.cycle_started, t.poll_interval)
                    {
                        self.start_cycle(now, &mut actions);
                    } else if elapsed(self.last_sent, t.keep_alive) {
                        self.send(commands::NOP, now, &mut actions);
                    }
                }
            }
        }
        actions
    }

    /// Handles one decoder event.
    pub fn on_event(&mut self, event: &MedibusEvent, now: Instant) -> Vec<Action> {
        match event {
            MedibusEvent::Frame(frame) => self.on_frame(frame, now),
            MedibusEvent::Corrupt { reason, .. } => self.on_corrupt(reason.to_string(), now),
            MedibusEvent::Garbage { .. } => Vec::new(),
        }
    }

    /// A corrupt frame: re-initialise once connected (while initialising, the ICC retry timer
    /// handles it).
    pub fn on_corrupt(&mut self, reason: String, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if matches!(
            self.state,
            SessionState::Identifying | SessionState::Polling
        ) {
            self.reinit(ReinitReason::Corrupt(reason), now, &mut actions);
        }
        actions
    }

    /// Handles one frame from the device.
    pub fn on_frame(&mut self, frame: &MedibusFrame, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.last_received = Some(now);
        match frame.kind {
            FrameKind::Command => self.on_command(frame, now, &mut actions),
            FrameKind::Response => self.on_response(frame, now, &mut actions),
        }
        actions
    }

    fn on_command(&mut self, frame: &MedibusFrame, now: Instant, actions: &mut Vec<Action>) {
        self.stats.echoed_commands += 1;
        actions.push(Action::Send(encode_response(frame.code, &[])));
        self.last_sent = Some(now);
        let connected = matches!(
            self.state,
            SessionState::Identifying | SessionState::Polling
        );
        match frame.code {
            commands::ICC if connected => self.reinit(ReinitReason::DeviceIcc, now, actions),
            commands::STOP if connected => self.reinit(ReinitReason::DeviceStop, now, actions),
            commands::REALTIME_CONFIG_CHANGED if self.state == SessionState::Polling => {
                if let Some(rt) = self.realtime.as_mut() {
                    rt.stop(actions);
                    rt.phase = RtPhase::Wanted;
                    self.stats.realtime_restarts += 1;
                    actions.push(Action::Realtime(RealtimeEvent::Restart(
                        "the device changed its realtime configuration".into(),
                    )));
                }
            }
            _ => {}
        }
    }

    fn on_response(&mut self, frame: &MedibusFrame, now: Instant, actions: &mut Vec<Action>) {
        let expected = self.in_flight.map(|f| f.code);
        let answered = expected == Some(frame.code)
            || (expected.is_some() && frame.code == commands::NAK_CORRUPT);
        if !answered {
            self.stats.unexpected_responses += 1;
            return;
        }
        self.in_flight = None;
        match self.state {
            SessionState::Disconnected => {}
            SessionState::Initialising => {
                if frame.code == commands::ICC {
                    self.state = SessionState::Identifying;
                    self.send(commands::DEVICE_ID, now, actions);
                } else {
                    // Our ICC was refused: retry on the timer.
                    self.in_flight = Some(InFlight {
                        code: commands::ICC,
                        sent_at: self.last_sent.unwrap_or(now),
                    });
                }
            }
            SessionState::Identifying => match parse_identity(&frame.data) {
                Ok(identity) if frame.code == commands::DEVICE_ID => {
                    self.identity = Some(identity.clone());
                    self.state = SessionState::Polling;
                    actions.push(Action::Connected(identity));
                    if let Some(rt) = self.realtime.as_mut() {
                        rt.phase = RtPhase::Wanted;
                        self.request_realtime_config(now, actions);
                    } else {
                        self.start_cycle(now, actions);
                    }
                }
                Ok(_) => self.reinit(
                    ReinitReason::Corrupt("the device refused the identification request".into()),
                    now,
                    actions,
                ),
                Err(e) => self.reinit(ReinitReason::BadIdentity(e), now, actions),
            },
            SessionState::Polling => {
                if matches!(
                    expected,
                    Some(commands::REALTIME_CONFIG | commands::CONFIGURE_REALTIME)
                ) {
                    self.realtime_answer(expected.unwrap_or_default(), frame, now, actions);
                    return;
                }
                if frame.code != commands::NAK_CORRUPT {
                    self.data(frame, actions);
                }
                if let Some(pos) = self.cycle_pos {
                    let next = pos + 1;
                    if next < POLL_CYCLE.len() {
                        self.cycle_pos = Some(next);
                        self.send(POLL_CYCLE[next], now, actions);
                    } else {
                        self.cycle_pos = None;
                    }
                }
            }
        }
    }

    fn realtime_wanted(&self) -> bool {
        self.realtime
            .as_ref()
            .is_some_and(|rt| rt.phase == RtPhase::Wanted)
    }

    fn request_realtime_config(&mut self, now: Instant, actions: &mut Vec<Action>) {
        if let Some(rt) = self.realtime.as_mut() {
            rt.phase = RtPhase::AwaitConfig;
            self.send(commands::REALTIME_CONFIG, now, actions);
        }
    }

    /// Streaming but silent for `silence_timeout`: set realtime up again.
    fn realtime_silence(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let Some(rt) = self.realtime.as_mut() else {
            return;
        };
        let timeout = rt.backoff();
        match rt.phase {
            RtPhase::Streaming { since } => {
                let last = rt.last_frame.map_or(since, |l| l.max(since));
                if now.saturating_duration_since(last) >= timeout {
                    rt.stop(actions);
                    rt.phase = RtPhase::Wanted;
                    // A stream that brought nothing since its set-up counts as a failure.
                    if rt.last_frame.is_none() {
                        rt.failures = rt.failures.saturating_add(1);
                    }
                    self.stats.realtime_restarts += 1;
                    actions.push(Action::Realtime(RealtimeEvent::Restart(format!(
                        "no realtime frame for {timeout:?}"
                    ))));
                }
            }
            RtPhase::Unavailable { since } if now.saturating_duration_since(since) >= timeout => {
                rt.phase = RtPhase::Wanted;
                self.stats.realtime_restarts += 1;
                actions.push(Action::Realtime(RealtimeEvent::Restart(format!(
                    "asking for realtime curves again after {timeout:?}"
                ))));
            }
            _ => {}
        }
    }

    /// The answer to `S` or `T` (or a NAK in their place).
    fn realtime_answer(
        &mut self,
        asked: u8,
        frame: &MedibusFrame,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(rt) = self.realtime.as_mut() else {
            return;
        };
        if frame.code == commands::NAK_CORRUPT {
            rt.phase = RtPhase::Unavailable { since: now };
            rt.failures = rt.failures.saturating_add(1);
            actions.push(Action::Realtime(RealtimeEvent::Unavailable(format!(
                "the device refused command 0x{asked:02X}"
            ))));
            return;
        }
        if asked == commands::CONFIGURE_REALTIME {
            let mask = (1u16 << rt.specs.len()) - 1;
            actions.push(Action::Send(encode_enable(mask)));
            self.last_sent = Some(now);
            rt.assembler = Some(WaveformAssembler::new(&rt.specs, rt.settings.run_len));
            rt.last_frame = None;
            rt.phase = RtPhase::Streaming { since: now };
            actions.push(Action::Realtime(RealtimeEvent::Started(rt.specs.clone())));
            return;
        }
        let offered = match parse_realtime_config(&frame.data, rt.settings.interval_unit) {
            Ok(offered) => offered,
            Err(error) => {
                rt.phase = RtPhase::Unavailable { since: now };
                rt.failures = rt.failures.saturating_add(1);
                actions.push(Action::Realtime(RealtimeEvent::BadConfig {
                    frame_offset: frame.offset,
                    error,
                }));
                return;
            }
        };
        let mut requests = Vec::new();
        let mut specs = Vec::new();
        for want in &rt.settings.streams {
            if specs.len() >= super::realtime::MAX_STREAMS {
                break;
            }
            if let Some(c) = offered.iter().find(|c| c.code == want.code) {
                requests.push(*want);
                specs.push(StreamSpec {
                    stream: specs.len() as u8 + 1,
                    code: c.code,
                    interval_us: c.interval_us,
                    scale: c.scale,
                });
            }
        }
        actions.push(Action::Realtime(RealtimeEvent::Offered(offered)));
        if specs.is_empty() {
            rt.phase = RtPhase::Unavailable { since: now };
            rt.failures = rt.failures.saturating_add(1);
            actions.push(Action::Realtime(RealtimeEvent::Unavailable(
                "the device offers none of the configured curves".into(),
            )));
            return;
        }
        rt.specs = specs;
        rt.phase = RtPhase::AwaitConfigure;
        let args = encode_configure_realtime(&requests);
        self.send_args(commands::CONFIGURE_REALTIME, &args, now, actions);
    }

    /// Handles realtime frames from the codec ([`super::MedibusCodec::take_realtime`]).
    pub fn on_realtime(&mut self, frames: &[RealtimeFrame], now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(rt) = self.realtime.as_mut() else {
            return actions;
        };
        for f in frames {
            match rt.assembler.as_mut() {
                Some(asm) => {
                    asm.push(f);
                    rt.last_frame = Some(now);
                    rt.failures = 0;
                }
                None => self.stats.realtime_ignored_frames += 1,
            }
            if let Some(fault) = &f.fault {
                actions.push(Action::Realtime(RealtimeEvent::BadFrame {
                    offset: f.offset,
                    fault: fault.clone(),
                }));
            }
        }
        if let Some(asm) = rt.assembler.as_mut() {
            for run in asm.take_runs() {
                actions.push(Action::Realtime(RealtimeEvent::Waveform(run)));
            }
        }
        actions
    }

    /// Hands over the unfinished curve runs (the port is closing).
    pub fn flush_realtime(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(rt) = self.realtime.as_mut() {
            if let Some(asm) = rt.assembler.as_mut() {
                asm.flush();
                for run in asm.take_runs() {
                    actions.push(Action::Realtime(RealtimeEvent::Waveform(run)));
                }
            }
        }
        actions
    }

    fn data(&mut self, frame: &MedibusFrame, actions: &mut Vec<Action>) {
        let parsed = match frame.code {
            commands::MEASURED_CP1 => parse_measured(&frame.data).map(MedibusData::Measured),
            commands::LOW_LIMITS_CP1 => parse_measured(&frame.data).map(MedibusData::LowLimits),
            commands::HIGH_LIMITS_CP1 => parse_measured(&frame.data).map(MedibusData::HighLimits),
            commands::ALARMS_CP1 => parse_alarms(&frame.data).map(MedibusData::Alarms),
            commands::DEVICE_SETTINGS => parse_settings(&frame.data).map(MedibusData::Settings),
            commands::TEXT_MESSAGES => parse_text_messages(&frame.data).map(MedibusData::Text),
            _ => return,
        };
        match parsed {
            Ok(data) => actions.push(Action::Data(data)),
            Err(error) => {
                self.stats.bad_payloads += 1;
                actions.push(Action::BadPayload {
                    code: frame.code,
                    frame_offset: frame.offset,
                    error,
                });
            }
        }
    }
}
