//! IHE PCD-04 (Report Alert, ACM) `ORU^R40^ORU_R40` built from an `icu.v1.Alarm`
//! (protocols.md §4.5).
//!
//! Guarantees:
//! - Pure: no I/O, no clock (the caller passes the message time and control id).
//! - Layout as §4.5: MSH, PID (only with a patient), PV1 (only with a location), OBR, the MDS
//!   device row (OBX-11 `X`), then exactly seven alert attribute rows, sub-ids
//!   `<metric containment>.1` … `.7` in that order, OBX-11 `R`.
//! - Written with the standard delimiters `|^~\&`; free text (alarm text, source, ids) is escaped
//!   with the same helper as the ACK builder, so no input can add a field, a segment or break MLLP
//!   framing. Values that carry HL7 components (`sending_app`, `bed_location`, ...) keep their
//!   `^` and have every component escaped.
//!
//! UNCONFIRMED in the sources (protocols.md §4.5), kept as parameters or documented choices:
//! - MSH-21: [`PCD04_PROFILE_DEFAULT`] (`…1.6.4.4`, infusion simulator); the GE Mural test message
//!   uses `…1.6.1.4.1`. Set [`Pcd04Context::profile`] to change it.
//! - Event identification of a low-limit violation: the MDC_EVT_LO code is not in the sources, so
//!   a physiological alarm uses `196648^MDC_EVT_HI^MDC` only when its text shows a high-limit
//!   violation (`>`, as the engine writes `SpO2 84 < 90` / `HR 135 > 120`), and
//!   `196616^MDC_EVT_ALARM^MDC` otherwise.
//! - OBX-7 one-sided limits are written `>low` / `<high` (HL7 reference-range style); two-sided
//!   as `low-high` as in the worked example.
//! - The MDS row always uses `69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC`.

use chrono::{DateTime, Utc};
use icu_protos::v1::Alarm;

use super::message::escape;
use super::time::format_dtm;

/// Default MSH-21 message profile of PCD-04 (OID UNCONFIRMED, see the module docs).
pub const PCD04_PROFILE_DEFAULT: &str = "IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4^ISO";
/// Containment sub-id of the alert rows when the alarm has no metric.
pub const DEFAULT_METRIC_CONTAINMENT: &str = "1.1.1.1";
/// OBR-4 and the technical event identification: `MDC_EVT_ALARM`.
pub const MDC_EVT_ALARM_CWE: &str = "196616^MDC_EVT_ALARM^MDC";
/// Event identification of a high-limit violation.
pub const MDC_EVT_HI_CWE: &str = "196648^MDC_EVT_HI^MDC";

const MDS_ROW_CODE: &str = "69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC";
const ATTR_ALERT_SOURCE: &str = "68480^MDC_ATTR_ALERT_SOURCE^MDC";
const ATTR_EVENT_PHASE: &str = "68481^MDC_ATTR_EVENT_PHASE^MDC";
const ATTR_ALARM_STATE: &str = "68482^MDC_ATTR_ALARM_STATE^MDC";
const ATTR_INACTIVATION_STATE: &str = "68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC";
const ATTR_ALARM_PRIORITY: &str = "68484^MDC_ATTR_ALARM_PRIORITY^MDC";
const ATTR_ALERT_TYPE: &str = "68485^MDC_ATTR_ALERT_TYPE^MDC";

/// The alarmed metric, written as the `.2` source row of a physiological alarm.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MetricRow {
    /// MDC code of the metric, e.g. 147842.
    pub mdc_code: u32,
    /// MDC reference id, e.g. `MDC_ECG_HEART_RATE`.
    pub refid: String,
    /// The value that raised the alarm (empty OBX-5 when `None` or not finite).
    pub value: Option<f64>,
    /// MDC unit code, e.g. 264864 (0 = no units).
    pub unit_code: u32,
    /// e.g. `MDC_DIM_BEAT_PER_MIN`.
    pub unit_refid: String,
    /// Alarm limits in force (low, high), written to OBX-7.
    pub limits: Option<(Option<f64>, Option<f64>)>,
    /// Containment sub-id `MDS.VMD.CHAN.METRIC` of the metric; [`DEFAULT_METRIC_CONTAINMENT`]
    /// when `None`.
    pub containment: Option<String>,
}

