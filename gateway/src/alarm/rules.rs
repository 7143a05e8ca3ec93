//! The rules, evaluated for one reading of one bed: limits (sustain, hysteresis, escalation),
//! rate of change (a monotonic queue per rule) and NEWS2; and the per-bed state they keep.

use std::collections::{BTreeMap, HashMap, VecDeque};

use icu_protos::v1::Observation;
use serde::Serialize;

use super::config::{AlarmConfig, Direction, LimitRule, Priority, RateRule};
use super::lifecycle::{AlertType, Condition, Out, Raise, Side, MDC_EVT_ALARM, NEWS2_SOURCE};
use super::news2::{self, News2Inputs, News2Param};

pub(super) const US_PER_S: i64 = 1_000_000;

/// Effective low/high limits of one parameter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    pub low: Option<f64>,
    pub high: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Override {
    pub(super) limits: Limits,
    /// Sides switched off that the config has on: (sides, reason, who, since).
    pub(super) off: Option<(String, String, String, i64)>,
}

#[derive(Debug, Default)]
pub(super) struct ParamState {
    /// Event time of the last reading applied (the newest seen).
    pub(super) last_us: Option<i64>,
    /// Per rate rule of this code (in `rates_by_code` order), the readings of its window that
    /// can still be its extreme, oldest first (see [`RateWindow`]).
    pub(super) rate_windows: Vec<RateWindow>,
}

/// The extreme (largest for a drop rule, smallest for a rise rule) of the readings of the last
/// `within_s`, kept as a monotonic queue: a reading that a later, larger (smaller) one outlives
/// can never be the extreme again and is dropped. O(1) per reading on average, however fast a
/// device sends; the window scan this replaced cost O(readings in the window) per reading and
/// was a fifth of the gateway's CPU at 300 readings/s per bed (`cargo bench -p icu-tests
/// --bench ingest -- --perf`).
#[derive(Debug, Default)]
pub(super) struct RateWindow {
    pub(super) readings: VecDeque<(i64, f64)>,
}

impl RateWindow {
    /// Adds the reading `(t, v)` (readings arrive in time order) and returns the extreme of
    /// those at or after `from`, `v` included.
    pub(super) fn push(&mut self, direction: Direction, t: i64, v: f64, from: i64) -> f64 {
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
pub(super) struct BedState {
    pub(super) patient_id: String,
    pub(super) params: HashMap<u32, ParamState>,
    pub(super) overrides: HashMap<u32, Override>,
    pub(super) conditions: BTreeMap<String, Condition>,
    /// Latest (event time, value) per [`News2Param`].
    pub(super) news2: [Option<(i64, f64)>; 5],
}

pub(super) fn fmt_value(v: f64) -> String {
    let r = (v * 100.0).round() / 100.0;
    format!("{r}")
}

pub(super) fn adhoc_rule(code: u32, refid: &str) -> LimitRule {
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

pub(super) fn eval_limit(
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
pub(super) fn eval_rate(
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

pub(super) fn eval_news2(
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
