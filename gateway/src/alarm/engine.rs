//! The alarm engine: rules and the alarm lifecycle, per bed, in event time.
//!
//! Owns: per-bed state (latest values, sustain timers, rate windows, clinician limit overrides,
//! open alarm occurrences) and the lifecycle of each occurrence. Guarantees:
//! - no I/O, no runtime, no wall clock: every entry point takes `now_us`, and rule evaluation
//!   uses the reading's event time (device time, else receive time);
//! - every state change is returned as exactly one [`Alarm`] record, in a deterministic order;
//! - one open occurrence per (bed, condition); its `alarm_id` `<bed>:<condition>:<start_us>`
//!   never changes from `start` to `end`;
//! - a reading older than the last one applied for its bed and parameter never drives a rule;
//!   beyond the allowed lateness it is counted in `late_readings`.
//!
//! Lifecycle (phases and states as in IHE PCD-04):
//! - `start` (state `active`) when a condition begins (limit rules: after `sustain_s`);
//! - `escalate` / `deescalate` when its priority changes; escalation clears an acknowledgement
//!   and a silence, so the alarm sounds again;
//! - `update` for acknowledge (`acknowledged`), silence (`silenced`), silence expiry, a latch
//!   (`latched`) and a latched condition returning (`active`);
//! - `end` (state `inactive`) when the condition clears, except that an alarm that was high
//!   priority and not acknowledged since latches (as high) and ends only when acknowledged.
//!
//! No `continue` records are emitted: the page reads current texts with [`Engine::active`].

use std::collections::{BTreeMap, HashMap, VecDeque};

use icu_protos::v1::{Alarm, Observation, ObservationStatus};
use serde::Serialize;

use super::config::{
    check_limits, AlarmConfig, DeviceClockConfig, Direction, LimitRule, Priority, RateRule,
};
use super::news2::{self, News2Inputs, News2Param};
use crate::domain::FieldProblem;

/// MDC_EVT_ALARM: the event code of technical alarms (and of NEWS2, which has no metric code).
pub const MDC_EVT_ALARM: u32 = 196616;
/// Source of the stale-feed technical alarm.
pub const STALE_FEED_SOURCE: &str = "gateway:stale-feed";
/// Source of the NEWS2 alarm.
pub const NEWS2_SOURCE: &str = "news2";
/// Source of the technical alarm for a device whose clock cannot be trusted (device times out of
/// bounds, or late readings past the threshold).
pub const DEVICE_CLOCK_SOURCE: &str = "gateway:device-clock";
/// Source of the technical alarm for an alarm output that is down.
pub const ALARM_OUTPUT_SOURCE: &str = "gateway:alarm-output";
/// The pseudo-bed of the gateway's own technical alarms (store budget, alarm outputs).
pub const GATEWAY_BED: &str = "gateway";

/// The time a reading is evaluated at, after checking its device time against its receive
/// time (see [`DeviceClockConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedTime {
    /// Event time to use: the device time when trusted, else the receive time.
    pub t_us: i64,
    /// Device time minus receive time when the device time lay outside the bounds.
    pub untrusted_offset_us: Option<i64>,
}

/// Checks a reading's device time against its receive time. The one rule for the alarm engine,
/// patient association and the live view: a device time more than `max_ahead_s` after, or
/// `max_behind_s` before, the receive time is not trusted and the receive time is used.
pub fn checked_time(
    device_time_us: Option<i64>,
    receive_time_us: i64,
    cfg: &DeviceClockConfig,
) -> CheckedTime {
    let Some(device) = device_time_us else {
        return CheckedTime {
            t_us: receive_time_us,
            untrusted_offset_us: None,
        };
    };
    let offset = device.saturating_sub(receive_time_us);
    let ahead = i64::from(cfg.max_ahead_s) * US_PER_S;
    let behind = i64::from(cfg.max_behind_s) * US_PER_S;
    if offset > ahead || offset < -behind {
        CheckedTime {
            t_us: receive_time_us,
            untrusted_offset_us: Some(offset),
        }
    } else {
        CheckedTime {
            t_us: device,
            untrusted_offset_us: None,
        }
    }
}

/// An offset in words: "3 s", "5 min", "2 h", "27 d".
pub fn fmt_offset(offset_us: i64) -> String {
    let s = offset_us.unsigned_abs() / 1_000_000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

const US_PER_S: i64 = 1_000_000;

/// PCD-04 event phase of one alarm record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Start,
    Update,
    Escalate,
    Deescalate,
    End,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Update => "update",
            Phase::Escalate => "escalate",
            Phase::Deescalate => "deescalate",
            Phase::End => "end",
        }
    }
}

/// State of an alarm occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlarmState {
    /// The condition holds and nobody has responded.
    Active,
    /// The condition ended but the (high-priority) alarm waits for acknowledgement.
    Latched,
    /// Acknowledged; the condition still holds.
    Acknowledged,
    /// Audio paused until a deadline.
    Silenced,
    /// Ended.
    Inactive,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Active => "active",
            AlarmState::Latched => "latched",
            AlarmState::Acknowledged => "acknowledged",
            AlarmState::Silenced => "silenced",
            AlarmState::Inactive => "inactive",
        }
    }
}

/// PCD-04 alert type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AlertType {
    /// Physiological (`SP`).
    #[serde(rename = "SP")]
    Physiological,
    /// Technical (`ST`).
    #[serde(rename = "ST")]
    Technical,
}

impl AlertType {
    pub fn code(self) -> &'static str {
        match self {
            AlertType::Physiological => "SP",
            AlertType::Technical => "ST",
        }
    }
}

/// An open alarm as the nurse's page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmView {
    pub alarm_id: String,
    pub bed: String,
    /// The rule or condition that raised it, e.g. `limit:spo2`.
    pub source: String,
    pub mdc_code: u32,
    pub alert_type: AlertType,
    /// Latest text, e.g. "SpO2 84 < 90".
    pub text: String,
    pub priority: Priority,
    pub state: AlarmState,
    /// Event time the occurrence started, µs since the Unix epoch.
    pub since_us: i64,
    pub device_id: String,
    pub patient_id: String,
    pub acknowledged_by: Option<String>,
    pub silenced_by: Option<String>,
    pub silenced_until_us: Option<i64>,
}