/// Everything about the message that is not in the [`Alarm`] itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Pcd04Context {
    /// MSH-3 (HL7-encoded, components kept), e.g. `ICU_GW^0012AB00000000A1^EUI-64`. Also the
    /// assigning application of the OBR-2/OBR-3 entity identifiers.
    pub sending_app: String,
    /// MSH-4.
    pub sending_facility: String,
    /// MSH-5, e.g. `AM`.
    pub receiving_app: String,
    /// MSH-6, e.g. `HOSP`.
    pub receiving_facility: String,
    /// PID-3.1; no PID segment when `None` (or empty).
    pub patient_id: Option<String>,
    /// PID-3.4 assigning authority; with it PID-3 is `<id>^^^<authority>^MR`.
    pub patient_authority: Option<String>,
    /// PV1-3 (PL, components kept, e.g. `ICU1^101^A^HOSP`); no PV1 when `None` (or empty).
    pub bed_location: Option<String>,
    /// OBX-18 of the MDS row: an EUI-64 (16 hex digits, written `<id>^^<id>^EUI-64`) or a device
    /// id (written as is, escaped).
    pub equipment_id: Option<String>,
    /// The alarmed metric (physiological alarms); `None` for technical alarms and NEWS2.
    pub metric: Option<MetricRow>,
    /// MSH-21; defaults to [`PCD04_PROFILE_DEFAULT`].
    pub profile: String,
}

impl Default for Pcd04Context {
    fn default() -> Self {
        Pcd04Context {
            sending_app: super::ack::GATEWAY_APPLICATION.to_owned(),
            sending_facility: String::new(),
            receiving_app: String::new(),
            receiving_facility: String::new(),
            patient_id: None,
            patient_authority: None,
            bed_location: None,
            equipment_id: None,
            metric: None,
            profile: PCD04_PROFILE_DEFAULT.to_owned(),
        }
    }
}

