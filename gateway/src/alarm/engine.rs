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
//! - `update` also for a changed text (the latest value, the NEWS2 score) of an open alarm, at
//!   most once per `refresh_s` ([`Engine::tick`]); a lower priority de-escalates only after it
//!   has held `deescalate_after_s`, while escalation is immediate. So an alarm sends records
//!   when something a clinician acts on changes, not with every reading.
//!
//! NEWS2 is scored once per bed per message ([`Engine::on_message`]).
//!
//! The parts: the rules and the per-bed state they keep are in `rules.rs`, an occurrence's
//! lifecycle in `lifecycle.rs`, bounded trust in device time in `device_time.rs`; this file
//! holds the engine's entry points (readings, technical conditions, acknowledge, silence,
//! bedside limits, ticks).

use std::collections::{BTreeMap, HashMap};

use icu_protos::v1::{Alarm, Observation, ObservationStatus};
use serde::Serialize;

use super::config::{check_limits, AlarmConfig, Priority};
use super::device_time::{checked_time, fmt_offset, DeviceClock, DeviceClockView};
use super::lifecycle::{
    sort_views, AlarmState, AlarmView, AlertType, Condition, EngineStats, Out, Phase, Raise,
    Timing, ALARM_OUTPUT_SOURCE, DEVICE_CLOCK_SOURCE, GATEWAY_BED, MDC_EVT_ALARM, NEWS2_SOURCE,
    STALE_FEED_SOURCE,
};
use super::news2::News2Param;
use super::rules::{
    adhoc_rule, eval_limit, eval_news2, eval_rate, fmt_value, BedState, Limits, Override,
    RateWindow, US_PER_S,
};
use crate::domain::FieldProblem;

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
    /// `refresh_s` and `deescalate_after_s` in µs.
    timing: Timing,
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
        let timing = Timing {
            refresh_us: i64::from(config.refresh_s) * US_PER_S,
            deescalate_after_us: i64::from(config.deescalate_after_s) * US_PER_S,
        };
        Ok(Engine {
            config,
            limit_by_code,
            rates_by_code,
            beds: BTreeMap::new(),
            stats: EngineStats::default(),
            clocks: HashMap::new(),
            timing,
        })
    }

    pub fn config(&self) -> &AlarmConfig {
        &self.config
    }

    /// A configuration reload: the new rules apply from the next reading on; what the engine
    /// knows of each bed (latest values, open alarms, clinicians' limits, device clocks) stays.
    /// An open alarm whose rule is gone (its id removed, its code no longer watched by it, NEWS2
    /// switched off) ends as any alarm whose condition ends: a high-priority one latches until
    /// acknowledged. Returns those records; a config with problems changes nothing.
    pub fn replace_config(
        &mut self,
        config: AlarmConfig,
        now_us: i64,
    ) -> Result<Vec<Alarm>, Vec<FieldProblem>> {
        let fresh = Engine::new(config)?;
        self.config = fresh.config;
        self.limit_by_code = fresh.limit_by_code;
        self.rates_by_code = fresh.rates_by_code;
        self.timing = fresh.timing;
        let config = &self.config;
        let still_watched = |key: &str| -> bool {
            if key == NEWS2_SOURCE {
                return config.news2.enabled;
            }
            let (kind, rest) = match key.split_once(':') {
                Some(("limit", rest)) => ("limit", rest),
                Some(("rate", rest)) => ("rate", rest),
                // Device conditions and technical alarms are not rules of this config.
                _ => return true,
            };
            let Some((id, code)) = rest.rsplit_once(':') else {
                return true;
            };
            let Ok(code) = code.parse::<u32>() else {
                return true;
            };
            match kind {
                // A clinician's limit on a parameter without a configured rule.
                "limit" if id.starts_with("custom-") => true,
                "limit" => config
                    .limits
                    .iter()
                    .any(|r| r.id == id && r.mdc_codes.contains(&code)),
                _ => config
                    .rates
                    .iter()
                    .any(|r| r.id == id && r.mdc_code == code),
            }
        };
        let mut alarms = Vec::new();
        let timing = self.timing;
        for (bed_id, bed) in &mut self.beds {
            let mut out = Out {
                bed: bed_id,
                alarms: &mut alarms,
                stats: &mut self.stats,
                timing,
            };
            for (key, condition) in bed.conditions.iter_mut() {
                if !still_watched(key) {
                    condition.clear(now_us, &mut out);
                }
            }
        }
        Ok(alarms)
    }

    /// Applies one decoded reading; returns the alarm state changes it causes. The same as a
    /// message of one reading ([`Engine::on_message`]).
    pub fn on_observation(&mut self, obs: &Observation, now_us: i64) -> Vec<Alarm> {
        self.on_message(std::slice::from_ref(obs), now_us)
    }

    /// Applies the readings of one message, in order; returns the alarm state changes they
    /// cause. NEWS2 is scored once per bed per message, after all its readings: scoring after
    /// each one would see a half-updated set of values (a message of five vital signs could
    /// end, latch, restart and re-escalate the NEWS2 alarm within itself).
    pub fn on_message(&mut self, message: &[Observation], now_us: i64) -> Vec<Alarm> {
        let mut alarms = Vec::new();
        // Per bed: the last reading of the message that fed NEWS2, and its event time.
        let mut news2: Vec<(usize, i64)> = Vec::new();
        for (i, obs) in message.iter().enumerate() {
            if let Some(t) = self.apply(obs, now_us, &mut alarms) {
                match news2.iter_mut().find(|(j, _)| message[*j].bed == obs.bed) {
                    Some(last) => *last = (i, t),
                    None => news2.push((i, t)),
                }
            }
        }
        let timing = self.timing;
        let Engine {
            config,
            beds,
            stats,
            ..
        } = self;
        for (i, t) in news2 {
            let obs = &message[i];
            if let Some(bed) = beds.get_mut(&obs.bed) {
                let mut out = Out {
                    bed: &obs.bed,
                    alarms: &mut alarms,
                    stats,
                    timing,
                };
                eval_news2(bed, config, obs, t, &mut out);
            }
        }
        alarms
    }

    /// One reading through the limit and rate rules; records its NEWS2 parameter and returns
    /// its event time when it has one (the caller scores NEWS2).
    fn apply(&mut self, obs: &Observation, now_us: i64, alarms: &mut Vec<Alarm>) -> Option<i64> {
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
            self.clock_problem(&obs.bed, &obs.device_id, text, now_us, alarms);
        } else {
            self.clock_settle(&obs.device_id, now_us, alarms);
        }
        let status = obs.status;
        let alarmable = status == ObservationStatus::Valid as i32
            || status == ObservationStatus::Corrected as i32;
        let value = match obs.value {
            Some(v) if alarmable && v.is_finite() => v,
            _ => {
                self.stats.ignored_readings += 1;
                return None;
            }
        };
        let t = checked.t_us;
        let code = obs.mdc_code;
        let lateness_us = i64::from(self.config.allowed_lateness_s) * US_PER_S;

        let bed = self.beds.entry(obs.bed.clone()).or_default();
        expire_silences(&obs.bed, bed, now_us, alarms, &mut self.stats, self.timing);
        let last = bed.params.get(&code).and_then(|p| p.last_us);
        if let Some(last) = last {
            if t < last.saturating_sub(lateness_us) {
                self.stats.late_readings += 1;
                *self
                    .stats
                    .late_readings_by_bed
                    .entry(obs.bed.clone())
                    .or_default() += 1;
                self.note_late(obs, last - t, now_us, alarms);
                return None;
            }
            if t < last {
                self.stats.out_of_order_readings += 1;
                return None;
            }
        }

        let timing = self.timing;
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
            alarms,
            stats,
            timing,
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
                return Some(t);
            }
        }
        None
    }

    /// Expires silences and sends the refresh `update`s that are due; call about once a second
    /// with the current time.
    pub fn tick(&mut self, now_us: i64) -> Vec<Alarm> {
        let mut alarms = Vec::new();
        for (name, bed) in &mut self.beds {
            expire_silences(name, bed, now_us, &mut alarms, &mut self.stats, self.timing);
            let mut out = Out {
                bed: name,
                alarms: &mut alarms,
                stats: &mut self.stats,
                timing: self.timing,
            };
            for cond in bed.conditions.values_mut() {
                cond.refresh(now_us, &mut out);
            }
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
        expire_silences(
            bed,
            state,
            now_us,
            &mut alarms,
            &mut self.stats,
            self.timing,
        );
        let mut out = Out {
            bed,
            alarms: &mut alarms,
            stats: &mut self.stats,
            timing: self.timing,
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
        let timing = self.timing;
        let (cond, stats) = self.find(bed, alarm_id)?;
        let mut out = Out {
            bed,
            alarms: &mut alarms,
            stats,
            timing,
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
            let state = occ.state();
            out.emit(occ, Phase::Update, state, now_us);
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
        let timing = self.timing;
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
            timing,
        };
        if let Some(why) = why {
            // Past its cap the alarm re-announces itself: the silence ends now and a record
            // with its sounding state goes to every output.
            out.stats.silences_refused += 1;
            occ.silenced_until_us = None;
            occ.silenced_by = None;
            let state = occ.state();
            out.emit(occ, Phase::Update, state, now_us);
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
        let state = occ.state();
        out.emit(occ, Phase::Update, state, now_us);
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

    /// Every parameter of a bed that has limits (a configured rule or a clinician's override),
    /// with the limits in force and whether they differ from the configured default, in MDC
    /// code order: what the central station shows next to each numeric.
    pub fn bed_limits(&self, bed: &str) -> Vec<BedLimit> {
        let overrides = self.beds.get(bed).map(|b| &b.overrides);
        let mut codes: Vec<u32> = self.limit_by_code.keys().copied().collect();
        if let Some(o) = overrides {
            codes.extend(o.keys().copied());
        }
        codes.sort_unstable();
        codes.dedup();
        codes
            .into_iter()
            .filter_map(|code| {
                let default = self.limit_by_code.get(&code).map(|&i| Limits {
                    low: self.config.limits[i].low,
                    high: self.config.limits[i].high,
                });
                let limits = self.effective_limits(bed, code)?;
                Some(BedLimit {
                    mdc_code: code,
                    low: limits.low,
                    high: limits.high,
                    changed: default != Some(limits),
                    default_low: default.and_then(|d| d.low),
                    default_high: default.and_then(|d| d.high),
                })
            })
            .collect()
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

fn expire_silences(
    name: &str,
    bed: &mut BedState,
    now_us: i64,
    alarms: &mut Vec<Alarm>,
    stats: &mut EngineStats,
    timing: Timing,
) {
    let mut out = Out {
        bed: name,
        alarms,
        stats,
        timing,
    };
    for cond in bed.conditions.values_mut() {
        if let Some(occ) = cond.occ.as_mut() {
            if occ.silenced_until_us.is_some_and(|until| until <= now_us) {
                occ.silenced_until_us = None;
                let state = occ.state();
                out.emit(occ, Phase::Update, state, now_us);
            }
        }
    }
}

/// The limits of one parameter at one bed, for display ([`Engine::bed_limits`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BedLimit {
    pub mdc_code: u32,
    pub low: Option<f64>,
    pub high: Option<f64>,
    /// A clinician's override differs from the configured default.
    pub changed: bool,
    pub default_low: Option<f64>,
    pub default_high: Option<f64>,
}