/// Counters, each also exposed as a metric by the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Readings that drove the rules.
    pub readings: u64,
    /// Readings without an alarmable value (status other than valid/corrected, no number).
    pub ignored_readings: u64,
    /// Readings older than the allowed lateness, not alarmed on.
    pub late_readings: u64,
    /// Readings out of order but within the allowed lateness, not alarmed on.
    pub out_of_order_readings: u64,
    pub alarms_started: u64,
    pub alarms_ended: u64,
    pub escalations: u64,
    /// Alarm records emitted (every phase).
    pub state_changes: u64,
    /// `late_readings` per bed.
    pub late_readings_by_bed: BTreeMap<String, u64>,
    /// Readings whose device time lay outside the bounds of trust (evaluated at receive time).
    pub untrusted_time_readings: u64,
    /// `untrusted_time_readings` per bed.
    pub untrusted_time_readings_by_bed: BTreeMap<String, u64>,
    /// Silence requests refused by the cap (the alarm sounded again).
    pub silences_refused: u64,
}

/// An action the engine refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlarmError {
    #[error("bed {bed} has no open alarm {alarm_id}")]
    UnknownAlarm { bed: String, alarm_id: String },
    #[error("limits for MDC code {mdc_code} at bed {bed} rejected: {message}")]
    InvalidLimits {
        bed: String,
        mdc_code: u32,
        message: String,
    },
    #[error("silence duration must be at least 1 s")]
    InvalidSilence,
    #[error("alarm {alarm_id} at bed {bed} cannot be silenced again: {why}; it sounds again until it is acknowledged or its cause is fixed")]
    SilenceCapReached {
        bed: String,
        alarm_id: String,
        why: String,
        /// The record that re-announces the alarm (the caller emits it like any other).
        reannounce: Vec<Alarm>,
    },
}

/// Effective low/high limits of one parameter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    pub low: Option<f64>,
    pub high: Option<f64>,
}

/// A clinician's limit change as the engine checks it.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitChange {
    pub low: Option<f64>,
    pub high: Option<f64>,
    /// Why a limit is switched off; required when the change switches one off.
    pub reason: Option<String>,
    pub who: String,
    pub at_us: i64,
}

/// A limit a clinician switched off at a bed, shown on the bed card until restored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitOff {
    pub bed: String,
    pub mdc_code: u32,
    /// The rule's label, e.g. `SpO2`.
    pub label: String,
    /// `low`, `high` or `low and high`.
    pub sides: String,
    pub reason: String,
    pub who: String,
    pub since_us: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct Override {
    limits: Limits,
    /// Sides switched off that the config has on: (sides, reason, who, since).
    off: Option<(String, String, String, i64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Low,
    High,
}

#[derive(Debug)]
struct Occurrence {
    alarm_id: String,
    source: String,
    mdc_code: u32,
    alert_type: AlertType,
    device_id: String,
    patient_id: String,
    priority: Priority,
    text: String,
    since_us: i64,
    condition_present: bool,
    /// It was high priority at some point and has not been acknowledged since: it latches.
    latch_pending: bool,
    acknowledged_by: Option<String>,
    silenced_by: Option<String>,
    silenced_until_us: Option<i64>,
    /// Silences granted so far, and their total length in µs.
    silences: u32,
    silenced_total_us: i64,
}

impl Occurrence {
    fn state(&self) -> AlarmState {
        if self.silenced_until_us.is_some() {
            AlarmState::Silenced
        } else if !self.condition_present {
            AlarmState::Latched
        } else if self.acknowledged_by.is_some() {
            AlarmState::Acknowledged
        } else {
            AlarmState::Active
        }
    }

    fn record(&self, bed: &str, phase: Phase, state: AlarmState, event_time_us: i64) -> Alarm {
        Alarm {
            device_id: self.device_id.clone(),
            seq: 0,
            bed: bed.to_string(),
            alarm_id: self.alarm_id.clone(),
            mdc_code: self.mdc_code,
            text: self.text.clone(),
            priority: self.priority.code().to_string(),
            phase: phase.as_str().to_string(),
            state: state.as_str().to_string(),
            event_time_us,
            alert_type: self.alert_type.code().to_string(),
            source: self.source.clone(),
            patient_id: self.patient_id.clone(),
        }
    }

    fn view(&self, bed: &str) -> AlarmView {
        AlarmView {
            alarm_id: self.alarm_id.clone(),
            bed: bed.to_string(),
            source: self.source.clone(),
            mdc_code: self.mdc_code,
            alert_type: self.alert_type,
            text: self.text.clone(),
            priority: self.priority,
            state: self.state(),
            since_us: self.since_us,
            device_id: self.device_id.clone(),
            patient_id: self.patient_id.clone(),
            acknowledged_by: self.acknowledged_by.clone(),
            silenced_by: self.silenced_by.clone(),
            silenced_until_us: self.silenced_until_us,
        }
    }
}

/// What a rule reports while its condition holds.
struct Raise {
    source: String,
    mdc_code: u32,
    alert_type: AlertType,
    device_id: String,
    patient_id: String,
    priority: Priority,
    text: String,
}

#[derive(Debug, Default)]
struct Condition {
    /// Limit rules: event time and side of the first reading of the current excursion.
    pending: Option<(i64, Side)>,
    occ: Option<Occurrence>,
}

/// Emits records and counts them.
struct Out<'a> {
    bed: &'a str,
    alarms: &'a mut Vec<Alarm>,
    stats: &'a mut EngineStats,
}

impl Out<'_> {
    fn emit(&mut self, occ: &Occurrence, phase: Phase, state: AlarmState, t: i64) {
        self.stats.state_changes += 1;
        match phase {
            Phase::Start => self.stats.alarms_started += 1,
            Phase::End => self.stats.alarms_ended += 1,
            Phase::Escalate => self.stats.escalations += 1,
            _ => {}
        }
        self.alarms.push(occ.record(self.bed, phase, state, t));
    }
}