/// Builds the PCD-04 message for one alarm state change; segments joined by `\r` (no trailing
/// separator, no MLLP framing). `control_id` is MSH-10 (and OBR-2); `now` is MSH-7 and OBR-7.
pub fn build_pcd04(
    alarm: &Alarm,
    ctx: &Pcd04Context,
    control_id: &str,
    now: DateTime<Utc>,
) -> String {
    let time = format_dtm(now);
    let app = components(&ctx.sending_app);
    let control_id = escape(control_id);
    let mut segments: Vec<String> = Vec::with_capacity(13);

    segments.push(format!(
        "MSH|^~\\&|{app}|{}|{}|{}|{time}||ORU^R40^ORU_R40|{control_id}|P|2.6|||AL|NE||UNICODE UTF-8|||{}",
        components(&ctx.sending_facility),
        components(&ctx.receiving_app),
        components(&ctx.receiving_facility),
        components(&ctx.profile),
    ));

    let patient = ctx
        .patient_id
        .as_deref()
        .filter(|p| !p.is_empty())
        .or(Some(alarm.patient_id.as_str()).filter(|p| !p.is_empty()));
    if let Some(id) = patient {
        let cx = match ctx.patient_authority.as_deref().filter(|a| !a.is_empty()) {
            Some(authority) => format!("{}^^^{}^MR", escape(id), escape(authority)),
            None => escape(id),
        };
        segments.push(format!("PID|||{cx}"));
    }
    if let Some(location) = ctx.bed_location.as_deref().filter(|l| !l.is_empty()) {
        segments.push(format!("PV1||I|{}", components(location)));
    }

    // OBR: OBR-2 this message, OBR-3 the alert event, OBR-29 the original event on later phases.
    let event_id = escape(&alarm.alarm_id);
    let mut obr = format!("OBR|1|{control_id}^{app}|{event_id}^{app}|{MDC_EVT_ALARM_CWE}|||{time}");
    if !alarm.phase.is_empty() && alarm.phase != "start" {
        // OBR-29 (EIP): the parent's filler assigned identifier, subcomponents of an EI.
        obr.push_str(&"|".repeat(22));
        obr.push_str(&format!("^{event_id}&{}", app.replace('^', "&")));
    }
    segments.push(obr);

    // MDS device row.
    let equipment = ctx
        .equipment_id
        .as_deref()
        .filter(|e| !e.is_empty())
        .map(equipment_identifier)
        .unwrap_or_default();
    segments.push(format!(
        "OBX|1||{MDS_ROW_CODE}|1.0.0.0|||||||X|||||||{equipment}"
    ));

    let technical = alarm.alert_type == "ST";
    let sub = ctx
        .metric
        .as_ref()
        .and_then(|m| m.containment.as_deref())
        .filter(|c| !c.is_empty())
        .map_or_else(|| DEFAULT_METRIC_CONTAINMENT.to_owned(), escape);
    let event_time = chrono::DateTime::<Utc>::from_timestamp_micros(alarm.event_time_us)
        .map(format_dtm)
        .unwrap_or_default();

    // .1 event identification
    let row1 = if technical {
        let condition = if alarm.mdc_code != 0 && alarm.mdc_code != 196616 {
            format!("{}^{}^MDC", alarm.mdc_code, escape(&alarm.text))
        } else {
            format!("^{}", escape(&alarm.text))
        };
        attribute_row(
            2,
            "CWE",
            MDC_EVT_ALARM_CWE,
            &sub,
            1,
            &condition,
            &event_time,
        )
    } else {
        let code = if is_high_limit(alarm) {
            MDC_EVT_HI_CWE
        } else {
            MDC_EVT_ALARM_CWE
        };
        attribute_row(2, "ST", code, &sub, 1, &escape(&alarm.text), &event_time)
    };
    segments.push(row1);

    // .2 source
    let row2 = match (&ctx.metric, technical) {
        (Some(m), false) => format!(
            "OBX|3|NM|{}^{}^MDC|{sub}.2|{}|{}|{}||||R",
            m.mdc_code,
            escape(&m.refid),
            m.value
                .filter(|v| v.is_finite())
                .map(fmt_num)
                .unwrap_or_default(),
            if m.unit_code == 0 {
                String::new()
            } else {
                format!("{}^{}^MDC", m.unit_code, escape(&m.unit_refid))
            },
            m.limits.map(fmt_limits).unwrap_or_default(),
        ),
        (Some(m), true) => attribute_row(
            3,
            "CWE",
            ATTR_ALERT_SOURCE,
            &sub,
            2,
            &format!("{}^{}^MDC", m.mdc_code, escape(&m.refid)),
            "",
        ),
        (None, _) => attribute_row(
            3,
            "CWE",
            ATTR_ALERT_SOURCE,
            &sub,
            2,
            &format!("^{}", escape(&alarm.source)),
            "",
        ),
    };
    segments.push(row2);

    let (state, inactivation) = alarm_state(&alarm.state);
    let rows: [(&str, &str); 5] = [
        (ATTR_EVENT_PHASE, event_phase(&alarm.phase)),
        (ATTR_ALARM_STATE, state),
        (ATTR_INACTIVATION_STATE, inactivation),
        (ATTR_ALARM_PRIORITY, priority(&alarm.priority)),
        (ATTR_ALERT_TYPE, alert_type(&alarm.alert_type)),
    ];
    for (i, (code, value)) in rows.into_iter().enumerate() {
        segments.push(attribute_row(4 + i, "ST", code, &sub, 3 + i, value, ""));
    }
    segments.join("\r")
}

/// One alert attribute row: `OBX|<set>|<type>|<code>|<sub>.<n>|<value>||||||R[|||<time>]`.
fn attribute_row(
    set_id: usize,
    value_type: &str,
    code: &str,
    sub: &str,
    n: usize,
    value: &str,
    time: &str,
) -> String {
    let mut row = format!("OBX|{set_id}|{value_type}|{code}|{sub}.{n}|{value}||||||R");
    if !time.is_empty() {
        row.push_str("|||");
        row.push_str(time);
    }
    row
}

/// The alarm text shows a high-limit violation (`HR 135 > 120`, `**ABPs 119>110`).
fn is_high_limit(alarm: &Alarm) -> bool {
    alarm.text.contains('>')
}

/// PCD-04 event phase; an unknown phase is reported as `update`.
fn event_phase(phase: &str) -> &'static str {
    match phase {
        "start" => "start",
        "continue" => "continue",
        "end" => "end",
        "escalate" => "escalate",
        "deescalate" => "deescalate",
        "reset" => "reset",
        _ => "update",
    }
}

