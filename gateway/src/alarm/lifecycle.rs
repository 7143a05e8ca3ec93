//! The lifecycle of one alarm occurrence (IHE PCD-04 phases and states): what the engine
//! records when a condition starts, changes priority, is acknowledged, silenced, latched or ends.
//! Also the alarm sources and codes every rule shares, and the engine's counters.

use std::collections::BTreeMap;

use icu_protos::v1::Alarm;
use serde::Serialize;

use super::config::Priority;

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
    /// `update` records sent for a changed text after the refresh interval.
    pub refreshes: u64,
    /// De-escalations held back because the lower priority had not lasted
    /// `deescalate_after_s` yet (counted once per held reading).
    pub deescalations_held: u64,
}

/// The engine's pacing of non-urgent records, from [`super::AlarmConfig`].
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Timing {
    /// `refresh_s` in µs.
    pub(super) refresh_us: i64,
    /// `deescalate_after_s` in µs.
    pub(super) deescalate_after_us: i64,
}

/// Which limit a pending excursion crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Low,
    High,
}

#[derive(Debug)]
pub(super) struct Occurrence {
    pub(super) alarm_id: String,
    pub(super) source: String,
    pub(super) mdc_code: u32,
    pub(super) alert_type: AlertType,
    pub(super) device_id: String,
    pub(super) patient_id: String,
    pub(super) priority: Priority,
    pub(super) text: String,
    pub(super) since_us: i64,
    pub(super) condition_present: bool,
    /// It was high priority at some point and has not been acknowledged since: it latches.
    pub(super) latch_pending: bool,
    pub(super) acknowledged_by: Option<String>,
    pub(super) silenced_by: Option<String>,
    pub(super) silenced_until_us: Option<i64>,
    /// Silences granted so far, and their total length in µs.
    pub(super) silences: u32,
    pub(super) silenced_total_us: i64,
    /// Event time of the last record sent for it.
    pub(super) sent_us: i64,
    /// The text changed since the last record (sent by [`Condition::refresh`]).
    pub(super) text_changed: bool,
    /// A lower priority seen while present: since when, and the highest such priority since.
    pub(super) lower: Option<(i64, Priority)>,
}

impl Occurrence {
    pub(super) fn state(&self) -> AlarmState {
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

    pub(super) fn record(
        &self,
        bed: &str,
        phase: Phase,
        state: AlarmState,
        event_time_us: i64,
    ) -> Alarm {
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
            acknowledged_by: self.acknowledged_by.clone().unwrap_or_default(),
            silenced_by: self.silenced_by.clone().unwrap_or_default(),
        }
    }

    pub(super) fn view(&self, bed: &str) -> AlarmView {
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
pub(super) struct Raise {
    pub(super) source: String,
    pub(super) mdc_code: u32,
    pub(super) alert_type: AlertType,
    pub(super) device_id: String,
    pub(super) patient_id: String,
    pub(super) priority: Priority,
    pub(super) text: String,
}

#[derive(Debug, Default)]
pub(super) struct Condition {
    /// Limit rules: event time and side of the first reading of the current excursion.
    pub(super) pending: Option<(i64, Side)>,
    pub(super) occ: Option<Occurrence>,
}

/// Emits records and counts them.
pub(super) struct Out<'a> {
    pub(super) bed: &'a str,
    pub(super) alarms: &'a mut Vec<Alarm>,
    pub(super) stats: &'a mut EngineStats,
    pub(super) timing: Timing,
}

impl Out<'_> {
    /// One record for `occ` (which then counts as sent with its current text).
    pub(super) fn emit(&mut self, occ: &mut Occurrence, phase: Phase, state: AlarmState, t: i64) {
        occ.sent_us = t;
        occ.text_changed = false;
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
    pub(super) fn is_present(&self) -> bool {
        self.occ.as_ref().is_some_and(|o| o.condition_present)
    }

    /// The condition holds at event time `t` with the priority and text in `r`.
    pub(super) fn raise(&mut self, key: &str, r: Raise, t: i64, out: &mut Out<'_>) {
        let Some(occ) = self.occ.as_mut() else {
            let mut occ = Occurrence {
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
                sent_us: t,
                text_changed: false,
                lower: None,
            };
            out.emit(&mut occ, Phase::Start, AlarmState::Active, t);
            self.occ = Some(occ);
            return;
        };
        let was_present = occ.condition_present;
        occ.condition_present = true;
        if occ.text != r.text {
            occ.text = r.text;
            occ.text_changed = true;
        }
        if r.priority > occ.priority {
            occ.priority = r.priority;
            occ.lower = None;
            occ.latch_pending |= r.priority == Priority::High;
            occ.acknowledged_by = None;
            occ.silenced_by = None;
            occ.silenced_until_us = None;
            let state = occ.state();
            out.emit(occ, Phase::Escalate, state, t);
        } else if r.priority < occ.priority && was_present {
            // De-escalate only once the lower priority has held `deescalate_after_s`, to the
            // highest priority seen meanwhile: a value wavering around a threshold stays at
            // the higher priority instead of sending an escalate/deescalate pair each time.
            let (since, lower) = match occ.lower {
                Some((since, p)) => (since, p.max(r.priority)),
                None => (t, r.priority),
            };
            if t - since >= out.timing.deescalate_after_us {
                occ.priority = lower;
                occ.lower = None;
                let state = occ.state();
                out.emit(occ, Phase::Deescalate, state, t);
            } else {
                occ.lower = Some((since, lower));
                out.stats.deescalations_held += 1;
            }
        } else {
            if r.priority == occ.priority {
                occ.lower = None;
            }
            if !was_present {
                // A latched alarm whose condition returns: active again, keeping its priority.
                let state = occ.state();
                out.emit(occ, Phase::Update, state, t);
            }
        }
    }

    /// Sends an `update` with the latest text when it changed and the last record is at least
    /// `refresh_s` old; nothing otherwise.
    pub(super) fn refresh(&mut self, now: i64, out: &mut Out<'_>) {
        let Some(occ) = self.occ.as_mut() else { return };
        if occ.text_changed && now - occ.sent_us >= out.timing.refresh_us {
            out.stats.refreshes += 1;
            let state = occ.state();
            out.emit(occ, Phase::Update, state, now);
        }
    }

    /// The condition no longer holds at time `t`.
    pub(super) fn clear(&mut self, t: i64, out: &mut Out<'_>) {
        let Some(occ) = self.occ.as_mut() else { return };
        if !occ.condition_present {
            return;
        }
        occ.condition_present = false;
        occ.lower = None;
        if occ.latch_pending {
            // A latched alarm shows the priority that demanded acknowledgement.
            occ.priority = Priority::High;
            let state = occ.state();
            out.emit(occ, Phase::Update, state, t);
        } else {
            out.emit(occ, Phase::End, AlarmState::Inactive, t);
            self.occ = None;
        }
    }
}

pub(super) fn sort_views(views: &mut [AlarmView]) {
    views.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.since_us.cmp(&b.since_us))
            .then_with(|| a.alarm_id.cmp(&b.alarm_id))
    });
}