impl Condition {
    fn is_present(&self) -> bool {
        self.occ.as_ref().is_some_and(|o| o.condition_present)
    }

    /// The condition holds at event time `t` with the priority and text in `r`.
    fn raise(&mut self, key: &str, r: Raise, t: i64, out: &mut Out<'_>) {
        let Some(occ) = self.occ.as_mut() else {
            let occ = Occurrence {
                alarm_id: format!("{}:{key}:{t}", out.bed),
                source: r.source,
                mdc_code: r.mdc_code,
                alert_type: r.alert_type,
                device_id: r.device_id,
                patient_id: r.patient_id,
                priority: r.priority,
                text: r.text,
                since_us: t,
                condition_present: true,
                latch_pending: r.priority == Priority::High,
                acknowledged_by: None,
                silenced_by: None,
                silenced_until_us: None,
                silences: 0,
                silenced_total_us: 0,
            };
            out.emit(&occ, Phase::Start, AlarmState::Active, t);
            self.occ = Some(occ);
            return;
        };
        let was_present = occ.condition_present;
        occ.condition_present = true;
        occ.text = r.text;
        if r.priority > occ.priority {
            occ.priority = r.priority;
            occ.latch_pending |= r.priority == Priority::High;
            occ.acknowledged_by = None;
            occ.silenced_by = None;
            occ.silenced_until_us = None;
            out.emit(occ, Phase::Escalate, occ.state(), t);
        } else if r.priority < occ.priority && was_present {
            occ.priority = r.priority;
            out.emit(occ, Phase::Deescalate, occ.state(), t);
        } else if !was_present {
            // A latched alarm whose condition returns: active again, keeping its priority.
            out.emit(occ, Phase::Update, occ.state(), t);
        }
    }

    /// The condition no longer holds at time `t`.
    fn clear(&mut self, t: i64, out: &mut Out<'_>) {
        let Some(occ) = self.occ.as_mut() else { return };
        if !occ.condition_present {
            return;
        }
        occ.condition_present = false;
        if occ.latch_pending {
            // A latched alarm shows the priority that demanded acknowledgement.
            occ.priority = Priority::High;
            out.emit(occ, Phase::Update, occ.state(), t);
        } else {
            out.emit(occ, Phase::End, AlarmState::Inactive, t);
            self.occ = None;
        }
    }
}

#[derive(Debug, Default)]
struct ParamState {
    /// Event time of the last reading applied (the newest seen).
    last_us: Option<i64>,
    /// Per rate rule of this code (in `rates_by_code` order), the readings of its window that
    /// can still be its extreme, oldest first (see [`RateWindow`]).
    rate_windows: Vec<RateWindow>,
}

/// The extreme (largest for a drop rule, smallest for a rise rule) of the readings of the last
/// `within_s`, kept as a monotonic queue: a reading that a later, larger (smaller) one outlives
/// can never be the extreme again and is dropped. O(1) per reading on average, however fast a
/// device sends; the window scan this replaced cost O(readings in the window) per reading and
/// was a fifth of the gateway's CPU at 300 readings/s per bed (`cargo bench -p icu-gateway
/// --bench ingest -- --perf`).
#[derive(Debug, Default)]
struct RateWindow {
    readings: VecDeque<(i64, f64)>,
}

impl RateWindow {
    /// Adds the reading `(t, v)` (readings arrive in time order) and returns the extreme of
    /// those at or after `from`, `v` included.
    fn push(&mut self, direction: Direction, t: i64, v: f64, from: i64) -> f64 {
        let outlived = |x: f64| match direction {
            Direction::Drop => x <= v,
            Direction::Rise => x >= v,
        };
        while self.readings.back().is_some_and(|&(_, x)| outlived(x)) {
            self.readings.pop_back();
        }
        self.readings.push_back((t, v));
        while self.readings.front().is_some_and(|&(ts, _)| ts < from) {
            self.readings.pop_front();
        }
        self.readings.front().map_or(v, |&(_, x)| x)
    }
}

#[derive(Debug, Default)]
struct BedState {
    patient_id: String,
    params: HashMap<u32, ParamState>,
    overrides: HashMap<u32, Override>,
    conditions: BTreeMap<String, Condition>,
    /// Latest (event time, value) per [`News2Param`].
    news2: [Option<(i64, f64)>; 5],
}

/// The alarm engine for all beds of one gateway. See the module docs for its guarantees.
#[derive(Debug)]
pub struct Engine {
    config: AlarmConfig,
    /// MDC code → index of the limit rule watching it.
    limit_by_code: HashMap<u32, usize>,
    /// MDC code → indexes of the rate rules watching it.
    rates_by_code: HashMap<u32, Vec<usize>>,
    beds: BTreeMap<String, BedState>,
    stats: EngineStats,
    /// Per device id: the state of trust in its clock.
    clocks: HashMap<String, DeviceClock>,
}

/// Trust in one device's clock.
#[derive(Debug, Default)]
struct DeviceClock {
    bed: String,
    /// Engine time of the last untrusted or late reading (past the threshold).
    last_bad_us: Option<i64>,
    /// Receive times of its recent late readings.
    late: VecDeque<i64>,
    /// The technical alarm is raised.
    raised: bool,
}

/// A device clock's state as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceClockView {
    pub device_id: String,
    pub bed: String,
    /// `unsynced` while the technical alarm is raised.
    pub state: &'static str,
    pub last_bad_us: Option<i64>,
}

fn fmt_value(v: f64) -> String {
    let r = (v * 100.0).round() / 100.0;
    format!("{r}")
}

