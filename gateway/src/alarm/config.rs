//! The `[alarms]` section of the gateway config: limit, rate-of-change and NEWS2 rules.
//!
//! Owns: the serde form of the alarm rules and their defaults (adult factory defaults from
//! protocols.md §6.1), and [`AlarmConfig::validate`], which reports every problem with its field
//! path. Per-bed limits set by clinicians are not here: they reach the engine through
//! [`super::Engine::set_bed_limits`] and take precedence over these defaults.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::domain::FieldProblem;

/// IEC 60601-1-8 alarm priority. Ordered `Low < Medium < High`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Awareness; constant cyan or yellow light.
    Low,
    /// Prompt response required; slow yellow flashing.
    Medium,
    /// Immediate response required; fast red flashing. High alarms latch until acknowledged.
    High,
}

impl Priority {
    /// The IHE PCD-04 / POCD code: `PH`, `PM` or `PL`.
    pub fn code(self) -> &'static str {
        match self {
            Priority::High => "PH",
            Priority::Medium => "PM",
            Priority::Low => "PL",
        }
    }
}

/// Direction of a rate-of-change rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The value falls by more than `amount`.
    Drop,
    /// The value rises by more than `amount`.
    Rise,
}

/// Alarm rules applied to every bed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// Low/high limit rules. Leaving this out uses the adult defaults (HR, pulse, SpO2, RR,
    /// systolic BP, temperature); writing it replaces all of them. An MDC code may appear in at
    /// most one limit rule.
    #[serde(default = "default_limits")]
    pub limits: Vec<LimitRule>,
    /// Rate-of-change rules. Leaving this out uses the default (SpO2 falling more than 5 points
    /// within 60 s, medium priority).
    #[serde(default = "default_rates")]
    pub rates: Vec<RateRule>,
    /// The NEWS2 early-warning score computed per bed from its latest values.
    #[serde(default)]
    pub news2: News2Config,
    /// A reading older than the newest one seen for the same bed and parameter by more than this
    /// many seconds (event time) is counted as late and not alarmed on.
    #[serde(default = "default_allowed_lateness_s")]
    pub allowed_lateness_s: u32,
    /// Priority of the technical alarm raised when a device's feed goes stale.
    #[serde(default = "default_stale_feed_priority")]
    pub stale_feed_priority: Priority,
    /// Longest silence (audio pause) a user may ask for, in seconds; longer requests are cut to
    /// this.
    #[serde(default = "default_max_silence_s")]
    pub max_silence_s: u32,
    /// How often one alarm occurrence may be silenced again after its first silence. The next
    /// request is refused and the alarm sounds again (re-announces itself).
    #[serde(default = "default_max_silence_renewals")]
    pub max_silence_renewals: u32,
    /// Most seconds one alarm occurrence may spend silenced in all; a silence is cut to what is
    /// left, and a request with nothing left is refused and the alarm sounds again.
    #[serde(default = "default_max_silence_total_s")]
    pub max_silence_total_s: u32,
    /// An open alarm whose text (its latest value, its NEWS2 score) changes without a change
    /// that clinicians act on sends an `update` with the latest text at most once per this many
    /// seconds (IHE PCD-04 practice). Start, escalation, end, acknowledge, silence and latching
    /// are always sent at once.
    #[serde(default = "default_refresh_s")]
    pub refresh_s: u32,
    /// A lower priority must hold this many seconds (event time) before an alarm is
    /// de-escalated; escalation is immediate. Keeps a value that wavers around a priority
    /// threshold from sending escalate/deescalate pairs; 0 de-escalates at once.
    #[serde(default = "default_deescalate_after_s")]
    pub deescalate_after_s: u32,
    /// How far a device's own clock is trusted (device time against receive time).
    #[serde(default)]
    pub device_clock: DeviceClockConfig,
    /// When an alarm output (PCD-04 alarm manager, MQTT alarm broker, the page's event stream)
    /// that is down raises the `gateway:alarm-output` technical alarm.
    #[serde(default)]
    pub outputs: OutputsConfig,
}