/// (alarm state, inactivation state). The engine's `acknowledged` and `silenced` are an active
/// alarm whose inactivation state says why it is quiet.
fn alarm_state(state: &str) -> (&'static str, &'static str) {
    match state {
        "inactive" => ("inactive", "enabled"),
        "latched" => ("latched", "enabled"),
        "acknowledged" => ("active", "alert-acknowledged"),
        "silenced" => ("active", "audio-paused"),
        _ => ("active", "enabled"),
    }
}

/// IEC 60601-1-8 priority as PCD-04 `PH/PM/PL/PN`; an unknown one is reported as high (fail
/// loud rather than hide an alarm).
fn priority(p: &str) -> &'static str {
    match p {
        "PH" | "high" => "PH",
        "PM" | "medium" => "PM",
        "PL" | "low" => "PL",
        "PN" | "none" => "PN",
        _ => "PH",
    }
}

/// `SP` / `ST` / `SA`; anything else is physiological.
fn alert_type(t: &str) -> &'static str {
    match t {
        "ST" => "ST",
        "SA" => "SA",
        _ => "SP",
    }
}

/// An HL7-encoded value with components: keep `^`, escape everything else in each component.
fn components(value: &str) -> String {
    value.split('^').map(escape).collect::<Vec<_>>().join("^")
}

fn equipment_identifier(id: &str) -> String {
    if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{id}^^{id}^EUI-64")
    } else {
        escape(id)
    }
}

fn fmt_num(v: f64) -> String {
    format!("{v}")
}