impl Engine {
    /// An engine applying `config`; every problem in it is reported with a path under `alarms`.
    pub fn new(config: AlarmConfig) -> Result<Engine, Vec<FieldProblem>> {
        let problems = config.validate("alarms");
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut limit_by_code = HashMap::new();
        for (i, rule) in config.limits.iter().enumerate() {
            for code in &rule.mdc_codes {
                limit_by_code.insert(*code, i);
            }
        }
        let mut rates_by_code: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, rule) in config.rates.iter().enumerate() {
            rates_by_code.entry(rule.mdc_code).or_default().push(i);
        }
        Ok(Engine {
            config,
            limit_by_code,
            rates_by_code,
            beds: BTreeMap::new(),
            stats: EngineStats::default(),
            clocks: HashMap::new(),
        })
    }

    pub fn config(&self) -> &AlarmConfig {
        &self.config
    }

    /// Applies one decoded reading; returns the alarm state changes it causes.
    pub fn on_observation(&mut self, obs: &Observation, now_us: i64) -> Vec<Alarm> {
        let mut alarms = Vec::new();
        // Device time is trusted only within bounds: an untrusted one is evaluated at receive
        // time and can never move this parameter's event-time clock into the future.
        let checked = checked_time(
            obs.device_time_us,
            obs.receive_time_us,
            &self.config.device_clock,
        );
        if let Some(offset) = checked.untrusted_offset_us {
            self.stats.untrusted_time_readings += 1;
            *self
                .stats
                .untrusted_time_readings_by_bed
                .entry(obs.bed.clone())
                .or_default() += 1;
            let dir = if offset > 0 { "ahead" } else { "behind" };
            let text = format!(
                "clock of {} is {} {dir} (device time {}): its readings are alarmed on at receive time",
                obs.device_id,
                fmt_offset(offset),
                obs.device_time_us
                    .and_then(chrono::DateTime::from_timestamp_micros)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "out of range".into()),
            );
            self.clock_problem(&obs.bed, &obs.device_id, text, now_us, &mut alarms);
        } else {
            self.clock_settle(&obs.device_id, now_us, &mut alarms);
        }
        let status = obs.status;
        let alarmable = status == ObservationStatus::Valid as i32
            || status == ObservationStatus::Corrected as i32;
        let value = match obs.value {
            Some(v) if alarmable && v.is_finite() => v,
            _ => {
                self.stats.ignored_readings += 1;
                return alarms;
            }
        };
        let t = checked.t_us;
        let code = obs.mdc_code;
        let lateness_us = i64::from(self.config.allowed_lateness_s) * US_PER_S;

        let bed = self.beds.entry(obs.bed.clone()).or_default();
        expire_silences(&obs.bed, bed, now_us, &mut alarms, &mut self.stats);
        let last = bed.params.get(&code).and_then(|p| p.last_us);
        if let Some(last) = last {
            if t < last.saturating_sub(lateness_us) {
                self.stats.late_readings += 1;
                *self
                    .stats
                    .late_readings_by_bed
                    .entry(obs.bed.clone())
                    .or_default() += 1;
                self.note_late(obs, last - t, now_us, &mut alarms);
                return alarms;
            }
            if t < last {
                self.stats.out_of_order_readings += 1;
                return alarms;
            }
        }

        let Engine {
            config,
            limit_by_code,
            rates_by_code,
            beds,
            stats,
            ..
        } = self;
        let bed = beds.get_mut(&obs.bed).expect("inserted above");
        let param = bed.params.entry(code).or_default();
        param.last_us = Some(t);
        stats.readings += 1;
        bed.patient_id.clone_from(&obs.patient_id);

        let mut out = Out {
            bed: &obs.bed,
            alarms: &mut alarms,
            stats,
        };

        // Limit rule: from config, or ad hoc when a clinician set limits on an unwatched code.
        let overrides = bed.overrides.get(&code).map(|o| o.limits);
        let adhoc;
        let rule = match (limit_by_code.get(&code), overrides) {
            (Some(&i), _) => Some(&config.limits[i]),
            (None, Some(_)) => {
                adhoc = adhoc_rule(code, &obs.mdc_refid);
                Some(&adhoc)
            }
            (None, None) => None,
        };
        if let Some(rule) = rule {
            let limits = overrides.unwrap_or(Limits {
                low: rule.low,
                high: rule.high,
            });
            eval_limit(bed, rule, limits, obs, value, t, &mut out);
        }

        if let Some(indexes) = rates_by_code.get(&code) {
            let param = bed.params.get_mut(&code).expect("inserted above");
            let mut windows = std::mem::take(&mut param.rate_windows);
            windows.resize_with(indexes.len(), RateWindow::default);
            for (window, &i) in windows.iter_mut().zip(indexes) {
                let rule = &config.rates[i];
                let from = t - i64::from(rule.within_s) * US_PER_S;
                let extreme = window.push(rule.direction, t, value, from);
                eval_rate(bed, rule, extreme, obs, value, t, &mut out);
            }
            bed.params
                .get_mut(&code)
                .expect("inserted above")
                .rate_windows = windows;
        }

        if config.news2.enabled {
            if let Some(p) = News2Param::for_code(code) {
                bed.news2[p.index()] = Some((t, value));
                eval_news2(bed, config, obs, t, &mut out);
            }
        }
        alarms
    }

    /// Expires silences; call about once a second with the current time.
    pub fn tick(&mut self, now_us: i64) -> Vec<Alarm> {
        let mut alarms = Vec::new();
        for (name, bed) in &mut self.beds {
            expire_silences(name, bed, now_us, &mut alarms, &mut self.stats);
        }
        let raised: Vec<String> = self
            .clocks
            .iter()
            .filter(|(_, c)| c.raised)
            .map(|(d, _)| d.clone())
            .collect();
        for device in raised {
            self.clock_settle(&device, now_us, &mut alarms);
        }
        alarms
    }

    /// A device's clock is not to be trusted (`text` says why): raises (or keeps) the
    /// `gateway:device-clock` technical alarm naming the device.
    fn clock_problem(
        &mut self,
        bed: &str,
        device_id: &str,
        text: String,
        now_us: i64,
        alarms: &mut Vec<Alarm>,
    ) {
        let clock = self.clocks.entry(device_id.to_string()).or_default();
        clock.bed = bed.to_string();
        clock.last_bad_us = Some(now_us);
        clock.raised = true;
        let priority = self.config.device_clock.priority;
        alarms.extend(self.technical(
            bed,
            format!("device-clock:{device_id}"),
            true,
            now_us,
            || Raise {
                source: DEVICE_CLOCK_SOURCE.to_string(),
                mdc_code: MDC_EVT_ALARM,
                alert_type: AlertType::Technical,
                device_id: device_id.to_string(),
                patient_id: String::new(),
                priority,
                text,
            },
        ));
    }

    /// Ends the device-clock alarm once the device's times have been plausible for `settle_s`.
    fn clock_settle(&mut self, device_id: &str, now_us: i64, alarms: &mut Vec<Alarm>) {
        let settle_us = i64::from(self.config.device_clock.settle_s) * US_PER_S;
        let Some(clock) = self.clocks.get_mut(device_id) else {
            return;
        };
        if !clock.raised || clock.last_bad_us.is_some_and(|t| now_us - t < settle_us) {
            return;
        }
        clock.raised = false;
        clock.late.clear();
        let bed = clock.bed.clone();
        alarms.extend(self.technical(
            &bed,
            format!("device-clock:{device_id}"),
            false,
            now_us,
            || unreachable!("clearing never raises"),
        ));
    }

    /// Counts a late reading against its device; past `late_alarm_count` within
    /// `late_window_s` the device's clock is taken as wrong.
    fn note_late(
        &mut self,
        obs: &Observation,
        behind_us: i64,
        now_us: i64,
        alarms: &mut Vec<Alarm>,
    ) {
        let cfg = &self.config.device_clock;
        let window_us = i64::from(cfg.late_window_s) * US_PER_S;
        let count = cfg.late_alarm_count as usize;
        let clock = self.clocks.entry(obs.device_id.clone()).or_default();
        clock.late.push_back(now_us);
        while clock.late.front().is_some_and(|&r| r < now_us - window_us) {
            clock.late.pop_front();
        }
        if clock.late.len() >= count {
            let n = clock.late.len();
            let text = format!(
                "{n} late readings from {} within {} s (device time up to {} behind the newest reading): its clock may be wrong",
                obs.device_id,
                self.config.device_clock.late_window_s,
                fmt_offset(behind_us)
            );
            self.clock_problem(&obs.bed, &obs.device_id, text, now_us, alarms);
        }
    }

    /// The trust state of every device clock the engine has doubted.
    pub fn device_clocks(&self) -> Vec<DeviceClockView> {
        let mut v: Vec<DeviceClockView> = self
            .clocks
            .iter()
            .map(|(d, c)| DeviceClockView {
                device_id: d.clone(),
                bed: c.bed.clone(),
                state: if c.raised { "unsynced" } else { "ok" },
                last_bad_us: c.last_bad_us,
            })
            .collect();
        v.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        v
    }

    /// The technical alarm for an alarm output (`output`, e.g. `pcd04`) that has been down
    /// (`active`) for longer than `alarms.outputs.down_after_s`, or that delivers again. It is
    /// shown on the gateway's pseudo-bed and goes to every output that is still up.
    pub fn output_down(
        &mut self,
        output: &str,
        text: &str,
        active: bool,
        now_us: i64,
    ) -> Vec<Alarm> {
        let priority = self.config.outputs.priority;
        self.technical(
            GATEWAY_BED,
            format!("alarm-output:{output}"),
            active,
            now_us,
            || Raise {
                source: ALARM_OUTPUT_SOURCE.to_string(),
                mdc_code: MDC_EVT_ALARM,
                alert_type: AlertType::Technical,
                device_id: GATEWAY_BED.to_string(),
                patient_id: String::new(),
                priority,
                text: text.to_string(),
            },
        )
    }

    /// The technical alarm for a device whose feed went stale (`active`) or came back.
    /// Technical alarms start and end at once (the caller already applied its own delay) and
    /// carry `now_us` as their event time and the bed's latest patient.
    pub fn stale_feed(
        &mut self,
        bed: &str,
        device_id: &str,
        active: bool,
        now_us: i64,
    ) -> Vec<Alarm> {
        let priority = self.config.stale_feed_priority;
        self.technical(
            bed,
            format!("stale-feed:{device_id}"),
            active,
            now_us,
            || Raise {
                source: STALE_FEED_SOURCE.to_string(),
                mdc_code: MDC_EVT_ALARM,
                alert_type: AlertType::Technical,
                device_id: device_id.to_string(),
                patient_id: String::new(),
                priority,
                text: format!("no data from {device_id}"),
            },
        )
    }

    /// A technical condition reported by a device (Masimo EXC bit, MEDIBUS alarm, leads off),
    /// identified by `id` (the alarm source, e.g. `masimo:EXC:0x000001`).
    #[allow(clippy::too_many_arguments)]
    pub fn device_condition(
        &mut self,
        bed: &str,
        device_id: &str,
        id: &str,
        text: &str,
        priority: Priority,
        active: bool,
        now_us: i64,
    ) -> Vec<Alarm> {
        self.technical(
            bed,
            format!("device:{device_id}:{id}"),
            active,
            now_us,
            || Raise {
                source: id.to_string(),
                mdc_code: MDC_EVT_ALARM,
                alert_type: AlertType::Technical,
                device_id: device_id.to_string(),
                patient_id: String::new(),
                priority,
                text: text.to_string(),
            },
        )
    }

    fn technical(
        &mut self,
        bed: &str,
        key: String,
        active: bool,
        now_us: i64,
        raise: impl FnOnce() -> Raise,
    ) -> Vec<Alarm> {
        let mut alarms = Vec::new();
        let state = self.beds.entry(bed.to_string()).or_default();
        expire_silences(bed, state, now_us, &mut alarms, &mut self.stats);
        let mut out = Out {
            bed,
            alarms: &mut alarms,
            stats: &mut self.stats,
        };
        if active {
            let mut r = raise();
            r.patient_id.clone_from(&state.patient_id);
            state
                .conditions
                .entry(key.clone())
                .or_default()
                .raise(&key, r, now_us, &mut out);
        } else if let Some(c) = state.conditions.get_mut(&key) {
            c.clear(now_us, &mut out);
        }
        alarms
    }

    /// Acknowledges an open alarm: a latched one ends; an active one becomes `acknowledged`
    /// (it ends when its condition clears). Acknowledging twice changes nothing.
    pub fn acknowledge(
        &mut self,
        bed: &str,
        alarm_id: &str,
        who: &str,
        now_us: i64,
    ) -> Result<Vec<Alarm>, AlarmError> {
        let mut alarms = Vec::new();
        let (cond, stats) = self.find(bed, alarm_id)?;
        let mut out = Out {
            bed,
            alarms: &mut alarms,
            stats,
        };
        let occ = cond.occ.as_mut().expect("found by id");
        if !occ.condition_present {
            occ.acknowledged_by = Some(who.to_string());
            out.emit(occ, Phase::End, AlarmState::Inactive, now_us);
            cond.occ = None;
        } else if occ.acknowledged_by.is_none() {
            occ.acknowledged_by = Some(who.to_string());
            occ.latch_pending = false;
            occ.silenced_by = None;
            occ.silenced_until_us = None;
            out.emit(occ, Phase::Update, occ.state(), now_us);
        }
        Ok(alarms)
    }

    /// Pauses an alarm's audio for `duration_s` (cut to `max_silence_s`); [`Engine::tick`]
    /// ends the silence.
    pub fn silence(
        &mut self,
        bed: &str,
        alarm_id: &str,
        duration_s: u32,
        who: &str,
        now_us: i64,
    ) -> Result<Vec<Alarm>, AlarmError> {
        if duration_s == 0 {
            return Err(AlarmError::InvalidSilence);
        }
        let max_renewals = self.config.max_silence_renewals;
        let total_cap_us = i64::from(self.config.max_silence_total_s) * US_PER_S;
        let wanted_us = i64::from(duration_s.min(self.config.max_silence_s)) * US_PER_S;
        let mut alarms = Vec::new();
        let (cond, stats) = self.find(bed, alarm_id)?;
        let occ = cond.occ.as_mut().expect("found by id");
        // A silence still running counts only up to now when renewed.
        if let Some(until) = occ.silenced_until_us {
            occ.silenced_total_us -= (until - now_us).max(0);
        }
        let left_us = total_cap_us - occ.silenced_total_us;
        let why = if occ.silences > max_renewals {
            Some(format!(
                "silenced {} times already (at most {} renewals)",
                occ.silences, max_renewals
            ))
        } else if left_us < US_PER_S {
            Some(format!(
                "silenced for {} s in all already (at most {} s)",
                occ.silenced_total_us / US_PER_S,
                total_cap_us / US_PER_S
            ))
        } else {
            None
        };
        let mut out = Out {
            bed,
            alarms: &mut alarms,
            stats,
        };
        if let Some(why) = why {
            // Past its cap the alarm re-announces itself: the silence ends now and a record
            // with its sounding state goes to every output.
            out.stats.silences_refused += 1;
            occ.silenced_until_us = None;
            occ.silenced_by = None;
            out.emit(occ, Phase::Update, occ.state(), now_us);
            return Err(AlarmError::SilenceCapReached {
                bed: bed.to_string(),
                alarm_id: alarm_id.to_string(),
                why,
                reannounce: alarms,
            });
        }
        let granted_us = wanted_us.min(left_us);
        occ.silences += 1;
        occ.silenced_total_us += granted_us;
        occ.silenced_by = Some(who.to_string());
        occ.silenced_until_us = Some(now_us + granted_us);
        out.emit(occ, Phase::Update, occ.state(), now_us);
        Ok(alarms)
    }

    fn find(
        &mut self,
        bed: &str,
        alarm_id: &str,
    ) -> Result<(&mut Condition, &mut EngineStats), AlarmError> {
        let cond = self.beds.get_mut(bed).and_then(|b| {
            b.conditions
                .values_mut()
                .find(|c| c.occ.as_ref().is_some_and(|o| o.alarm_id == alarm_id))
        });
        match cond {
            Some(c) => Ok((c, &mut self.stats)),
            None => Err(AlarmError::UnknownAlarm {
                bed: bed.to_string(),
                alarm_id: alarm_id.to_string(),
            }),
        }
    }

    /// Checks a clinician's limit change for one parameter at one bed without applying it:
    /// finite values, low below high (by twice the hysteresis), each value set inside the rule's
    /// hard bounds (`low_range`, `high_range`; a side without bounds cannot be changed at the
    /// bedside), and a reason for switching off a limit the config has on. Returns the sides
    /// switched off (`low`, `high`, `low and high`), if any.
    pub fn check_bed_limits(
        &self,
        bed: &str,
        mdc_code: u32,
        change: &LimitChange,
    ) -> Result<Option<String>, AlarmError> {
        let refuse = |message: String| AlarmError::InvalidLimits {
            bed: bed.to_string(),
            mdc_code,
            message,
        };
        let rule = self
            .limit_by_code
            .get(&mdc_code)
            .map(|&i| &self.config.limits[i]);
        let hysteresis = rule.map_or(0.0, |r| r.hysteresis);
        check_limits(change.low, change.high, hysteresis).map_err(refuse)?;
        let Some(rule) = rule else {
            // An unwatched code: the clinician adds an alarm the config does not have.
            return Ok(None);
        };
        let label = rule.display_label();
        let mut off = Vec::new();
        for (side, new, default, range) in [
            ("low", change.low, rule.low, rule.low_range),
            ("high", change.high, rule.high, rule.high_range),
        ] {
            match (new, range) {
                (Some(v), Some([min, max])) if v < min || v > max => {
                    return Err(refuse(format!(
                        "{label} {side} limit {} is outside its hard bounds {}..{} (alarms.limits[{}].{side}_range)",
                        fmt_value(v),
                        fmt_value(min),
                        fmt_value(max),
                        rule.id
                    )))
                }
                (Some(_), Some(_)) => {}
                (Some(v), None) if Some(v) != default => {
                    return Err(refuse(format!(
                        "{label} {side} limit cannot be changed at the bedside: alarms.limits[{}].{side}_range is not configured",
                        rule.id
                    )))
                }
                (Some(_), None) => {}
                (None, _) if default.is_some() => off.push(side),
                (None, _) => {}
            }
        }
        if off.is_empty() {
            return Ok(None);
        }
        let sides = off.join(" and ");
        if !rule.off_allowed {
            return Err(refuse(format!(
                "{label} {sides} limit may not be switched off at this gateway (alarms.limits[{}].off_allowed)",
                rule.id
            )));
        }
        if change.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
            return Err(refuse(format!(
                "switching off the {label} {sides} limit needs a reason"
            )));
        }
        Ok(Some(sides))
    }

    /// Sets a clinician's limits for one parameter at one bed, replacing the config defaults
    /// (`None` switches that side off), after [`Engine::check_bed_limits`]. Applied from the next
    /// reading of that parameter. The caller persists the change (with its audit row) first.
    pub fn set_bed_limits(
        &mut self,
        bed: &str,
        mdc_code: u32,
        change: &LimitChange,
    ) -> Result<(), AlarmError> {
        let off = self.check_bed_limits(bed, mdc_code, change)?;
        let off = off.map(|sides| {
            (
                sides,
                change.reason.clone().unwrap_or_default(),
                change.who.clone(),
                change.at_us,
            )
        });
        self.beds
            .entry(bed.to_string())
            .or_default()
            .overrides
            .insert(
                mdc_code,
                Override {
                    limits: Limits {
                        low: change.low,
                        high: change.high,
                    },
                    off,
                },
            );
        Ok(())
    }

    /// Limits switched off at the bedside, per bed, for the bed cards.
    pub fn limits_off(&self) -> Vec<LimitOff> {
        let mut v = Vec::new();
        for (bed, state) in &self.beds {
            for (code, o) in &state.overrides {
                let Some((sides, reason, who, since_us)) = &o.off else {
                    continue;
                };
                let label = self
                    .limit_by_code
                    .get(code)
                    .map(|&i| self.config.limits[i].display_label().to_string())
                    .unwrap_or_else(|| code.to_string());
                v.push(LimitOff {
                    bed: bed.clone(),
                    mdc_code: *code,
                    label,
                    sides: sides.clone(),
                    reason: reason.clone(),
                    who: who.clone(),
                    since_us: *since_us,
                });
            }
        }
        v.sort_by(|a, b| (&a.bed, a.mdc_code).cmp(&(&b.bed, b.mdc_code)));
        v
    }

    /// Returns one parameter at one bed to the config defaults.
    pub fn clear_bed_limits(&mut self, bed: &str, mdc_code: u32) {
        if let Some(b) = self.beds.get_mut(bed) {
            b.overrides.remove(&mdc_code);
        }
    }

    /// The limits in force for one parameter at one bed (override, else config), if any.
    pub fn effective_limits(&self, bed: &str, mdc_code: u32) -> Option<Limits> {
        let o = self
            .beds
            .get(bed)
            .and_then(|b| b.overrides.get(&mdc_code).map(|o| o.limits));
        o.or_else(|| {
            self.limit_by_code.get(&mdc_code).map(|&i| Limits {
                low: self.config.limits[i].low,
                high: self.config.limits[i].high,
            })
        })
    }

    /// Open alarms of one bed (active, acknowledged, silenced, latched), highest priority first,
    /// then oldest first.
    pub fn active(&self, bed: &str) -> Vec<AlarmView> {
        let mut views: Vec<AlarmView> = self
            .beds
            .get(bed)
            .into_iter()
            .flat_map(|b| b.conditions.values())
            .filter_map(|c| c.occ.as_ref().map(|o| o.view(bed)))
            .collect();
        sort_views(&mut views);
        views
    }

    /// Open alarms of every bed, highest priority first, then oldest first.
    pub fn active_all(&self) -> Vec<AlarmView> {
        let mut views: Vec<AlarmView> = self
            .beds
            .iter()
            .flat_map(|(name, b)| {
                b.conditions
                    .values()
                    .filter_map(move |c| c.occ.as_ref().map(|o| o.view(name)))
            })
            .collect();
        sort_views(&mut views);
        views
    }

    pub fn stats(&self) -> EngineStats {
        self.stats.clone()
    }

    /// Late readings counted for one bed.
    pub fn late_readings(&self, bed: &str) -> u64 {
        self.stats
            .late_readings_by_bed
            .get(bed)
            .copied()
            .unwrap_or(0)
    }
}