/// Bounds of trust in device time (OBX-14 / OBR-7 / a payload's timestamp). A reading whose
/// device time lies more than `max_ahead_s` after its receive time, or more than `max_behind_s`
/// before it, cannot move the alarm engine's event-time clock: it is evaluated (and associated
/// with a patient) at its receive time, flagged `device_time_untrusted`, and the device's clock
/// is shown as unsynced with the `gateway:device-clock` technical alarm, until its times have
/// been plausible for `settle_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceClockConfig {
    /// Seconds a device time may lie ahead of the receive time (clock offset and jitter).
    #[serde(default = "default_max_ahead_s")]
    pub max_ahead_s: u32,
    /// Seconds a device time may lie behind the receive time (a sender's retries and queueing).
    #[serde(default = "default_max_behind_s")]
    pub max_behind_s: u32,
    /// The technical alarm ends once the device's times have been plausible (and no reading was
    /// late past the threshold) for this many seconds.
    #[serde(default = "default_clock_settle_s")]
    pub settle_s: u32,
    /// Late readings (older than `allowed_lateness_s` behind the newest one of their parameter)
    /// from one device within `late_window_s` that raise the technical alarm.
    #[serde(default = "default_late_alarm_count")]
    pub late_alarm_count: u32,
    #[serde(default = "default_late_window_s")]
    pub late_window_s: u32,
    /// Priority of the `gateway:device-clock` technical alarm.
    #[serde(default = "default_clock_priority")]
    pub priority: Priority,
}

/// The `gateway:alarm-output` technical alarm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsConfig {
    /// Seconds an alarm output may be down (not connected, or failing to deliver) before the
    /// technical alarm is raised; it ends when the output delivers again.
    #[serde(default = "default_output_down_after_s")]
    pub down_after_s: u32,
    /// Priority of the technical alarm.
    #[serde(default = "default_output_priority")]
    pub priority: Priority,
    /// Pages (central station, bedside screens) that must hold the event stream open; fewer
    /// for `down_after_s` raise the technical alarm. 0 (the default) watches only for pages that
    /// fall behind and lose alarm events.
    #[serde(default)]
    pub page_clients_required: u32,
}

impl Default for DeviceClockConfig {
    fn default() -> Self {
        Self {
            max_ahead_s: default_max_ahead_s(),
            max_behind_s: default_max_behind_s(),
            settle_s: default_clock_settle_s(),
            late_alarm_count: default_late_alarm_count(),
            late_window_s: default_late_window_s(),
            priority: default_clock_priority(),
        }
    }
}

impl Default for OutputsConfig {
    fn default() -> Self {
        Self {
            down_after_s: default_output_down_after_s(),
            priority: default_output_priority(),
            page_clients_required: 0,
        }
    }
}

fn default_max_silence_renewals() -> u32 {
    2
}
fn default_max_silence_total_s() -> u32 {
    600
}
fn default_refresh_s() -> u32 {
    15
}
fn default_deescalate_after_s() -> u32 {
    15
}
fn default_max_ahead_s() -> u32 {
    10
}
fn default_max_behind_s() -> u32 {
    300
}
fn default_clock_settle_s() -> u32 {
    30
}
fn default_late_alarm_count() -> u32 {
    5
}
fn default_late_window_s() -> u32 {
    60
}
fn default_clock_priority() -> Priority {
    Priority::Low
}
fn default_output_down_after_s() -> u32 {
    30
}
fn default_output_priority() -> Priority {
    Priority::Medium
}

