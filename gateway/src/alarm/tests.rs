//! Engine tests with an injected clock: every time is a plain `i64` (seconds from `T0` here).

use icu_protos::v1::{Alarm, Observation, ObservationStatus};

use super::news2::{self, News2Inputs};
use super::*;

const S: i64 = 1_000_000;
const T0: i64 = 1_700_000_000 * S;

const HR: u32 = 147842;
const PR: u32 = 149530;
const SPO2: u32 = 150456;
const RR: u32 = 151562;
const SBP: u32 = 150301;
const TEMP: u32 = 150364;
const ETCO2: u32 = 151728;

fn at(t_s: i64) -> i64 {
    T0 + t_s * S
}

fn obs(bed: &str, code: u32, value: f64, t_s: i64) -> Observation {
    Observation {
        device_id: "mon-1".into(),
        mdc_code: code,
        value: Some(value),
        device_time_us: Some(at(t_s)),
        receive_time_us: at(t_s),
        status: ObservationStatus::Valid as i32,
        bed: bed.into(),
        patient_id: "p-1".into(),
        ..Default::default()
    }
}

fn engine_with(f: impl FnOnce(&mut AlarmConfig)) -> Engine {
    let mut config = AlarmConfig::default();
    f(&mut config);
    Engine::new(config).expect("valid config")
}

/// Limit rules only (no rate rules, no NEWS2), so each test sees one rule type.
fn limits_only() -> Engine {
    engine_with(|c| {
        c.rates.clear();
        c.news2.enabled = false;
    })
}

/// Feeds one reading per second from `from_s`, each with `value`; returns every record.
fn hold(e: &mut Engine, bed: &str, code: u32, value: f64, from_s: i64, to_s: i64) -> Vec<Alarm> {
    (from_s..=to_s)
        .flat_map(|t| e.on_observation(&obs(bed, code, value, t), at(t)))
        .collect()
}

fn feed(e: &mut Engine, bed: &str, code: u32, value: f64, t_s: i64) -> Vec<Alarm> {
    e.on_observation(&obs(bed, code, value, t_s), at(t_s))
}

/// A limit change by `dr-a` at `T0`, without a reason.
fn lim(low: Option<f64>, high: Option<f64>) -> LimitChange {
    LimitChange {
        low,
        high,
        reason: None,
        who: "dr-a".into(),
        at_us: T0,
    }
}

fn phases(alarms: &[Alarm]) -> Vec<(String, String, String)> {
    alarms
        .iter()
        .map(|a| (a.phase.clone(), a.state.clone(), a.priority.clone()))
        .collect()
}

fn p(phase: &str, state: &str, priority: &str) -> (String, String, String) {
    (phase.into(), state.into(), priority.into())
}

// ---------------------------------------------------------------- config

#[test]
fn default_config_is_valid_and_matches_protocols_6_1() {
    let c = AlarmConfig::default();
    assert!(c.validate("alarms").is_empty());
    let rule = |code: u32| {
        c.limits
            .iter()
            .find(|r| r.mdc_codes.contains(&code))
            .unwrap_or_else(|| panic!("no rule for {code}"))
    };
    for code in [HR, PR, 149514] {
        let r = rule(code);
        assert_eq!(
            (r.low, r.high, r.hysteresis, r.sustain_s),
            (Some(50.0), Some(120.0), 2.0, 10)
        );
    }
    let spo2 = rule(SPO2);
    assert_eq!(
        (spo2.low, spo2.high, spo2.escalate_below),
        (Some(90.0), None, Some(85.0))
    );
    assert_eq!((spo2.sustain_s, spo2.hysteresis), (15, 1.0));
    assert_eq!(
        (spo2.priority, spo2.escalate_priority),
        (Priority::Medium, Priority::High)
    );
    assert_eq!((rule(RR).low, rule(RR).high), (Some(8.0), Some(30.0)));
    for code in [SBP, 150037] {
        assert_eq!((rule(code).low, rule(code).high), (Some(90.0), Some(160.0)));
    }
    for code in [TEMP, 150368] {
        assert_eq!(
            (rule(code).low, rule(code).high, rule(code).hysteresis),
            (Some(35.0), Some(39.0), 0.2)
        );
    }
    assert_eq!(c.allowed_lateness_s, 10);
    assert_eq!(
        (c.news2.alarm_at, c.news2.high_at, c.news2.spo2_scale),
        (5, 7, 1)
    );
    assert_eq!(c.rates[0].mdc_code, SPO2);
    assert_eq!((c.rates[0].amount, c.rates[0].within_s), (5.0, 60));
}

#[test]
fn config_parses_from_toml_with_defaults_and_rejects_unknown_fields() {
    let c: AlarmConfig = toml::from_str(
        r#"
        allowed_lateness_s = 5
        [[limits]]
        id = "etco2"
        label = "EtCO2"
        mdc_codes = [151728]
        low = 15.0
        high = 50.0
        priority = "high"
        [news2]
        alarm_at = 6
        "#,
    )
    .unwrap();
    assert_eq!(c.allowed_lateness_s, 5);
    assert_eq!(c.limits.len(), 1);
    assert_eq!(c.limits[0].sustain_s, 10);
    assert_eq!(c.limits[0].priority, Priority::High);
    assert_eq!(c.rates, default_rates());
    assert_eq!((c.news2.alarm_at, c.news2.high_at), (6, 7));
    assert!(c.validate("alarms").is_empty());

    let err = toml::from_str::<AlarmConfig>("lateness = 5").unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
    let err = toml::from_str::<AlarmConfig>("[news2]\nalarm = 5").unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn validate_reports_every_problem_with_its_path() {
    let mut c = AlarmConfig::default();
    c.limits[1].id = "hr".into(); // duplicate id
    c.limits[2].mdc_codes.push(HR); // code watched twice
    c.limits[3].low = Some(40.0); // RR 40-30
    c.limits[6].escalate_above = Some(38.0); // below high 39
    c.rates[0].within_s = 0;
    c.news2.spo2_scale = 3;
    c.news2.high_at = 4;
    let problems = c.validate("alarms");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "alarms.limits[1].id",
            "alarms.limits[2].mdc_codes",
            "alarms.limits[3]",
            "alarms.limits[3].low_range",
            "alarms.limits[6].escalate_above",
            "alarms.rates[0].within_s",
            "alarms.news2.spo2_scale",
            "alarms.news2.high_at",
        ],
        "{problems:?}"
    );
    assert_eq!(Engine::new(c).unwrap_err().len(), 8);
}

// ---------------------------------------------------------------- sustain

#[test]
fn sustain_a_5_s_spike_does_not_alarm() {
    let mut e = limits_only();
    hold(&mut e, "b1", SPO2, 97.0, 0, 9);
    assert!(hold(&mut e, "b1", SPO2, 84.0, 10, 15).is_empty());
    assert!(hold(&mut e, "b1", SPO2, 97.0, 16, 30).is_empty());
    // a second short excursion starts its own sustain timer
    assert!(hold(&mut e, "b1", SPO2, 88.0, 31, 40).is_empty());
    assert!(e.active("b1").is_empty());
    assert_eq!(e.stats().alarms_started, 0);
}