fn sort_views(views: &mut [AlarmView]) {
    views.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.since_us.cmp(&b.since_us))
            .then_with(|| a.alarm_id.cmp(&b.alarm_id))
    });
}

fn expire_silences(
    name: &str,
    bed: &mut BedState,
    now_us: i64,
    alarms: &mut Vec<Alarm>,
    stats: &mut EngineStats,
) {
    let mut out = Out {
        bed: name,
        alarms,
        stats,
    };
    for cond in bed.conditions.values_mut() {
        if let Some(occ) = cond.occ.as_mut() {
            if occ.silenced_until_us.is_some_and(|until| until <= now_us) {
                occ.silenced_until_us = None;
                out.emit(occ, Phase::Update, occ.state(), now_us);
            }
        }
    }
}

fn adhoc_rule(code: u32, refid: &str) -> LimitRule {
    LimitRule {
        id: format!("custom-{code}"),
        label: if refid.is_empty() {
            code.to_string()
        } else {
            refid.to_string()
        },
        mdc_codes: vec![code],
        low: None,
        high: None,
        priority: Priority::Medium,
        sustain_s: 10,
        hysteresis: 0.0,
        escalate_below: None,
        escalate_above: None,
        escalate_priority: Priority::High,
        low_range: None,
        high_range: None,
        off_allowed: true,
    }
}