fn fmt_limits((low, high): (Option<f64>, Option<f64>)) -> String {
    let low = low.filter(|v| v.is_finite());
    let high = high.filter(|v| v.is_finite());
    match (low, high) {
        (Some(l), Some(h)) => format!("{}-{}", fmt_num(l), fmt_num(h)),
        (Some(l), None) => format!(">{}", fmt_num(l)),
        (None, Some(h)) => format!("<{}", fmt_num(h)),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// protocols.md §4.5 constructed example, verbatim.
    const EXAMPLE: [&str; 12] = [
        "MSH|^~\\&|ICU_GW^0012AB00000000A1^EUI-64|ICU_GW|AM|HOSP|20250101120000+0000||ORU^R40^ORU_R40|ALM000045|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_ACM_001^IHE PCD^1.3.6.1.4.1.19376.1.6.4.4^ISO",
        "PID|||123456^^^HOSP^MR||DOE^JOHN^^^^^L",
        "PV1||I|ICU1^101^A^HOSP",
        "OBR|1|ALM000045^ICU_GW^0012AB00000000A1^EUI-64|EVT-7781^ICU_GW^0012AB00000000A1^EUI-64|196616^MDC_EVT_ALARM^MDC|||20250101120000+0000",
        "OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||0012AB00000000B2^^0012AB00000000B2^EUI-64",
        "OBX|2|ST|196648^MDC_EVT_HI^MDC|1.1.1.1.1|HR 135>120||||||R|||20250101115959+0000",
        "OBX|3|NM|147842^MDC_ECG_HEART_RATE^MDC|1.1.1.1.2|135|264864^MDC_DIM_BEAT_PER_MIN^MDC|50-120||||R",
        "OBX|4|ST|68481^MDC_ATTR_EVENT_PHASE^MDC|1.1.1.1.3|start||||||R",
        "OBX|5|ST|68482^MDC_ATTR_ALARM_STATE^MDC|1.1.1.1.4|active||||||R",
        "OBX|6|ST|68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC|1.1.1.1.5|enabled||||||R",
        "OBX|7|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|1.1.1.1.6|PM||||||R",
        "OBX|8|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|1.1.1.1.7|SP||||||R",
    ];

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 1, 1, h, m, s).unwrap()
    }

    fn example_alarm() -> Alarm {
        Alarm {
            device_id: "mon-1".into(),
            bed: "ICU1-101A".into(),
            alarm_id: "EVT-7781".into(),
            mdc_code: 147842,
            text: "HR 135>120".into(),
            priority: "PM".into(),
            phase: "start".into(),
            state: "active".into(),
            event_time_us: t(11, 59, 59).timestamp_micros(),
            alert_type: "SP".into(),
            source: "limit:hr".into(),
            patient_id: "123456".into(),
            ..Default::default()
        }
    }

    fn hr_metric() -> MetricRow {
        MetricRow {
            mdc_code: 147842,
            refid: "MDC_ECG_HEART_RATE".into(),
            value: Some(135.0),
            unit_code: 264864,
            unit_refid: "MDC_DIM_BEAT_PER_MIN".into(),
            limits: Some((Some(50.0), Some(120.0))),
            containment: None,
        }
    }

    fn example_ctx() -> Pcd04Context {
        Pcd04Context {
            sending_app: "ICU_GW^0012AB00000000A1^EUI-64".into(),
            sending_facility: "ICU_GW".into(),
            receiving_app: "AM".into(),
            receiving_facility: "HOSP".into(),
            patient_id: Some("123456".into()),
            patient_authority: Some("HOSP".into()),
            bed_location: Some("ICU1^101^A^HOSP".into()),
            equipment_id: Some("0012AB00000000B2".into()),
            metric: Some(hr_metric()),
            ..Default::default()
        }
    }

    fn segments(msg: &str) -> Vec<&str> {
        msg.split('\r').collect()
    }

    /// Parses with hl7-parser and checks that every segment came back (its silent truncation).
    fn parse_back(msg: &str) -> hl7_parser::Message<'_> {
        let parsed = hl7_parser::Message::parse(msg).expect("well-formed HL7");
        let lines = segments(msg);
        super::super::message::check_all_segments_returned(&lines, &parsed.segments)
            .expect("every segment parsed");
        parsed
    }

    fn field<'m>(seg: &hl7_parser::message::Segment<'m>, n: usize) -> &'m str {
        seg.field(n).map_or("", |f| f.raw_value())
    }

    #[test]
    fn pcd04_reproduces_the_worked_example() {
        let msg = build_pcd04(&example_alarm(), &example_ctx(), "ALM000045", t(12, 0, 0));
        let got = segments(&msg);
        assert_eq!(got.len(), EXAMPLE.len(), "{msg}");
        for (i, (g, e)) in got.iter().zip(EXAMPLE).enumerate() {
            if i == 1 {
                // The alarm path carries no patient name: PID-5 is left out.
                assert_eq!(*g, "PID|||123456^^^HOSP^MR");
                assert!(e.starts_with(g), "{g} vs {e}");
            } else {
                assert_eq!(*g, e, "segment {i}");
            }
        }
        assert!(!msg.ends_with('\r'));
    }

    #[test]
    fn pcd04_seven_attribute_rows_in_order_parse_back() {
        let msg = build_pcd04(&example_alarm(), &example_ctx(), "ALM000045", t(12, 0, 0));
        let parsed = parse_back(&msg);
        let names: Vec<&str> = parsed.segments().map(|s| s.name).collect();
        assert_eq!(
            names,
            ["MSH", "PID", "PV1", "OBR", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX", "OBX"]
        );
        let msh = parsed.segment("MSH").unwrap();
        assert_eq!(field(msh, 9), "ORU^R40^ORU_R40");
        assert_eq!(field(msh, 10), "ALM000045");
        assert_eq!(field(msh, 21), PCD04_PROFILE_DEFAULT);
        let obx: Vec<_> = parsed.segments().filter(|s| s.name == "OBX").collect();
        assert_eq!(field(obx[0], 11), "X");
        let expected = [
            ("196648^MDC_EVT_HI^MDC", "ST", "HR 135>120"),
            ("147842^MDC_ECG_HEART_RATE^MDC", "NM", "135"),
            ("68481^MDC_ATTR_EVENT_PHASE^MDC", "ST", "start"),
            ("68482^MDC_ATTR_ALARM_STATE^MDC", "ST", "active"),
            (
                "68483^MDC_ATTR_ALARM_INACTIVATION_STATE^MDC",
                "ST",
                "enabled",
            ),
            ("68484^MDC_ATTR_ALARM_PRIORITY^MDC", "ST", "PM"),
            ("68485^MDC_ATTR_ALERT_TYPE^MDC", "ST", "SP"),
        ];
        for (i, (row, (code, ty, value))) in obx[1..].iter().zip(expected).enumerate() {
            assert_eq!(field(row, 1), (i + 2).to_string());
            assert_eq!(field(row, 2), ty);
            assert_eq!(field(row, 3), code);
            assert_eq!(field(row, 4), format!("1.1.1.1.{}", i + 1));
            assert_eq!(field(row, 5), value);
            assert_eq!(field(row, 11), "R");
        }
        assert_eq!(field(obx[1], 14), "20250101115959+0000");
        assert_eq!(field(obx[2], 7), "50-120");
    }

    #[test]
    fn pcd04_maps_states_phases_and_links_later_phases_to_the_event() {
        let cases = [
            (
                "update",
                "acknowledged",
                "update",
                "active",
                "alert-acknowledged",
            ),
            ("update", "silenced", "update", "active", "audio-paused"),
            ("update", "latched", "update", "latched", "enabled"),
            ("end", "inactive", "end", "inactive", "enabled"),
            ("escalate", "active", "escalate", "active", "enabled"),
        ];
        for (phase, state, want_phase, want_state, want_inact) in cases {
            let alarm = Alarm {
                phase: phase.into(),
                state: state.into(),
                priority: "PH".into(),
                ..example_alarm()
            };
            let msg = build_pcd04(&alarm, &example_ctx(), "ALM000046", t(12, 0, 1));
            let parsed = parse_back(&msg);
            let obr = parsed.segment("OBR").unwrap();
            assert_eq!(field(obr, 3), "EVT-7781^ICU_GW^0012AB00000000A1^EUI-64");
            assert_eq!(
                field(obr, 29),
                "^EVT-7781&ICU_GW&0012AB00000000A1&EUI-64",
                "{phase}"
            );
            let obx: Vec<_> = parsed.segments().filter(|s| s.name == "OBX").collect();
            assert_eq!(field(obx[3], 5), want_phase);
            assert_eq!(field(obx[4], 5), want_state);
            assert_eq!(field(obx[5], 5), want_inact);
            assert_eq!(field(obx[6], 5), "PH");
        }
        // start has no OBR-29
        let msg = build_pcd04(&example_alarm(), &example_ctx(), "A", t(12, 0, 0));
        let parsed = parse_back(&msg);
        assert_eq!(field(parsed.segment("OBR").unwrap(), 29), "");
    }

    #[test]
    fn pcd04_low_limit_uses_the_generic_alarm_event() {
        let alarm = Alarm {
            text: "SpO2 84 < 90".into(),
            ..example_alarm()
        };
        let metric = MetricRow {
            mdc_code: 150456,
            refid: "MDC_PULS_OXIM_SAT_O2".into(),
            value: Some(84.0),
            unit_code: 262688,
            unit_refid: "MDC_DIM_PERCENT".into(),
            limits: Some((Some(90.0), None)),
            containment: Some("1.2.1.1".into()),
        };
        let ctx = Pcd04Context {
            metric: Some(metric),
            ..example_ctx()
        };
        let msg = build_pcd04(&alarm, &ctx, "A", t(12, 0, 0));
        let seg = segments(&msg);
        assert_eq!(
            seg[5],
            "OBX|2|ST|196616^MDC_EVT_ALARM^MDC|1.2.1.1.1|SpO2 84 < 90||||||R|||20250101115959+0000"
        );
        assert_eq!(
            seg[6],
            "OBX|3|NM|150456^MDC_PULS_OXIM_SAT_O2^MDC|1.2.1.1.2|84|262688^MDC_DIM_PERCENT^MDC|>90||||R"
        );
        assert!(seg[11].starts_with("OBX|8|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|1.2.1.1.7|SP|"));
    }

    #[test]
    fn pcd04_technical_alarm_variant() {
        let alarm = Alarm {
            alarm_id: "bed1:stale-feed:mon-1:1".into(),
            mdc_code: 196616,
            text: "no data from mon-1".into(),
            priority: "PL".into(),
            alert_type: "ST".into(),
            source: "gateway:stale-feed".into(),
            ..example_alarm()
        };
        let ctx = Pcd04Context {
            metric: None,
            patient_id: None,
            bed_location: None,
            equipment_id: Some("mon-1".into()),
            ..example_ctx()
        };
        let alarm = Alarm {
            patient_id: String::new(),
            ..alarm
        };
        let msg = build_pcd04(&alarm, &ctx, "A1", t(12, 0, 0));
        let seg = segments(&msg);
        assert_eq!(seg.len(), 10, "no PID, no PV1: {msg}");
        assert!(seg[1].starts_with("OBR|1|A1^"));
        assert!(seg[2].ends_with("|X|||||||mon-1"));
        assert_eq!(
            seg[3],
            "OBX|2|CWE|196616^MDC_EVT_ALARM^MDC|1.1.1.1.1|^no data from mon-1||||||R|||20250101115959+0000"
        );
        assert_eq!(
            seg[4],
            "OBX|3|CWE|68480^MDC_ATTR_ALERT_SOURCE^MDC|1.1.1.1.2|^gateway:stale-feed||||||R"
        );
        assert_eq!(
            seg[8],
            "OBX|7|ST|68484^MDC_ATTR_ALARM_PRIORITY^MDC|1.1.1.1.6|PL||||||R"
        );
        assert_eq!(
            seg[9],
            "OBX|8|ST|68485^MDC_ATTR_ALERT_TYPE^MDC|1.1.1.1.7|ST||||||R"
        );
        parse_back(&msg);

        // A technical alarm on a metric (sensor off) names the metric as its source.
        let ctx = Pcd04Context {
            metric: Some(hr_metric()),
            ..ctx
        };
        let alarm = Alarm {
            mdc_code: 196882,
            text: "leads off".into(),
            ..alarm
        };
        let msg = build_pcd04(&alarm, &ctx, "A2", t(12, 0, 0));
        let seg = segments(&msg);
        assert_eq!(
            seg[3],
            "OBX|2|CWE|196616^MDC_EVT_ALARM^MDC|1.1.1.1.1|196882^leads off^MDC||||||R|||20250101115959+0000"
        );
        assert_eq!(
            seg[4],
            "OBX|3|CWE|68480^MDC_ATTR_ALERT_SOURCE^MDC|1.1.1.1.2|147842^MDC_ECG_HEART_RATE^MDC||||||R"
        );
    }

    #[test]
    fn pcd04_escapes_free_text() {
        let alarm = Alarm {
            alarm_id: "b|1:x^y".into(),
            mdc_code: 0,
            text: "HR|135 > 120 ^~&\\ \r\nOBX|9|evil".into(),
            alert_type: "ST".into(),
            source: "dev|\r^x".into(),
            patient_id: String::new(),
            ..example_alarm()
        };
        let ctx = Pcd04Context {
            patient_id: Some("12|34".into()),
            bed_location: Some("ICU|1^10~1".into()),
            equipment_id: Some("dev\r1".into()),
            metric: None,
            ..example_ctx()
        };
        let msg = build_pcd04(&alarm, &ctx, "C|1", t(12, 0, 0));
        assert!(!msg.contains('\n'));
        assert!(!msg.bytes().any(|b| b == 0x0B || b == 0x1C));
        let parsed = parse_back(&msg);
        assert_eq!(parsed.segments().count(), 12, "{msg}");
        assert_eq!(field(parsed.segment("MSH").unwrap(), 10), "C\\F\\1");
        assert_eq!(
            field(parsed.segment("PID").unwrap(), 3),
            "12\\F\\34^^^HOSP^MR"
        );
        assert_eq!(
            field(parsed.segment("PV1").unwrap(), 3),
            "ICU\\F\\1^10\\R\\1"
        );
        let obr = parsed.segment("OBR").unwrap();
        assert!(field(obr, 3).starts_with("b\\F\\1:x\\S\\y^ICU_GW"));
        let obx: Vec<_> = parsed.segments().filter(|s| s.name == "OBX").collect();
        assert_eq!(field(obx[0], 18), "dev 1");
        assert_eq!(
            field(obx[1], 5),
            "^HR\\F\\135 > 120 \\S\\\\R\\\\T\\\\E\\   OBX\\F\\9\\F\\evil"
        );
        assert_eq!(field(obx[2], 5), "^dev\\F\\ \\S\\x");
    }
}