#[test]
fn sustain_15_s_alarms_once_with_stable_id_and_fields() {
    let mut e = limits_only();
    assert!(hold(&mut e, "b1", SPO2, 88.0, 0, 14).is_empty());
    let out = feed(&mut e, "b1", SPO2, 88.0, 15);
    assert_eq!(phases(&out), [p("start", "active", "PM")]);
    let a = &out[0];
    assert_eq!(a.alarm_id, format!("b1:limit:spo2:{SPO2}:{}", at(15)));
    assert_eq!(a.text, "SpO2 88 < 90");
    assert_eq!((a.mdc_code, a.alert_type.as_str()), (SPO2, "SP"));
    assert_eq!((a.source.as_str(), a.bed.as_str()), ("limit:spo2", "b1"));
    assert_eq!(
        (a.device_id.as_str(), a.patient_id.as_str()),
        ("mon-1", "p-1")
    );
    assert_eq!((a.event_time_us, a.seq), (at(15), 0));
    // the condition continuing emits nothing more
    assert!(hold(&mut e, "b1", SPO2, 88.0, 16, 60).is_empty());
    let views = e.active("b1");
    assert_eq!(views.len(), 1);
    assert_eq!(
        (views[0].since_us, views[0].state),
        (at(15), AlarmState::Active)
    );
    assert_eq!(e.stats().alarms_started, 1);
}

#[test]
fn sustain_is_event_time_not_reading_count() {
    let mut e = limits_only();
    // HR sustain 10 s: two readings 10 s apart are enough, ten readings within 5 s are not
    assert!(feed(&mut e, "b1", HR, 130.0, 0).is_empty());
    assert_eq!(
        phases(&feed(&mut e, "b1", HR, 131.0, 10)),
        [p("start", "active", "PM")]
    );
    let mut e = limits_only();
    for i in 0..10 {
        let mut o = obs("b1", HR, 130.0, 0);
        o.device_time_us = Some(at(0) + i * S / 2);
        assert!(e.on_observation(&o, at(5)).is_empty());
    }
}

#[test]
fn sustain_restarts_when_the_excursion_changes_side() {
    let mut e = limits_only();
    hold(&mut e, "b1", HR, 40.0, 0, 6);
    assert!(hold(&mut e, "b1", HR, 130.0, 7, 16).is_empty());
    assert_eq!(
        phases(&feed(&mut e, "b1", HR, 130.0, 17)),
        [p("start", "active", "PM")]
    );
    assert_eq!(e.active("b1")[0].text, "HR 130 > 120");
}

// ---------------------------------------------------------------- hysteresis

#[test]
fn hysteresis_oscillating_value_does_not_end_or_restart() {
    let mut e = limits_only();
    let out = hold(&mut e, "b1", HR, 125.0, 0, 10);
    assert_eq!(out.len(), 1);
    let id = out[0].alarm_id.clone();
    // around the limit, but never back inside by the 2 /min margin
    for (i, v) in [119.0, 121.0, 118.5, 120.0, 124.0, 119.0, 118.1]
        .iter()
        .enumerate()
    {
        assert!(
            feed(&mut e, "b1", HR, *v, 11 + i as i64).is_empty(),
            "value {v}"
        );
    }
    assert_eq!(e.active("b1")[0].alarm_id, id);
    // back inside by the margin (≤ 118) ends it
    let out = feed(&mut e, "b1", HR, 118.0, 20);
    assert_eq!(phases(&out), [p("end", "inactive", "PM")]);
    assert_eq!(out[0].alarm_id, id);
    assert!(e.active("b1").is_empty());
    assert_eq!((e.stats().alarms_started, e.stats().alarms_ended), (1, 1));
}

#[test]
fn hysteresis_on_the_low_side_and_temperature_margin() {
    let mut e = limits_only();
    hold(&mut e, "b1", TEMP, 34.5, 0, 10);
    assert_eq!(e.active("b1")[0].text, "Temp 34.5 < 35");
    assert!(feed(&mut e, "b1", TEMP, 35.1, 11).is_empty());
    assert_eq!(
        phases(&feed(&mut e, "b1", TEMP, 35.2, 12)),
        [p("end", "inactive", "PM")]
    );
}

// ---------------------------------------------------------------- escalation

#[test]
fn escalation_below_threshold_raises_priority_and_deescalates_with_hysteresis() {
    let mut e = limits_only();
    let start = hold(&mut e, "b1", SPO2, 88.0, 0, 15);
    assert_eq!(phases(&start), [p("start", "active", "PM")]);
    let id = start[0].alarm_id.clone();
    e.acknowledge("b1", &id, "nurse-a", at(16)).unwrap();

    let out = feed(&mut e, "b1", SPO2, 84.0, 17);
    assert_eq!(
        phases(&out),
        [p("escalate", "active", "PH")],
        "escalation clears the ack"
    );
    assert_eq!(
        (out[0].alarm_id.as_str(), out[0].text.as_str()),
        (id.as_str(), "SpO2 84 < 90")
    );
    assert!(
        feed(&mut e, "b1", SPO2, 85.5, 18).is_empty(),
        "within margin of 85"
    );
    // The lower priority must hold deescalate_after_s (15 s) before the alarm de-escalates.
    assert!(hold(&mut e, "b1", SPO2, 87.0, 19, 33).is_empty());
    assert_eq!(
        phases(&feed(&mut e, "b1", SPO2, 87.0, 34)),
        [p("deescalate", "active", "PM")]
    );
    assert_eq!(e.stats().escalations, 1);

    // it was high and never acknowledged since: it latches, as high
    assert_eq!(
        phases(&feed(&mut e, "b1", SPO2, 95.0, 35)),
        [p("update", "latched", "PH")]
    );
    let out = e.acknowledge("b1", &id, "nurse-a", at(36)).unwrap();
    assert_eq!(phases(&out), [p("end", "inactive", "PH")]);
}

#[test]
fn start_beyond_escalation_threshold_starts_high() {
    let mut e = limits_only();
    let out = hold(&mut e, "b1", SPO2, 80.0, 0, 15);
    assert_eq!(phases(&out), [p("start", "active", "PH")]);
}

// ---------------------------------------------------------------- rate of change

fn rates_only() -> Engine {
    engine_with(|c| {
        c.limits.clear();
        c.news2.enabled = false;
    })
}

#[test]
fn rate_drop_more_than_5_in_60_s_alarms_and_ends_when_the_drop_leaves_the_window() {
    let mut e = rates_only();
    assert!(feed(&mut e, "b1", SPO2, 98.0, 0).is_empty());
    assert!(feed(&mut e, "b1", SPO2, 95.0, 20).is_empty());
    assert!(
        feed(&mut e, "b1", SPO2, 93.0, 40).is_empty(),
        "a drop of exactly 5 is not more than 5"
    );
    let out = feed(&mut e, "b1", SPO2, 92.0, 50);
    assert_eq!(phases(&out), [p("start", "active", "PM")]);
    assert_eq!(out[0].source, "rate:spo2-drop");
    assert_eq!(out[0].text, "SpO2 fell 6 in 60 s (98 to 92)");
    // still more than half the amount below the window's maximum: no change
    assert!(feed(&mut e, "b1", SPO2, 92.0, 70).is_empty());
    // the 98 and 95 readings have left the window: max 93, drop 1 ≤ 2.5 ends it
    assert_eq!(
        phases(&feed(&mut e, "b1", SPO2, 92.0, 100)),
        [p("end", "inactive", "PM")]
    );
}

#[test]
fn rate_drop_slower_than_the_window_does_not_alarm() {
    let mut e = rates_only();
    for (i, v) in [98.0, 96.0, 94.0, 92.0].iter().enumerate() {
        assert!(feed(&mut e, "b1", SPO2, *v, i as i64 * 40).is_empty());
    }
}

#[test]
fn rate_rise_rule() {
    let mut e = engine_with(|c| {
        c.limits.clear();
        c.news2.enabled = false;
        c.rates = vec![RateRule {
            id: "hr-jump".into(),
            label: "HR".into(),
            mdc_code: HR,
            direction: Direction::Rise,
            amount: 30.0,
            within_s: 30,
            priority: Priority::High,
        }];
    });
    feed(&mut e, "b1", HR, 80.0, 0);
    let out = feed(&mut e, "b1", HR, 115.0, 20);
    assert_eq!(phases(&out), [p("start", "active", "PH")]);
    assert_eq!(out[0].text, "HR rose 35 in 30 s (80 to 115)");
}