fn eval_limit(
    bed: &mut BedState,
    rule: &LimitRule,
    limits: Limits,
    obs: &Observation,
    v: f64,
    t: i64,
    out: &mut Out<'_>,
) {
    let key = format!("limit:{}:{}", rule.id, obs.mdc_code);
    let cond = bed.conditions.entry(key.clone()).or_default();
    let h = rule.hysteresis;
    let violation = match limits {
        Limits { low: Some(l), .. } if v < l => Some((Side::Low, l)),
        Limits { high: Some(hi), .. } if v > hi => Some((Side::High, hi)),
        _ => None,
    };
    let Some((side, limit)) = violation else {
        cond.pending = None;
        let inside =
            limits.low.is_none_or(|l| v >= l + h) && limits.high.is_none_or(|hi| v <= hi - h);
        if inside {
            cond.clear(t, out);
        }
        return;
    };

    // Escalation, with hysteresis on the way back once escalated.
    let escalated = cond
        .occ
        .as_ref()
        .is_some_and(|o| o.condition_present && o.priority >= rule.escalate_priority);
    let margin = if escalated { h } else { 0.0 };
    let beyond = rule.escalate_below.is_some_and(|e| v < e + margin)
        || rule.escalate_above.is_some_and(|e| v > e - margin);
    let priority = if beyond {
        rule.escalate_priority
    } else {
        rule.priority
    };
    let op = if side == Side::Low { "<" } else { ">" };
    let raise = Raise {
        source: format!("limit:{}", rule.id),
        mdc_code: obs.mdc_code,
        alert_type: AlertType::Physiological,
        device_id: obs.device_id.clone(),
        patient_id: obs.patient_id.clone(),
        priority,
        text: format!(
            "{} {} {op} {}",
            rule.display_label(),
            fmt_value(v),
            fmt_value(limit)
        ),
    };

    if cond.is_present() {
        cond.raise(&key, raise, t, out);
        return;
    }
    let since = match cond.pending {
        Some((since, s)) if s == side => since,
        _ => {
            cond.pending = Some((t, side));
            t
        }
    };
    if t - since >= i64::from(rule.sustain_s) * US_PER_S {
        cond.pending = None;
        cond.raise(&key, raise, t, out);
    }
}