/// A low/high limit on one parameter (possibly measured under several MDC codes). Each code is
/// watched separately: an ECG heart rate and a pulse-oximeter rate raise separate alarms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRule {
    /// Short stable name (letters, digits, `-`, `_`), part of alarm ids; the alarm source is
    /// `limit:<id>`.
    pub id: String,
    /// Name shown in alarm texts, e.g. `SpO2` gives "SpO2 84 < 90". Defaults to the id.
    #[serde(default)]
    pub label: String,
    /// IEEE 11073 MDC codes this rule watches, e.g. `[150456]` for SpO2.
    pub mdc_codes: Vec<u32>,
    /// Alarm when the value is below this. Leave out for no low limit.
    #[serde(default)]
    pub low: Option<f64>,
    /// Alarm when the value is above this. Leave out for no high limit.
    #[serde(default)]
    pub high: Option<f64>,
    /// Priority of the alarm: `"high"`, `"medium"` or `"low"`.
    #[serde(default = "default_limit_priority")]
    pub priority: Priority,
    /// Seconds (event time) the value must stay outside the limit before the alarm starts, so a
    /// single artefact does not alarm. 0 alarms on the first reading outside.
    #[serde(default = "default_sustain_s")]
    pub sustain_s: u32,
    /// Absolute margin: an alarm ends only when the value is back inside the limit by at least
    /// this much, so a borderline value does not chatter. 0 ends as soon as it is inside.
    #[serde(default)]
    pub hysteresis: f64,
    /// A value below this (while in alarm) raises the priority to `escalate_priority`.
    #[serde(default)]
    pub escalate_below: Option<f64>,
    /// A value above this (while in alarm) raises the priority to `escalate_priority`.
    #[serde(default)]
    pub escalate_above: Option<f64>,
    /// Priority used beyond an escalation threshold.
    #[serde(default = "default_escalate_priority")]
    pub escalate_priority: Priority,
    /// Hard bounds `[min, max]` for a low limit set at the bedside (e.g. SpO2 low between 80 and
    /// 95). Without them the low limit cannot be changed at the bedside.
    #[serde(default)]
    pub low_range: Option<[f64; 2]>,
    /// Hard bounds `[min, max]` for a high limit set at the bedside.
    #[serde(default)]
    pub high_range: Option<[f64; 2]>,
    /// Whether a clinician may switch a limit of this rule off (always with a reason, shown on
    /// the bed card until the limit is restored).
    #[serde(default = "default_true")]
    pub off_allowed: bool,
}

/// A rate-of-change rule: alarm when the value moves by more than `amount` within `within_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    /// Short stable name (letters, digits, `-`, `_`); the alarm source is `rate:<id>`.
    pub id: String,
    /// Name shown in alarm texts. Defaults to the id.
    #[serde(default)]
    pub label: String,
    /// IEEE 11073 MDC code watched, e.g. 150456 for SpO2.
    pub mdc_code: u32,
    /// `"drop"` or `"rise"`.
    pub direction: Direction,
    /// The change that raises the alarm (strictly more than this). The alarm ends when the
    /// change within the window is back to half of this or less.
    pub amount: f64,
    /// Window length in seconds (event time).
    pub within_s: u32,
    /// Priority of the alarm.
    #[serde(default = "default_rate_priority")]
    pub priority: Priority,
}

/// NEWS2 (RCP 2017) from each bed's latest respiration rate, SpO2, systolic BP, pulse and
/// temperature. Consciousness is taken as Alert and the patient as breathing air, since no
/// device reports them; a missing parameter counts 0, so the score is a lower bound and an
/// alarm on it is never caused by missing data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct News2Config {
    /// Compute NEWS2 and alarm on it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Aggregate score that raises a medium-priority alarm (RCP "medium": 5).
    #[serde(default = "default_news2_alarm_at")]
    pub alarm_at: u8,
    /// Aggregate score that raises a high-priority alarm (RCP "high": 7).
    #[serde(default = "default_news2_high_at")]
    pub high_at: u8,
    /// SpO2 scale: 1 (default) or 2 (hypercapnic respiratory failure, target 88-92 %).
    #[serde(default = "default_spo2_scale")]
    pub spo2_scale: u8,
    /// Raise a medium alarm when a single parameter scores 3 (RCP "low-medium").
    #[serde(default = "default_true")]
    pub single_parameter_alarm: bool,
    /// A parameter's latest value older than this many seconds (event time) no longer counts.
    #[serde(default = "default_news2_max_age_s")]
    pub max_age_s: u32,
}