// ---------------------------------------------------------------- NEWS2

#[test]
fn news2_every_band_edge_of_protocols_6_3() {
    type Case = (fn(f64) -> u8, &'static str, &'static [(f64, u8)]);
    let cases: &[Case] = &[
        (
            news2::score_resp_rate,
            "RR",
            &[
                (5.0, 3),
                (8.0, 3),
                (9.0, 1),
                (11.0, 1),
                (12.0, 0),
                (20.0, 0),
                (21.0, 2),
                (24.0, 2),
                (25.0, 3),
                (40.0, 3),
            ],
        ),
        (
            news2::score_spo2_scale1,
            "SpO2 scale 1",
            &[
                (80.0, 3),
                (91.0, 3),
                (92.0, 2),
                (93.0, 2),
                (94.0, 1),
                (95.0, 1),
                (96.0, 0),
                (100.0, 0),
            ],
        ),
        (
            news2::score_systolic,
            "SBP",
            &[
                (70.0, 3),
                (90.0, 3),
                (91.0, 2),
                (100.0, 2),
                (101.0, 1),
                (110.0, 1),
                (111.0, 0),
                (219.0, 0),
                (220.0, 3),
            ],
        ),
        (
            news2::score_pulse,
            "pulse",
            &[
                (30.0, 3),
                (40.0, 3),
                (41.0, 1),
                (50.0, 1),
                (51.0, 0),
                (90.0, 0),
                (91.0, 1),
                (110.0, 1),
                (111.0, 2),
                (130.0, 2),
                (131.0, 3),
            ],
        ),
        (
            news2::score_temperature,
            "temperature",
            &[
                (34.0, 3),
                (35.0, 3),
                (35.1, 1),
                (36.0, 1),
                (36.1, 0),
                (38.0, 0),
                (38.1, 1),
                (39.0, 1),
                (39.1, 2),
                (41.0, 2),
            ],
        ),
    ];
    for (f, name, rows) in cases {
        for &(value, expected) in rows.iter() {
            assert_eq!(f(value), expected, "{name} {value}");
        }
    }
    let scale2_air = [
        (83.0, 3),
        (84.0, 2),
        (85.0, 2),
        (86.0, 1),
        (87.0, 1),
        (88.0, 0),
        (92.0, 0),
        (93.0, 0),
        (100.0, 0),
    ];
    for (v, expected) in scale2_air {
        assert_eq!(
            news2::score_spo2_scale2(v, false),
            expected,
            "scale 2 air {v}"
        );
    }
    let scale2_o2 = [
        (88.0, 0),
        (92.0, 0),
        (93.0, 1),
        (94.0, 1),
        (95.0, 2),
        (96.0, 2),
        (97.0, 3),
        (100.0, 3),
    ];
    for (v, expected) in scale2_o2 {
        assert_eq!(
            news2::score_spo2_scale2(v, true),
            expected,
            "scale 2 oxygen {v}"
        );
    }
}

#[test]
fn news2_rounds_to_chart_resolution() {
    assert_eq!(news2::score_resp_rate(8.4), 3);
    assert_eq!(news2::score_resp_rate(8.5), 1);
    assert_eq!(news2::score_temperature(35.04), 3);
    assert_eq!(news2::score_temperature(36.06), 0);
}

#[test]
fn news2_aggregate_counts_missing_as_zero_and_unknowns_as_air_and_alert() {
    let all = News2Inputs {
        resp_rate: Some(22.0),
        spo2: Some(95.0),
        systolic: Some(105.0),
        pulse: Some(95.0),
        temperature: Some(37.0),
        ..Default::default()
    };
    let s = news2::score(&all, 1);
    assert_eq!((s.total, s.max_single, s.measured), (5, 2, 5));
    let partial = News2Inputs {
        spo2: Some(91.0),
        ..Default::default()
    };
    let s = news2::score(&partial, 1);
    assert_eq!((s.total, s.max_single, s.measured), (3, 3, 1));
    let worst = News2Inputs {
        resp_rate: Some(30.0),
        spo2: Some(85.0),
        systolic: Some(80.0),
        pulse: Some(140.0),
        temperature: Some(34.0),
        on_oxygen: true,
        not_alert: true,
    };
    assert_eq!(news2::score(&worst, 1).total, 20);
}

fn news2_only() -> Engine {
    engine_with(|c| {
        c.limits.clear();
        c.rates.clear();
    })
}

#[test]
fn news2_alarms_medium_at_5_high_at_7_and_latches() {
    let mut e = news2_only();
    // RR 22 (2) + SpO2 95 (1) + SBP 105 (1) = 4: no alarm
    assert!(feed(&mut e, "b1", RR, 22.0, 0).is_empty());
    assert!(feed(&mut e, "b1", SPO2, 95.0, 1).is_empty());
    assert!(feed(&mut e, "b1", SBP, 105.0, 2).is_empty());
    // + pulse 95 (1) = 5: medium
    let out = feed(&mut e, "b1", PR, 95.0, 3);
    assert_eq!(phases(&out), [p("start", "active", "PM")]);
    assert_eq!(out[0].source, "news2");
    assert_eq!(out[0].mdc_code, MDC_EVT_ALARM);
    assert_eq!(out[0].text, "NEWS2 5 (4 of 5 parameters)");
    let id = out[0].alarm_id.clone();
    // pulse 115 (2) = 6: still medium, nothing emitted
    assert!(feed(&mut e, "b1", PR, 115.0, 4).is_empty());
    // + temperature 38.5 (1) = 7: high
    let out = feed(&mut e, "b1", TEMP, 38.5, 5);
    assert_eq!(phases(&out), [p("escalate", "active", "PH")]);
    assert_eq!(
        (out[0].alarm_id.as_str(), out[0].text.as_str()),
        (id.as_str(), "NEWS2 7")
    );
    // RR 16 (0) = 5: medium, but not for deescalate_after_s yet: it stays high
    assert!(feed(&mut e, "b1", RR, 16.0, 6).is_empty());
    // pulse 80 (0) = 3: condition ends; it was high and unacknowledged, so it latches
    assert_eq!(
        phases(&feed(&mut e, "b1", PR, 80.0, 7)),
        [p("update", "latched", "PH")]
    );
    let out = e.acknowledge("b1", &id, "nurse-a", at(8)).unwrap();
    assert_eq!(phases(&out), [p("end", "inactive", "PH")]);
}

#[test]
fn news2_single_parameter_3_is_medium_unless_disabled() {
    let mut e = news2_only();
    let out = feed(&mut e, "b1", SPO2, 91.0, 0);
    assert_eq!(phases(&out), [p("start", "active", "PM")]);
    assert_eq!(
        out[0].text,
        "NEWS2 3, a parameter scores 3 (1 of 5 parameters)"
    );
    assert_eq!(
        phases(&feed(&mut e, "b1", SPO2, 96.0, 1)),
        [p("end", "inactive", "PM")]
    );

    let mut e = engine_with(|c| {
        c.limits.clear();
        c.rates.clear();
        c.news2.single_parameter_alarm = false;
    });
    assert!(feed(&mut e, "b1", SPO2, 91.0, 0).is_empty());
}

#[test]
fn news2_ignores_values_older_than_max_age() {
    let mut e = engine_with(|c| {
        c.limits.clear();
        c.rates.clear();
        c.news2.max_age_s = 600;
        c.news2.single_parameter_alarm = false;
    });
    feed(&mut e, "b1", RR, 22.0, 0); // 2
    feed(&mut e, "b1", SBP, 95.0, 1); // 2
                                      // 700 s later the RR and SBP readings no longer count: pulse 115 (2) alone is 2
    assert!(feed(&mut e, "b1", PR, 115.0, 700).is_empty());
    // fresh values: 2 + 2 + 2 = 6
    feed(&mut e, "b1", RR, 22.0, 701);
    let out = feed(&mut e, "b1", SBP, 95.0, 702);
    assert_eq!(phases(&out), [p("start", "active", "PM")]);
}