/// `reference`: the largest (drop) or smallest (rise) reading of the rule's window, `v` included.
fn eval_rate(
    bed: &mut BedState,
    rule: &RateRule,
    reference: f64,
    obs: &Observation,
    v: f64,
    t: i64,
    out: &mut Out<'_>,
) {
    let change = match rule.direction {
        Direction::Drop => reference - v,
        Direction::Rise => v - reference,
    };
    let key = format!("rate:{}:{}", rule.id, obs.mdc_code);
    if change > rule.amount {
        let verb = if rule.direction == Direction::Drop {
            "fell"
        } else {
            "rose"
        };
        let raise = Raise {
            source: format!("rate:{}", rule.id),
            mdc_code: obs.mdc_code,
            alert_type: AlertType::Physiological,
            device_id: obs.device_id.clone(),
            patient_id: obs.patient_id.clone(),
            priority: rule.priority,
            text: format!(
                "{} {verb} {} in {} s ({} to {})",
                rule.display_label(),
                fmt_value(change),
                rule.within_s,
                fmt_value(reference),
                fmt_value(v)
            ),
        };
        bed.conditions
            .entry(key.clone())
            .or_default()
            .raise(&key, raise, t, out);
    } else if change <= rule.amount / 2.0 {
        if let Some(c) = bed.conditions.get_mut(&key) {
            c.clear(t, out);
        }
    }
}