fn default_true() -> bool {
    true
}
fn default_allowed_lateness_s() -> u32 {
    10
}
fn default_stale_feed_priority() -> Priority {
    Priority::Medium
}
fn default_max_silence_s() -> u32 {
    120
}
fn default_limit_priority() -> Priority {
    Priority::Medium
}
fn default_escalate_priority() -> Priority {
    Priority::High
}
fn default_rate_priority() -> Priority {
    Priority::Medium
}
fn default_sustain_s() -> u32 {
    10
}
fn default_news2_alarm_at() -> u8 {
    5
}
fn default_news2_high_at() -> u8 {
    7
}
fn default_spo2_scale() -> u8 {
    1
}
fn default_news2_max_age_s() -> u32 {
    3600
}

#[allow(clippy::too_many_arguments)]
fn limit(
    id: &str,
    label: &str,
    mdc_codes: &[u32],
    low: Option<f64>,
    high: Option<f64>,
    sustain_s: u32,
    hysteresis: f64,
    escalate_below: Option<f64>,
    low_range: Option<[f64; 2]>,
    high_range: Option<[f64; 2]>,
) -> LimitRule {
    LimitRule {
        low_range,
        high_range,
        off_allowed: true,
        id: id.into(),
        label: label.into(),
        mdc_codes: mdc_codes.to_vec(),
        low,
        high,
        priority: default_limit_priority(),
        sustain_s,
        hysteresis,
        escalate_below,
        escalate_above: None,
        escalate_priority: default_escalate_priority(),
    }
}

/// Adult defaults, protocols.md §6.1.
pub fn default_limits() -> Vec<LimitRule> {
    vec![
        limit(
            "hr",
            "HR",
            &[147842],
            Some(50.0),
            Some(120.0),
            10,
            2.0,
            None,
            Some([30.0, 100.0]),
            Some([80.0, 200.0]),
        ),
        limit(
            "pr",
            "PR",
            &[149530, 149514],
            Some(50.0),
            Some(120.0),
            10,
            2.0,
            None,
            Some([30.0, 100.0]),
            Some([80.0, 200.0]),
        ),
        limit(
            "spo2",
            "SpO2",
            &[150456],
            Some(90.0),
            None,
            15,
            1.0,
            Some(85.0),
            Some([80.0, 95.0]),
            Some([95.0, 100.0]),
        ),
        limit(
            "rr",
            "RR",
            &[151562],
            Some(8.0),
            Some(30.0),
            10,
            2.0,
            None,
            Some([4.0, 20.0]),
            Some([15.0, 60.0]),
        ),
        limit(
            "sbp",
            "NIBPs",
            &[150301],
            Some(90.0),
            Some(160.0),
            10,
            2.0,
            None,
            Some([60.0, 120.0]),
            Some([100.0, 250.0]),
        ),
        limit(
            "abps",
            "ABPs",
            &[150037],
            Some(90.0),
            Some(160.0),
            10,
            2.0,
            None,
            Some([60.0, 120.0]),
            Some([100.0, 250.0]),
        ),
        limit(
            "temp",
            "Temp",
            &[150364, 150368],
            Some(35.0),
            Some(39.0),
            10,
            0.2,
            None,
            Some([32.0, 37.0]),
            Some([37.0, 42.0]),
        ),
    ]
}

/// SpO2 falling more than 5 points within 60 s.
pub fn default_rates() -> Vec<RateRule> {
    vec![RateRule {
        id: "spo2-drop".into(),
        label: "SpO2".into(),
        mdc_code: 150456,
        direction: Direction::Drop,
        amount: 5.0,
        within_s: 60,
        priority: Priority::Medium,
    }]
}

impl Default for AlarmConfig {
    fn default() -> Self {
        Self {
            limits: default_limits(),
            rates: default_rates(),
            news2: News2Config::default(),
            allowed_lateness_s: default_allowed_lateness_s(),
            stale_feed_priority: default_stale_feed_priority(),
            max_silence_s: default_max_silence_s(),
            max_silence_renewals: default_max_silence_renewals(),
            max_silence_total_s: default_max_silence_total_s(),
            refresh_s: default_refresh_s(),
            deescalate_after_s: default_deescalate_after_s(),
            device_clock: DeviceClockConfig::default(),
            outputs: OutputsConfig::default(),
        }
    }
}