#[test]
fn news2_disabled_never_alarms() {
    let mut e = engine_with(|c| {
        c.limits.clear();
        c.rates.clear();
        c.news2.enabled = false;
    });
    for (code, v) in [
        (RR, 30.0),
        (SPO2, 85.0),
        (SBP, 80.0),
        (PR, 140.0),
        (TEMP, 34.0),
    ] {
        assert!(feed(&mut e, "b1", code, v, 0).is_empty());
    }
}

// ---------------------------------------------------------------- technical alarms

#[test]
fn stale_feed_raises_and_ends_a_technical_alarm() {
    let mut e = limits_only();
    feed(&mut e, "b1", HR, 80.0, 0); // the bed's patient is p-1
    let out = e.stale_feed("b1", "mon-1", true, at(30));
    assert_eq!(phases(&out), [p("start", "active", "PM")]);
    let a = &out[0];
    assert_eq!((a.alert_type.as_str(), a.mdc_code), ("ST", MDC_EVT_ALARM));
    assert_eq!(
        (a.source.as_str(), a.text.as_str()),
        (STALE_FEED_SOURCE, "no data from mon-1")
    );
    assert_eq!(
        (a.device_id.as_str(), a.patient_id.as_str()),
        ("mon-1", "p-1")
    );
    assert_eq!(a.alarm_id, format!("b1:stale-feed:mon-1:{}", at(30)));
    assert!(
        e.stale_feed("b1", "mon-1", true, at(31)).is_empty(),
        "repeat is no change"
    );
    assert!(
        e.stale_feed("b1", "mon-2", false, at(31)).is_empty(),
        "never stale"
    );
    assert_eq!(
        phases(&e.stale_feed("b1", "mon-1", false, at(40))),
        [p("end", "inactive", "PM")]
    );
}

#[test]
fn stale_feed_at_high_priority_latches() {
    let mut e = engine_with(|c| c.stale_feed_priority = Priority::High);
    let id = e.stale_feed("b1", "mon-1", true, at(0))[0].alarm_id.clone();
    assert_eq!(
        phases(&e.stale_feed("b1", "mon-1", false, at(5))),
        [p("update", "latched", "PH")]
    );
    assert_eq!(e.active("b1")[0].state, AlarmState::Latched);
    assert_eq!(
        phases(&e.acknowledge("b1", &id, "nurse-a", at(6)).unwrap()),
        [p("end", "inactive", "PH")]
    );
}

#[test]
fn device_condition_lifecycle_with_priority_change() {
    let mut e = limits_only();
    let src = "masimo:EXC:0x000001";
    let out = e.device_condition(
        "b1",
        "rad-7",
        src,
        "SpO2 sensor off",
        Priority::Low,
        true,
        at(0),
    );
    assert_eq!(phases(&out), [p("start", "active", "PL")]);
    assert_eq!(
        (
            out[0].source.as_str(),
            out[0].text.as_str(),
            out[0].alert_type.as_str()
        ),
        (src, "SpO2 sensor off", "ST")
    );
    let out = e.device_condition(
        "b1",
        "rad-7",
        src,
        "SpO2 sensor off",
        Priority::Medium,
        true,
        at(1),
    );
    assert_eq!(phases(&out), [p("escalate", "active", "PM")]);
    let out = e.device_condition(
        "b1",
        "rad-7",
        src,
        "SpO2 sensor off",
        Priority::Medium,
        false,
        at(2),
    );
    assert_eq!(phases(&out), [p("end", "inactive", "PM")]);
}

// ---------------------------------------------------------------- late readings

#[test]
fn late_readings_are_counted_and_do_not_drive_rules() {
    let mut e = limits_only();
    hold(&mut e, "b1", HR, 80.0, 100, 110);
    // 20 s older than the newest HR reading, lateness 10 s: late, even though it is out of range
    for t in 85..=99 {
        let mut o = obs("b1", HR, 200.0, t - 10);
        o.receive_time_us = at(111);
        // Nothing physiological; past five late readings the device's clock is in doubt.
        let out = e.on_observation(&o, at(111));
        assert!(
            out.iter().all(|a| a.source == DEVICE_CLOCK_SOURCE),
            "{out:?}"
        );
    }
    assert_eq!(e.late_readings("b1"), 15);
    assert_eq!(e.late_readings("b2"), 0);
    // within lateness but older than the last applied: ignored, not counted as late
    assert!(feed(&mut e, "b1", HR, 200.0, 105).is_empty());
    let stats = e.stats();
    assert_eq!((stats.late_readings, stats.out_of_order_readings), (15, 1));
    assert_eq!(stats.late_readings_by_bed.get("b1"), Some(&15));
    // lateness is per parameter: an older SpO2 reading is fine
    assert!(feed(&mut e, "b1", SPO2, 97.0, 50).is_empty());
    assert_eq!(e.late_readings("b1"), 15);
    // a late reading inside an excursion does not complete the sustain either
    assert!(hold(&mut e, "b1", HR, 130.0, 111, 119).is_empty());
    assert!(feed(&mut e, "b1", HR, 130.0, 95).is_empty());
    assert_eq!(
        phases(&feed(&mut e, "b1", HR, 130.0, 121)),
        [p("start", "active", "PM")]
    );
    assert!(e
        .active("b1")
        .iter()
        .filter(|a| a.source != DEVICE_CLOCK_SOURCE)
        .all(|a| a.text == "HR 130 > 120"));
}

#[test]
fn receive_time_is_the_event_time_without_device_time() {
    let mut e = limits_only();
    for t in 0..=10 {
        let mut o = obs("b1", HR, 130.0, t);
        o.device_time_us = None;
        let out = e.on_observation(&o, at(t));
        if t == 10 {
            assert_eq!(out[0].event_time_us, at(10));
        }
    }
    assert_eq!(e.stats().alarms_started, 1);
}

#[test]
fn only_valid_and_corrected_values_are_alarmed_on() {
    let mut e = limits_only();
    for status in [
        ObservationStatus::NotAvailable,
        ObservationStatus::Invalid,
        ObservationStatus::Test,
        ObservationStatus::Unspecified,
    ] {
        for t in 0..=20 {
            let mut o = obs("b1", HR, 200.0, t);
            o.status = status as i32;
            assert!(e.on_observation(&o, at(t)).is_empty());
        }
    }
    let mut o = obs("b1", HR, 200.0, 0);
    o.value = None;
    assert!(e.on_observation(&o, at(0)).is_empty());
    assert_eq!(e.stats().ignored_readings, 85);
    let out: Vec<Alarm> = (0..=10)
        .flat_map(|t| {
            let mut o = obs("b1", HR, 200.0, t);
            o.status = ObservationStatus::Corrected as i32;
            e.on_observation(&o, at(t))
        })
        .collect();
    assert_eq!(phases(&out), [p("start", "active", "PM")]);
}

// ---------------------------------------------------------------- lifecycle