fn eval_news2(
    bed: &mut BedState,
    config: &AlarmConfig,
    obs: &Observation,
    t: i64,
    out: &mut Out<'_>,
) {
    let cfg = &config.news2;
    let max_age_us = i64::from(cfg.max_age_s) * US_PER_S;
    let latest = |p: News2Param| {
        bed.news2[p.index()]
            .filter(|&(ts, _)| ts >= t - max_age_us)
            .map(|(_, v)| v)
    };
    let inputs = News2Inputs {
        resp_rate: latest(News2Param::RespRate),
        spo2: latest(News2Param::Spo2),
        systolic: latest(News2Param::Systolic),
        pulse: latest(News2Param::Pulse),
        temperature: latest(News2Param::Temperature),
        on_oxygen: false,
        not_alert: false,
    };
    let score = news2::score(&inputs, cfg.spo2_scale);
    let priority = if score.total >= cfg.high_at {
        Some(Priority::High)
    } else if score.total >= cfg.alarm_at || (cfg.single_parameter_alarm && score.max_single >= 3) {
        Some(Priority::Medium)
    } else {
        None
    };
    let key = NEWS2_SOURCE.to_string();
    match priority {
        Some(priority) => {
            let mut text = format!("NEWS2 {}", score.total);
            if score.max_single >= 3 {
                text.push_str(", a parameter scores 3");
            }
            if score.measured < 5 {
                text.push_str(&format!(" ({} of 5 parameters)", score.measured));
            }
            let raise = Raise {
                source: NEWS2_SOURCE.to_string(),
                mdc_code: MDC_EVT_ALARM,
                alert_type: AlertType::Physiological,
                device_id: obs.device_id.clone(),
                patient_id: obs.patient_id.clone(),
                priority,
                text,
            };
            bed.conditions
                .entry(key.clone())
                .or_default()
                .raise(&key, raise, t, out);
        }
        None => {
            if let Some(c) = bed.conditions.get_mut(&key) {
                c.clear(t, out);
            }
        }
    }
}

#[cfg(test)]
mod rate_window_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The monotonic queue gives exactly what a scan of every reading in the window gives.
        #[test]
        fn the_extreme_is_that_of_a_scan_of_the_window(
            steps in prop::collection::vec((0i64..3_000_000, -50i32..150), 1..400),
            within_s in 1i64..120,
            drop in any::<bool>(),
        ) {
            let direction = if drop { Direction::Drop } else { Direction::Rise };
            let mut window = RateWindow::default();
            let mut all: Vec<(i64, f64)> = Vec::new();
            let mut t = 0i64;
            for (dt, v) in steps {
                t += dt;
                let v = f64::from(v) / 2.0;
                all.push((t, v));
                let from = t - within_s * US_PER_S;
                let got = window.push(direction, t, v, from);
                let scan = all.iter().filter(|&&(ts, _)| ts >= from).map(|&(_, x)| x);
                let want = match direction {
                    Direction::Drop => scan.fold(v, f64::max),
                    Direction::Rise => scan.fold(v, f64::min),
                };
                prop_assert_eq!(got, want);
            }
        }
    }
}