impl Default for News2Config {
    fn default() -> Self {
        Self {
            enabled: true,
            alarm_at: default_news2_alarm_at(),
            high_at: default_news2_high_at(),
            spo2_scale: default_spo2_scale(),
            single_parameter_alarm: true,
            max_age_s: default_news2_max_age_s(),
        }
    }
}

impl LimitRule {
    /// The label used in texts: `label`, or the id when empty.
    pub fn display_label(&self) -> &str {
        if self.label.is_empty() {
            &self.id
        } else {
            &self.label
        }
    }
}

impl RateRule {
    /// The label used in texts: `label`, or the id when empty.
    pub fn display_label(&self) -> &str {
        if self.label.is_empty() {
            &self.id
        } else {
            &self.label
        }
    }
}

const MAX_WINDOW_S: u32 = 3600;

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl AlarmConfig {
    /// Every problem in this section, each with its field path under `path` (e.g. `alarms`).
    /// An empty list means the engine accepts it.
    pub fn validate(&self, path: &str) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        let mut problem =
            |field: String, message: String| problems.push(FieldProblem { field, message });

        let mut ids = HashSet::new();
        let mut code_owner: HashMap<u32, &str> = HashMap::new();
        for (i, r) in self.limits.iter().enumerate() {
            let at = format!("{path}.limits[{i}]");
            if !valid_id(&r.id) {
                problem(
                    format!("{at}.id"),
                    format!("{:?} must be letters, digits, '-' or '_'", r.id),
                );
            } else if !ids.insert(r.id.as_str()) {
                problem(
                    format!("{at}.id"),
                    format!("duplicate limit rule id {:?}", r.id),
                );
            }
            if r.mdc_codes.is_empty() {
                problem(
                    format!("{at}.mdc_codes"),
                    "needs at least one MDC code".into(),
                );
            }
            for code in &r.mdc_codes {
                if let Some(other) = code_owner.insert(*code, &r.id) {
                    problem(
                        format!("{at}.mdc_codes"),
                        format!("MDC code {code} is already watched by limit rule {other:?}"),
                    );
                }
            }
            if r.low.is_none() && r.high.is_none() {
                problem(at.clone(), "needs a low or a high limit".into());
            }
            if let Err(message) = check_limits(r.low, r.high, r.hysteresis) {
                problem(at.clone(), message);
            }
            if !(r.hysteresis.is_finite() && r.hysteresis >= 0.0) {
                problem(
                    format!("{at}.hysteresis"),
                    format!("{} must be zero or more", r.hysteresis),
                );
            }
            if r.sustain_s > MAX_WINDOW_S {
                problem(
                    format!("{at}.sustain_s"),
                    format!(
                        "{} s is longer than the {MAX_WINDOW_S} s maximum",
                        r.sustain_s
                    ),
                );
            }
            if let Some(e) = r.escalate_below {
                match r.low {
                    Some(low) if e.is_finite() && e <= low => {}
                    _ => problem(
                        format!("{at}.escalate_below"),
                        format!("{e} needs a low limit at or above it"),
                    ),
                }
            }
            if let Some(e) = r.escalate_above {
                match r.high {
                    Some(high) if e.is_finite() && e >= high => {}
                    _ => problem(
                        format!("{at}.escalate_above"),
                        format!("{e} needs a high limit at or below it"),
                    ),
                }
            }
            for (side, range, value) in [
                ("low_range", r.low_range, r.low),
                ("high_range", r.high_range, r.high),
            ] {
                let Some([min, max]) = range else { continue };
                if !(min.is_finite() && max.is_finite() && min <= max) {
                    problem(
                        format!("{at}.{side}"),
                        format!(
                            "[{min}, {max}] must be two numbers, the first not above the second"
                        ),
                    );
                } else if let Some(v) = value.filter(|v| *v < min || *v > max) {
                    problem(
                        format!("{at}.{side}"),
                        format!("the configured limit {v} lies outside [{min}, {max}]"),
                    );
                }
            }
            if (r.escalate_below.is_some() || r.escalate_above.is_some())
                && r.escalate_priority <= r.priority
            {
                problem(
                    format!("{at}.escalate_priority"),
                    "must be higher than priority".into(),
                );
            }
        }

        let mut ids = HashSet::new();
        for (i, r) in self.rates.iter().enumerate() {
            let at = format!("{path}.rates[{i}]");
            if !valid_id(&r.id) {
                problem(
                    format!("{at}.id"),
                    format!("{:?} must be letters, digits, '-' or '_'", r.id),
                );
            } else if !ids.insert(r.id.as_str()) {
                problem(
                    format!("{at}.id"),
                    format!("duplicate rate rule id {:?}", r.id),
                );
            }
            if !(r.amount.is_finite() && r.amount > 0.0) {
                problem(
                    format!("{at}.amount"),
                    format!("{} must be more than zero", r.amount),
                );
            }
            if r.within_s == 0 || r.within_s > MAX_WINDOW_S {
                problem(
                    format!("{at}.within_s"),
                    format!("{} must be between 1 and {MAX_WINDOW_S} s", r.within_s),
                );
            }
        }

        let n = &self.news2;
        if !(n.spo2_scale == 1 || n.spo2_scale == 2) {
            problem(
                format!("{path}.news2.spo2_scale"),
                format!("{} must be 1 or 2", n.spo2_scale),
            );
        }
        if !(1..=20).contains(&n.alarm_at) {
            problem(
                format!("{path}.news2.alarm_at"),
                format!("{} must be between 1 and 20", n.alarm_at),
            );
        }
        if !(1..=20).contains(&n.high_at) || n.high_at < n.alarm_at {
            problem(
                format!("{path}.news2.high_at"),
                format!("{} must be between alarm_at and 20", n.high_at),
            );
        }
        if n.max_age_s == 0 {
            problem(
                format!("{path}.news2.max_age_s"),
                "must be more than zero".into(),
            );
        }
        if self.allowed_lateness_s > MAX_WINDOW_S {
            problem(
                format!("{path}.allowed_lateness_s"),
                format!(
                    "{} s is longer than the {MAX_WINDOW_S} s maximum",
                    self.allowed_lateness_s
                ),
            );
        }
        if !(1..=300).contains(&self.refresh_s) {
            problem(
                format!("{path}.refresh_s"),
                format!("{} s must be 1 to 300", self.refresh_s),
            );
        }
        if self.deescalate_after_s > 300 {
            problem(
                format!("{path}.deescalate_after_s"),
                format!("{} s is longer than 300 s", self.deescalate_after_s),
            );
        }
        if self.max_silence_total_s < self.max_silence_s {
            problem(
                format!("{path}.max_silence_total_s"),
                format!(
                    "{} s is less than max_silence_s ({} s)",
                    self.max_silence_total_s, self.max_silence_s
                ),
            );
        }
        let c = &self.device_clock;
        for (field, v) in [
            ("max_ahead_s", c.max_ahead_s),
            ("max_behind_s", c.max_behind_s),
            ("late_window_s", c.late_window_s),
            ("late_alarm_count", c.late_alarm_count),
        ] {
            if v == 0 {
                problem(
                    format!("{path}.device_clock.{field}"),
                    "must be more than zero".into(),
                );
            }
        }
        if self.outputs.down_after_s == 0 {
            problem(
                format!("{path}.outputs.down_after_s"),
                "must be more than zero".into(),
            );
        }
        if self.max_silence_s == 0 {
            problem(
                format!("{path}.max_silence_s"),
                "must be more than zero".into(),
            );
        }
        problems
    }
}

/// Checks a low/high pair as configured or set by a clinician.
pub(crate) fn check_limits(
    low: Option<f64>,
    high: Option<f64>,
    hysteresis: f64,
) -> Result<(), String> {
    for v in [low, high].into_iter().flatten() {
        if !v.is_finite() {
            return Err(format!("limit {v} is not a number"));
        }
    }
    if let (Some(l), Some(h)) = (low, high) {
        if l + hysteresis > h - hysteresis {
            return Err(format!(
                "low {l} and high {h} must be more than twice the hysteresis {hysteresis} apart"
            ));
        }
    }
    Ok(())
}