#[test]
fn lifecycle_medium_start_acknowledge_end() {
    let mut e = limits_only();
    let id = hold(&mut e, "b1", RR, 35.0, 0, 10)[0].alarm_id.clone();
    let out = e.acknowledge("b1", &id, "nurse-a", at(12)).unwrap();
    assert_eq!(phases(&out), [p("update", "acknowledged", "PM")]);
    assert_eq!(out[0].event_time_us, at(12));
    assert!(
        e.acknowledge("b1", &id, "nurse-b", at(13))
            .unwrap()
            .is_empty(),
        "second ack"
    );
    let view = &e.active("b1")[0];
    assert_eq!(
        (view.state, view.acknowledged_by.as_deref()),
        (AlarmState::Acknowledged, Some("nurse-a"))
    );
    assert!(hold(&mut e, "b1", RR, 35.0, 14, 20).is_empty());
    assert_eq!(
        phases(&feed(&mut e, "b1", RR, 27.0, 21)),
        [p("end", "inactive", "PM")]
    );
    assert!(e.active("b1").is_empty());
    assert_eq!(
        e.acknowledge("b1", &id, "nurse-a", at(22)).unwrap_err(),
        AlarmError::UnknownAlarm {
            bed: "b1".into(),
            alarm_id: id
        }
    );
}

#[test]
fn lifecycle_medium_ends_when_the_condition_clears_without_ack() {
    let mut e = limits_only();
    hold(&mut e, "b1", RR, 35.0, 0, 10);
    assert_eq!(
        phases(&feed(&mut e, "b1", RR, 20.0, 11)),
        [p("end", "inactive", "PM")]
    );
}

#[test]
fn lifecycle_high_latches_until_acknowledged_and_reactivates_with_the_same_id() {
    let mut e = limits_only();
    let id = hold(&mut e, "b1", SPO2, 80.0, 0, 15)[0].alarm_id.clone();
    assert_eq!(
        phases(&feed(&mut e, "b1", SPO2, 95.0, 16)),
        [p("update", "latched", "PH")]
    );
    assert!(hold(&mut e, "b1", SPO2, 95.0, 17, 60).is_empty());
    assert_eq!(e.active("b1")[0].state, AlarmState::Latched);
    // the condition returns while latched: same occurrence, active again after its sustain
    assert!(hold(&mut e, "b1", SPO2, 80.0, 61, 75).is_empty());
    let out = feed(&mut e, "b1", SPO2, 80.0, 76);
    assert_eq!(phases(&out), [p("update", "active", "PH")]);
    assert_eq!(out[0].alarm_id, id);
    // acknowledged while active: no latch when it clears
    e.acknowledge("b1", &id, "nurse-a", at(77)).unwrap();
    assert_eq!(
        phases(&feed(&mut e, "b1", SPO2, 95.0, 78)),
        [p("end", "inactive", "PH")]
    );
    // a new occurrence gets a new id
    let out = hold(&mut e, "b1", SPO2, 80.0, 79, 94);
    assert_eq!(out.len(), 1);
    assert_ne!(out[0].alarm_id, id);
}

#[test]
fn silence_pauses_and_expires_on_tick() {
    let mut e = limits_only();
    let id = hold(&mut e, "b1", HR, 130.0, 0, 10)[0].alarm_id.clone();
    let out = e.silence("b1", &id, 60, "nurse-a", at(20)).unwrap();
    assert_eq!(phases(&out), [p("update", "silenced", "PM")]);
    let view = &e.active("b1")[0];
    assert_eq!(
        (view.state, view.silenced_until_us),
        (AlarmState::Silenced, Some(at(80)))
    );
    assert!(e.tick(at(79)).is_empty());
    let out = e.tick(at(80));
    assert_eq!(phases(&out), [p("update", "active", "PM")]);
    assert_eq!(out[0].event_time_us, at(80));
    assert!(e.tick(at(81)).is_empty());
}

#[test]
fn silence_is_cut_to_the_maximum_and_validated() {
    let mut e = limits_only();
    let id = hold(&mut e, "b1", HR, 130.0, 0, 10)[0].alarm_id.clone();
    e.silence("b1", &id, 3600, "nurse-a", at(20)).unwrap();
    assert_eq!(e.active("b1")[0].silenced_until_us, Some(at(140)));
    assert_eq!(
        e.silence("b1", &id, 0, "nurse-a", at(20)),
        Err(AlarmError::InvalidSilence)
    );
    assert!(matches!(
        e.silence("b2", &id, 10, "nurse-a", at(20)),
        Err(AlarmError::UnknownAlarm { .. })
    ));
}

#[test]
fn silenced_high_alarm_that_clears_stays_latched_after_expiry() {
    let mut e = limits_only();
    let id = hold(&mut e, "b1", SPO2, 80.0, 0, 15)[0].alarm_id.clone();
    e.silence("b1", &id, 60, "nurse-a", at(16)).unwrap();
    assert_eq!(
        phases(&feed(&mut e, "b1", SPO2, 95.0, 17)),
        [p("update", "silenced", "PH")]
    );
    assert_eq!(phases(&e.tick(at(76))), [p("update", "latched", "PH")]);
    assert_eq!(
        phases(&e.acknowledge("b1", &id, "nurse-a", at(77)).unwrap()),
        [p("end", "inactive", "PH")]
    );
}

#[test]
fn escalation_clears_a_silence() {
    let mut e = limits_only();
    let id = hold(&mut e, "b1", SPO2, 88.0, 0, 15)[0].alarm_id.clone();
    e.silence("b1", &id, 120, "nurse-a", at(16)).unwrap();
    assert_eq!(
        phases(&feed(&mut e, "b1", SPO2, 82.0, 17)),
        [p("escalate", "active", "PH")]
    );
    assert_eq!(e.active("b1")[0].silenced_until_us, None);
}

#[test]
fn active_lists_highest_priority_first_then_oldest() {
    let mut e = limits_only();
    hold(&mut e, "b1", RR, 35.0, 0, 10);
    e.device_condition(
        "b1",
        "rad-7",
        "x",
        "low battery",
        Priority::Low,
        true,
        at(0),
    );
    hold(&mut e, "b1", SPO2, 80.0, 0, 15);
    hold(&mut e, "b1", HR, 130.0, 0, 10);
    let order: Vec<(Priority, String)> = e
        .active("b1")
        .into_iter()
        .map(|v| (v.priority, v.source))
        .collect();
    assert_eq!(
        order,
        [
            (Priority::High, "limit:spo2".to_string()),
            (Priority::Medium, "limit:hr".to_string()),
            (Priority::Medium, "limit:rr".to_string()),
            (Priority::Low, "x".to_string()),
        ]
    );
    hold(&mut e, "b2", HR, 130.0, 0, 10);
    assert_eq!(e.active_all().len(), 5);
    assert!(e.active("b3").is_empty());
}

// ---------------------------------------------------------------- per-bed limits

#[test]
fn per_bed_override_applies_on_the_next_reading_and_only_to_that_bed() {
    let mut e = limits_only();
    assert!(hold(&mut e, "b1", HR, 110.0, 0, 20).is_empty());
    e.set_bed_limits("b1", HR, &lim(Some(50.0), Some(100.0)))
        .unwrap();
    assert_eq!(
        e.effective_limits("b1", HR),
        Some(Limits {
            low: Some(50.0),
            high: Some(100.0)
        })
    );
    assert_eq!(
        e.effective_limits("b2", HR),
        Some(Limits {
            low: Some(50.0),
            high: Some(120.0)
        })
    );
    let out = hold(&mut e, "b1", HR, 110.0, 21, 31);
    assert_eq!(phases(&out), [p("start", "active", "PM")]);
    assert_eq!(out[0].text, "HR 110 > 100");
    assert!(hold(&mut e, "b2", HR, 110.0, 0, 31).is_empty());
    // other codes of the same rule keep the default
    assert!(hold(&mut e, "b1", PR, 110.0, 0, 31).is_empty());
    // widening the limits ends the alarm on the next reading
    e.set_bed_limits("b1", HR, &lim(Some(50.0), Some(140.0)))
        .unwrap();
    assert_eq!(
        phases(&feed(&mut e, "b1", HR, 110.0, 32)),
        [p("end", "inactive", "PM")]
    );
    // back to the config default
    e.clear_bed_limits("b1", HR);
    assert_eq!(
        e.effective_limits("b1", HR),
        Some(Limits {
            low: Some(50.0),
            high: Some(120.0)
        })
    );
}

#[test]
fn per_bed_override_can_switch_a_side_off_and_is_validated() {
    let mut e = limits_only();
    let mut off = lim(None, Some(150.0));
    off.reason = Some("pacemaker, rate fixed".into());
    e.set_bed_limits("b1", HR, &off).unwrap();
    assert!(hold(&mut e, "b1", HR, 30.0, 0, 30).is_empty());
    let err = e
        .set_bed_limits("b1", HR, &lim(Some(90.0), Some(91.0)))
        .unwrap_err();
    assert!(
        matches!(err, AlarmError::InvalidLimits { mdc_code: HR, .. }),
        "{err}"
    );
    assert!(e
        .set_bed_limits("b1", HR, &lim(Some(f64::NAN), None))
        .is_err());
}

#[test]
fn per_bed_override_on_a_parameter_without_a_rule() {
    let mut e = limits_only();
    assert_eq!(e.effective_limits("b1", ETCO2), None);
    e.set_bed_limits("b1", ETCO2, &lim(Some(15.0), Some(50.0)))
        .unwrap();
    let out: Vec<Alarm> = (0..=10)
        .flat_map(|t| {
            let mut o = obs("b1", ETCO2, 60.0, t);
            o.mdc_refid = "MDC_AWAY_CO2_ET".into();
            e.on_observation(&o, at(t))
        })
        .collect();
    assert_eq!(phases(&out), [p("start", "active", "PM")]);
    assert_eq!(out[0].text, "MDC_AWAY_CO2_ET 60 > 50");
    assert_eq!(out[0].source, format!("limit:custom-{ETCO2}"));
}

#[test]
fn every_record_is_counted() {
    let mut e = limits_only();
    let mut n = hold(&mut e, "b1", SPO2, 80.0, 0, 15).len();
    let id = e.active("b1")[0].alarm_id.clone();
    n += e.silence("b1", &id, 10, "n", at(16)).unwrap().len();
    n += e.tick(at(30)).len();
    n += feed(&mut e, "b1", SPO2, 96.0, 31).len();
    n += e.acknowledge("b1", &id, "n", at(32)).unwrap().len();
    let s = e.stats();
    assert_eq!((n, s.state_changes), (5, 5));
    assert_eq!((s.alarms_started, s.alarms_ended, s.readings), (1, 1, 17));
}

// ---------------------------------------------------------------- hard bounds and limits off

#[test]
fn a_limit_outside_its_hard_bounds_is_refused_and_the_old_one_stays() {
    let mut e = limits_only();
    e.set_bed_limits("b1", SPO2, &lim(Some(92.0), None))
        .unwrap();
    for low in [79.0, 96.0] {
        let err = e
            .set_bed_limits("b1", SPO2, &lim(Some(low), None))
            .unwrap_err();
        assert!(
            err.to_string().contains("outside its hard bounds 80..95"),
            "{err}"
        );
    }
    assert_eq!(
        e.effective_limits("b1", SPO2),
        Some(Limits {
            low: Some(92.0),
            high: None
        })
    );
    // A side without configured bounds cannot be changed at the bedside.
    let mut e = engine_with(|c| {
        c.rates.clear();
        c.news2.enabled = false;
        c.limits.retain(|r| r.id == "hr");
        c.limits[0].high_range = None;
    });
    let err = e
        .set_bed_limits("b1", HR, &lim(Some(50.0), Some(130.0)))
        .unwrap_err();
    assert!(
        err.to_string().contains("high_range is not configured"),
        "{err}"
    );
    e.set_bed_limits("b1", HR, &lim(Some(45.0), Some(120.0)))
        .unwrap();
}

#[test]
fn switching_a_limit_off_needs_a_reason_and_is_listed_until_restored() {
    let mut e = limits_only();
    let err = e.set_bed_limits("b1", SPO2, &lim(None, None)).unwrap_err();
    assert!(err.to_string().contains("needs a reason"), "{err}");
    let mut blank = lim(None, None);
    blank.reason = Some("  ".into());
    assert!(e.set_bed_limits("b1", SPO2, &blank).is_err());
    assert!(e.limits_off().is_empty());

    let mut off = lim(None, None);
    off.reason = Some("palliative care, family informed".into());
    e.set_bed_limits("b1", SPO2, &off).unwrap();
    let listed = e.limits_off();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].bed.as_str(),
            listed[0].label.as_str(),
            listed[0].sides.as_str(),
            listed[0].reason.as_str(),
            listed[0].who.as_str()
        ),
        (
            "b1",
            "SpO2",
            "low",
            "palliative care, family informed",
            "dr-a"
        )
    );
    assert!(hold(&mut e, "b1", SPO2, 70.0, 0, 30).is_empty());
    // Restored: no longer listed, and the alarm works again.
    e.set_bed_limits("b1", SPO2, &lim(Some(90.0), None))
        .unwrap();
    assert!(e.limits_off().is_empty());
    assert!(!hold(&mut e, "b1", SPO2, 70.0, 31, 60).is_empty());

    // A site may forbid switching a limit off at all.
    let mut e = engine_with(|c| c.limits.iter_mut().for_each(|r| r.off_allowed = false));
    let err = e.set_bed_limits("b1", SPO2, &off).unwrap_err();
    assert!(err.to_string().contains("may not be switched off"), "{err}");
}

// ---------------------------------------------------------------- silence cap

#[test]
fn the_renewal_past_the_cap_is_refused_and_the_alarm_sounds_again() {
    let mut e = engine_with(|c| {
        c.rates.clear();
        c.news2.enabled = false;
        c.max_silence_renewals = 2;
    });
    hold(&mut e, "b1", SPO2, 87.0, 0, 15);
    let id = e.active("b1")[0].alarm_id.clone();
    // The first silence and two renewals are granted.
    for (i, t) in [16, 40, 70].into_iter().enumerate() {
        let out = e.silence("b1", &id, 60, "nurse-a", at(t)).unwrap();
        assert_eq!(phases(&out), [p("update", "silenced", "PM")], "silence {i}");
    }
    // The third renewal is refused and the alarm re-announces itself.
    let err = e.silence("b1", &id, 60, "nurse-a", at(100)).unwrap_err();
    let AlarmError::SilenceCapReached {
        reannounce, why, ..
    } = err
    else {
        panic!("{err}")
    };
    assert!(why.contains("at most 2 renewals"), "{why}");
    assert_eq!(phases(&reannounce), [p("update", "active", "PM")]);
    assert_eq!(e.active("b1")[0].state, AlarmState::Active);
    assert_eq!(e.active("b1")[0].silenced_until_us, None);
    assert_eq!(e.stats().silences_refused, 1);
}

#[test]
fn silences_of_one_alarm_are_capped_in_total_time() {
    let mut e = engine_with(|c| {
        c.rates.clear();
        c.news2.enabled = false;
        c.max_silence_s = 120;
        c.max_silence_total_s = 200;
        c.max_silence_renewals = 10;
    });
    hold(&mut e, "b1", SPO2, 80.0, 0, 15);
    let id = e.active("b1")[0].alarm_id.clone();
    e.silence("b1", &id, 120, "n", at(16)).unwrap();
    // Renewed at 136 (120 s used): only 80 s are left.
    e.tick(at(136));
    e.silence("b1", &id, 120, "n", at(136)).unwrap();
    assert_eq!(e.active("b1")[0].silenced_until_us, Some(at(216)));
    e.tick(at(216));
    assert!(e.silence("b1", &id, 10, "n", at(217)).is_err());
    // A renewal while silenced counts only the time used so far.
    let mut e = engine_with(|c| {
        c.rates.clear();
        c.news2.enabled = false;
        c.max_silence_total_s = 200;
    });
    hold(&mut e, "b1", SPO2, 80.0, 0, 15);
    let id = e.active("b1")[0].alarm_id.clone();
    e.silence("b1", &id, 120, "n", at(16)).unwrap();
    e.silence("b1", &id, 120, "n", at(26)).unwrap();
    assert_eq!(e.active("b1")[0].silenced_until_us, Some(at(146)));
}

// ---------------------------------------------------------------- device time

fn sent_at(bed: &str, code: u32, value: f64, device_s: i64, receive_s: i64) -> Observation {
    let mut o = obs(bed, code, value, receive_s);
    o.device_time_us = Some(at(device_s));
    o
}

fn clock_alarms(out: &[Alarm]) -> Vec<(String, String, String)> {
    out.iter()
        .filter(|a| a.source == DEVICE_CLOCK_SOURCE)
        .map(|a| (a.phase.clone(), a.state.clone(), a.device_id.clone()))
        .collect()
}

#[test]
fn a_future_dated_reading_cannot_switch_off_a_beds_alarms() {
    let mut e = limits_only();
    // Bed A: one SpO2 reading dated 2099, received now.
    let year_2099 = 4_070_908_800_i64 - 1_700_000_000;
    let mut out = e.on_observation(&sent_at("A", SPO2, 97.0, year_2099, 0), at(0));
    assert_eq!(clock_alarms(&out), [p("start", "active", "mon-1")]);
    assert!(
        out[0].text.contains("mon-1") && out[0].text.contains("ahead"),
        "{}",
        out[0].text
    );
    assert!(out[0].text.contains("2099-01-01"), "{}", out[0].text);
    // Then thirty genuine readings of 80 % on bed A and on bed B.
    for t in 1..=30 {
        out.extend(feed(&mut e, "A", SPO2, 80.0, t));
        feed(&mut e, "B", SPO2, 80.0, t);
    }
    let spo2 = |bed: &str| {
        e.active(bed)
            .into_iter()
            .filter(|a| a.source == "limit:spo2")
            .count()
    };
    assert_eq!((spo2("A"), spo2("B")), (1, 1));
    let s = e.stats();
    assert_eq!((s.late_readings, s.out_of_order_readings), (0, 0));
    assert_eq!(s.untrusted_time_readings_by_bed.get("A"), Some(&1));
    // The clock alarm ends once the device's times have been plausible for settle_s (30 s).
    let ends: Vec<i64> = out
        .iter()
        .filter(|a| a.source == DEVICE_CLOCK_SOURCE && a.phase == "end")
        .map(|a| a.event_time_us)
        .collect();
    assert_eq!(ends, [at(30)]);
    assert_eq!(e.device_clocks()[0].state, "ok");
}

#[test]
fn a_reading_dated_far_in_the_past_is_evaluated_at_receive_time() {
    let mut e = limits_only();
    // Device clock two hours behind: every reading is evaluated at its receive time, so the
    // sustain timer runs in real time and the alarm starts after 15 s.
    let out: Vec<Alarm> = (0..=20)
        .flat_map(|t| e.on_observation(&sent_at("A", SPO2, 80.0, t - 7200, t), at(t)))
        .collect();
    assert!(out
        .iter()
        .any(|a| a.source == "limit:spo2" && a.phase == "start"));
    assert_eq!(clock_alarms(&out)[0], p("start", "active", "mon-1"));
    assert!(out[0].text.contains("2 h behind"), "{}", out[0].text);
    assert_eq!(e.stats().late_readings, 0);
    assert_eq!(e.device_clocks()[0].state, "unsynced");
}

#[test]
fn a_drifting_device_clock_is_trusted_until_it_leaves_the_bounds() {
    let mut e = limits_only();
    // The device clock gains 1 s every 2 s: within the 10 s tolerance for the first 20 s.
    let mut out = Vec::new();
    for t in 0..=60 {
        out.extend(e.on_observation(&sent_at("A", SPO2, 80.0, t + t / 2, t), at(t)));
    }
    let starts: Vec<&Alarm> = clock_alarms(&out)
        .iter()
        .zip(out.iter().filter(|a| a.source == DEVICE_CLOCK_SOURCE))
        .filter(|(c, _)| c.0 == "start")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(starts.len(), 1);
    assert_eq!(
        starts[0].event_time_us,
        at(22),
        "the first reading 11 s ahead"
    );
    // The limit alarm started (in device time while trusted, then at receive time) and no
    // reading was dropped as late or out of order on the way.
    assert!(out
        .iter()
        .any(|a| a.source == "limit:spo2" && a.phase == "start"));
    let s = e.stats();
    assert_eq!((s.late_readings, s.untrusted_time_readings), (0, 39));
    // Clock corrected at 61: readings are trusted again; the alarm ends after settle_s.
    for t in 61..=95 {
        out.extend(feed(&mut e, "A", SPO2, 80.0, t));
    }
    out.extend(e.tick(at(95)));
    assert_eq!(clock_alarms(&out).last().unwrap().0, "end");
}

#[test]
fn late_readings_past_the_threshold_raise_the_device_clock_alarm() {
    let mut e = limits_only();
    hold(&mut e, "A", HR, 70.0, 0, 100);
    // Five readings 60 s late within a minute: the device clock may be wrong.
    let mut out = Vec::new();
    for i in 0..5 {
        out.extend(e.on_observation(&sent_at("A", HR, 70.0, 41 + i, 101 + i), at(101 + i)));
    }
    assert_eq!(e.late_readings("A"), 5);
    assert_eq!(clock_alarms(&out), [p("start", "active", "mon-1")]);
    let text = &out
        .iter()
        .find(|a| a.source == DEVICE_CLOCK_SOURCE)
        .unwrap()
        .text;
    assert!(text.contains("5 late readings from mon-1"), "{text}");
    // Four late readings stay only a counter.
    let mut e = limits_only();
    hold(&mut e, "A", HR, 70.0, 0, 100);
    let out: Vec<Alarm> = (0..4)
        .flat_map(|i| e.on_observation(&sent_at("A", HR, 70.0, 41 + i, 101 + i), at(101 + i)))
        .collect();
    assert!(clock_alarms(&out).is_empty());
}

#[test]
fn checked_time_bounds() {
    let c = DeviceClockConfig::default();
    let r = at(0);
    assert_eq!(checked_time(None, r, &c).t_us, r);
    assert_eq!(checked_time(Some(at(10)), r, &c).untrusted_offset_us, None);
    assert_eq!(
        checked_time(Some(at(11)), r, &c).untrusted_offset_us,
        Some(11 * S)
    );
    assert_eq!(checked_time(Some(at(-300)), r, &c).t_us, at(-300));
    assert_eq!(checked_time(Some(at(-301)), r, &c).t_us, r);
    assert_eq!(checked_time(Some(i64::MAX), r, &c).t_us, r);
    assert_eq!(checked_time(Some(i64::MIN), r, &c).t_us, r);
}

#[test]
fn an_alarm_output_down_is_a_technical_alarm_on_the_gateway() {
    let mut e = limits_only();
    let out = e.output_down("pcd04", "pcd04 down for 31 s", true, at(0));
    assert_eq!(out.len(), 1);
    assert_eq!(
        (
            out[0].bed.as_str(),
            out[0].source.as_str(),
            out[0].alert_type.as_str()
        ),
        (GATEWAY_BED, ALARM_OUTPUT_SOURCE, "ST")
    );
    assert!(e.output_down("pcd04", "again", true, at(1)).is_empty());
    let out = e.output_down("pcd04", "", false, at(2));
    assert_eq!(phases(&out), [p("end", "inactive", "PM")]);
}

// ---------------------------------------------------------------- pacing (issue 15)

fn message(bed: &str, t_s: i64, values: &[(u32, f64)]) -> Vec<Observation> {
    values
        .iter()
        .map(|&(code, v)| obs(bed, code, v, t_s))
        .collect()
}

#[test]
fn refresh_and_hold_defaults_and_bounds() {
    let c = AlarmConfig::default();
    assert_eq!((c.refresh_s, c.deescalate_after_s), (15, 15));
    let bad = AlarmConfig {
        refresh_s: 0,
        deescalate_after_s: 301,
        ..Default::default()
    };
    let fields: Vec<String> = bad
        .validate("alarms")
        .into_iter()
        .map(|p| p.field)
        .collect();
    assert_eq!(fields, ["alarms.refresh_s", "alarms.deescalate_after_s"]);
}

#[test]
fn news2_is_scored_once_per_message_not_after_each_reading() {
    let mut e = news2_only();
    // RR 25 (3) + SpO2 95 (1) + SBP 105 (1) + pulse 115 (2) + temperature 37 (0) = 7: high.
    let first = message(
        "b1",
        0,
        &[
            (RR, 25.0),
            (SPO2, 95.0),
            (SBP, 105.0),
            (PR, 115.0),
            (TEMP, 37.0),
        ],
    );
    let out = e.on_message(&first, at(0));
    assert_eq!(phases(&out), [p("start", "active", "PH")]);
    assert_eq!(out[0].text, "NEWS2 7, a parameter scores 3");
    // The next message: RR 16 (0), SpO2 91 (3), the rest the same = 6. Scored after each reading
    // the bed would pass through 4 (the alarm latches), then 7 again (it returns): two records.
    // Scored once, it is 6 (medium, held by deescalate_after_s) and nothing is sent.
    let second = message(
        "b1",
        1,
        &[
            (RR, 16.0),
            (SPO2, 91.0),
            (SBP, 105.0),
            (PR, 115.0),
            (TEMP, 37.0),
        ],
    );
    let before = e.stats().state_changes;
    assert_eq!(phases(&e.on_message(&second, at(1))), []);
    assert_eq!(e.stats().state_changes, before);

    // The same two messages reading by reading do send the latch and the return.
    let mut per_reading = news2_only();
    for o in &first {
        per_reading.on_observation(o, at(0));
    }
    let out: Vec<Alarm> = second
        .iter()
        .flat_map(|o| per_reading.on_observation(o, at(1)))
        .collect();
    assert_eq!(
        phases(&out),
        [p("update", "latched", "PH"), p("update", "active", "PH")]
    );
}

#[test]
fn a_changing_value_is_sent_at_most_once_per_refresh_interval() {
    let mut e = limits_only();
    let start = hold(&mut e, "b1", SPO2, 88.0, 0, 15);
    assert_eq!(phases(&start), [p("start", "active", "PM")]);
    // Every second a new value inside the same priority band, and a tick: 16..=60.
    let mut updates = Vec::new();
    for t in 16..=60 {
        let v = [87.0, 86.0, 88.0, 89.0][(t % 4) as usize];
        let out = feed(&mut e, "b1", SPO2, v, t);
        assert_eq!(phases(&out), [], "no record from a reading at {t} s");
        for a in e.tick(at(t)) {
            updates.push((t, a));
        }
    }
    let times: Vec<i64> = updates.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        times,
        [30, 45, 60],
        "one update per 15 s after the last record"
    );
    for (t, a) in &updates {
        assert_eq!((a.phase.as_str(), a.state.as_str()), ("update", "active"));
        let v = [87.0, 86.0, 88.0, 89.0][(*t % 4) as usize];
        assert_eq!(
            a.text,
            format!("SpO2 {v} < 90"),
            "the latest value at {t} s"
        );
    }
    assert_eq!(e.stats().refreshes, 3);
    // The value stays what it was at 60 s (87): ticks send nothing.
    for t in 61..=90 {
        feed(&mut e, "b1", SPO2, 87.0, t);
        assert_eq!(phases(&e.tick(at(t))), [], "{t} s");
    }
}

#[test]
fn escalation_is_immediate_and_a_wavering_value_does_not_send_deescalate_pairs() {
    let mut e = limits_only();
    let start = hold(&mut e, "b1", SPO2, 88.0, 0, 15);
    assert_eq!(phases(&start), [p("start", "active", "PM")]);
    let mut records = Vec::new();
    // SpO2 wavers around the escalation threshold (85) every second for 40 s.
    for t in 16..=55 {
        let v = if t % 2 == 0 { 84.0 } else { 87.0 };
        records.extend(feed(&mut e, "b1", SPO2, v, t));
    }
    assert_eq!(
        phases(&records),
        [p("escalate", "active", "PH")],
        "escalated at the first 84, at once, and held high while the value wavers"
    );
    assert_eq!(records[0].event_time_us, at(16));
    assert!(e.stats().deescalations_held >= 19);
    // Medium for 15 s: de-escalated once.
    let out = hold(&mut e, "b1", SPO2, 87.0, 56, 71);
    assert_eq!(phases(&out), [p("deescalate", "active", "PM")]);
    assert_eq!(
        out[0].event_time_us,
        at(70),
        "15 s after the lower priority began at 55"
    );
}

#[test]
fn deescalate_after_zero_deescalates_at_once() {
    let mut e = engine_with(|c| {
        c.rates.clear();
        c.news2.enabled = false;
        c.deescalate_after_s = 0;
    });
    hold(&mut e, "b1", SPO2, 88.0, 0, 15);
    assert_eq!(
        phases(&feed(&mut e, "b1", SPO2, 84.0, 16)),
        [p("escalate", "active", "PH")]
    );
    assert_eq!(
        phases(&feed(&mut e, "b1", SPO2, 87.0, 17)),
        [p("deescalate", "active", "PM")]
    );
}

#[test]
fn a_reload_applies_new_limits_keeps_open_alarms_and_ends_those_of_removed_rules() {
    let mut e = limits_only();
    // SpO2 88 for 15 s opens the SpO2 alarm (default low 90, sustain 15 s).
    hold(&mut e, "b1", SPO2, 88.0, 0, 15);
    assert_eq!(e.active("b1").len(), 1);
    // A reload that only moves the SpO2 limit keeps the open alarm as it is (nothing emitted).
    let mut moved = e.config().clone();
    let spo2 = moved.limits.iter().position(|r| r.id == "spo2").unwrap();
    moved.limits[spo2].low = Some(92.0);
    assert!(e.replace_config(moved.clone(), at(16)).unwrap().is_empty());
    assert_eq!(e.active("b1").len(), 1);
    // HR 45 is under the default low of 50: the HR alarm opens under the new config too.
    hold(&mut e, "b1", HR, 45.0, 16, 40);
    assert_eq!(e.active("b1").len(), 2);
    // A reload that removes the SpO2 rule ends its alarm (medium: not latched); HR stays.
    let mut without = moved;
    without.limits.remove(spo2);
    let ended = e.replace_config(without, at(41)).unwrap();
    assert_eq!(phases(&ended), [p("end", "inactive", "PM")]);
    assert_eq!(ended[0].source, "limit:spo2");
    let open = e.active("b1");
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].source, "limit:hr");
    // SpO2 readings no longer alarm.
    assert!(hold(&mut e, "b1", SPO2, 80.0, 42, 70).is_empty());
    // A config with problems changes nothing.
    let mut bad = e.config().clone();
    bad.limits[0].low = Some(500.0);
    bad.limits[0].high = Some(10.0);
    assert!(e.replace_config(bad, at(71)).is_err());
    assert_eq!(e.active("b1").len(), 1);
    assert!(e.config().limits.iter().all(|r| r.id != "spo2"));
}
