//! IHE PCD-01 (ORU^R01) messages from a simulated patient monitor.
//!
//! Messages follow the layout of ../shared/reference/protocols.md section 4.3: MSH with the
//! monitor's EUI-64 in MSH-3, PID/PV1, one OBR whose OBR-7 times the periodic values, an MDS
//! row with OBX-18, then one NM row per metric with MDC code, MDC unit, limits and status. NIBP
//! is episodic (every fifth message) and carries its own OBX-14 time.

use chrono::{DateTime, Utc};

use crate::physiology::{Patient, Vitals};
use crate::SimBed;

/// One observation the simulator put on the wire.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SentObservation {
    pub device_id: String,
    pub bed_id: String,
    pub control_id: String,
    pub mdc_code: u32,
    pub value: f64,
    pub ucum: String,
    /// Device time in microseconds (whole seconds: HL7 DTM is sent at second precision).
    pub device_time_us: i64,
}

/// A simulated monitor at one bed.
pub struct Monitor {
    pub bed: SimBed,
    pub patient: Patient,
    /// The vitals of the last message (the waveforms follow them).
    pub last_vitals: Option<Vitals>,
    counter: u64,
    /// Seconds added to every timestamp the monitor writes (a monitor with a wrong clock).
    pub clock_skew_s: i64,
}

struct Metric {
    code: u32,
    refid: &'static str,
    unit_code: u32,
    unit_refid: &'static str,
    ucum: &'static str,
    containment: &'static str,
    limits: &'static str,
}

const HR: Metric = Metric {
    code: 147842,
    refid: "MDC_ECG_HEART_RATE",
    unit_code: 264864,
    unit_refid: "MDC_DIM_BEAT_PER_MIN",
    ucum: "/min",
    containment: "1.1.1.1",
    limits: "50-120",
};
const SPO2: Metric = Metric {
    code: 150456,
    refid: "MDC_PULS_OXIM_SAT_O2",
    unit_code: 262688,
    unit_refid: "MDC_DIM_PERCENT",
    ucum: "%",
    containment: "1.2.1.1",
    limits: "90-100",
};
const PR: Metric = Metric {
    code: 149530,
    refid: "MDC_PULS_OXIM_PULS_RATE",
    unit_code: 264864,
    unit_refid: "MDC_DIM_BEAT_PER_MIN",
    ucum: "/min",
    containment: "1.2.1.2",
    limits: "50-120",
};
const RR: Metric = Metric {
    code: 151562,
    refid: "MDC_RESP_RATE",
    unit_code: 264928,
    unit_refid: "MDC_DIM_RESP_PER_MIN",
    ucum: "/min",
    containment: "1.4.1.1",
    limits: "8-30",
};
const TEMP: Metric = Metric {
    code: 150364,
    refid: "MDC_TEMP_BODY",
    unit_code: 268192,
    unit_refid: "MDC_DIM_DEGC",
    ucum: "Cel",
    containment: "1.5.1.1",
    limits: "35-39",
};
const SYS: Metric = Metric {
    code: 150301,
    refid: "MDC_PRESS_CUFF_SYS",
    unit_code: 266016,
    unit_refid: "MDC_DIM_MMHG",
    ucum: "mm[Hg]",
    containment: "1.3.1.1",
    limits: "90-160",
};
const DIA: Metric = Metric {
    code: 150302,
    refid: "MDC_PRESS_CUFF_DIA",
    unit_code: 266016,
    unit_refid: "MDC_DIM_MMHG",
    ucum: "mm[Hg]",
    containment: "1.3.1.2",
    limits: "50-90",
};
const MEAN: Metric = Metric {
    code: 150303,
    refid: "MDC_PRESS_CUFF_MEAN",
    unit_code: 266016,
    unit_refid: "MDC_DIM_MMHG",
    ucum: "mm[Hg]",
    containment: "1.3.1.3",
    limits: "60-110",
};

/// MSH, PID, PV1, the OBR (OBR-4 `service`, OBR-7 `obr7`) and the MDS row with the monitor's
/// EUI-64 in OBX-18, as every message of a simulated monitor starts (MSH-7 `msh7`).
pub(crate) fn head_segments(
    bed: &SimBed,
    control_id: &str,
    msh7: &str,
    service: &str,
    obr7: &str,
) -> Vec<String> {
    let eui = &bed.monitor_eui64;
    vec![
        format!("MSH|^~\\&|SIM_MON^{eui}^EUI-64|ICU_SIM|ICU_GW|HOSP|{msh7}||ORU^R01^ORU_R01|{control_id}|P|2.6|||AL|NE||UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"),
        format!("PID|||SIM{:04}^^^HOSP^MR||SIMULATED^PATIENT{}^^^^^L", bed.index, bed.index),
        format!("PV1||I|ICU^{:03}^{}^HOSP", bed.index, bed.bed_id),
        format!("OBR|1|{control_id}^SIM_MON^{eui}^EUI-64|{control_id}^SIM_MON^{eui}^EUI-64|{service}|||{obr7}"),
        format!("OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X|||||||{eui}^^{eui}^EUI-64"),
    ]
}

fn hl7_time(t: DateTime<Utc>) -> String {
    t.format("%Y%m%d%H%M%S+0000").to_string()
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{}", v as i64)
    } else {
        format!("{v:.1}")
    }
}

impl Monitor {
    pub fn new(bed: SimBed, seed: u64) -> Self {
        let patient = Patient::new(seed.wrapping_mul(1_000_003).wrapping_add(bed.index as u64));
        Self {
            bed,
            patient,
            last_vitals: None,
            counter: 0,
            clock_skew_s: 0,
        }
    }

    /// Builds the next message (segments joined by `\r`) and what it carries.
    pub fn next_message(&mut self, now: DateTime<Utc>) -> (String, Vec<SentObservation>) {
        self.counter += 1;
        let now = now + chrono::Duration::seconds(self.clock_skew_s);
        let v: Vitals = self.patient.step();
        self.last_vitals = Some(v.clone());
        let control_id = format!("{}-{:08}", self.bed.device_id.to_uppercase(), self.counter);
        let ts = hl7_time(now);
        let t_us = now.timestamp() * 1_000_000;
        let mut segs = head_segments(
            &self.bed,
            &control_id,
            &ts,
            "182777000^monitoring of patient^SCT",
            &ts,
        );
        let mut sent = Vec::new();
        let mut rows: Vec<(&Metric, f64, Option<DateTime<Utc>>)> = vec![
            (&HR, v.heart_rate, None),
            (&SPO2, v.spo2, None),
            (&PR, v.heart_rate, None),
            (&RR, v.resp_rate, None),
            (&TEMP, v.temp_c, None),
        ];
        if self.counter % 5 == 1 {
            let measured = now - chrono::Duration::seconds(20);
            rows.push((&SYS, v.nibp_sys, Some(measured)));
            rows.push((&DIA, v.nibp_dia, Some(measured)));
            rows.push((&MEAN, v.nibp_mean(), Some(measured)));
        }
        for (i, (m, value, episodic)) in rows.into_iter().enumerate() {
            let obx14 = episodic.map(hl7_time).unwrap_or_default();
            segs.push(format!(
                "OBX|{}|NM|{}^{}^MDC|{}|{}|{}^{}^MDC|{}||||R|||{}|||AMEAS^auto-measurement^MDC",
                i + 2,
                m.code,
                m.refid,
                m.containment,
                fmt_value(value),
                m.unit_code,
                m.unit_refid,
                m.limits,
                obx14
            ));
            sent.push(SentObservation {
                device_id: self.bed.device_id.clone(),
                bed_id: self.bed.bed_id.clone(),
                control_id: control_id.clone(),
                mdc_code: m.code,
                value,
                ucum: m.ucum.into(),
                device_time_us: episodic.map(|t| t.timestamp() * 1_000_000).unwrap_or(t_us),
            });
        }
        (segs.join("\r"), sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_decodes_to_what_the_simulator_says_it_sent() {
        let mut m = Monitor::new(crate::beds(1).remove(0), 42);
        let now = DateTime::parse_from_rfc3339("2025-01-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let (msg, sent) = m.next_message(now);
        assert_eq!(sent.len(), 8, "first message carries NIBP too");
        let term = icu_drivers::terminology::Terminology::builtin();
        let decoded = icu_drivers::hl7::decode_pcd01(msg.as_bytes(), 1, &term).unwrap();
        assert_eq!(decoded.equipment_id.as_deref(), Some("0012AB0000000001"));
        assert_eq!(decoded.observations.len(), sent.len());
        for (o, s) in decoded.observations.iter().zip(&sent) {
            assert_eq!(o.mdc_code, s.mdc_code);
            assert_eq!(o.value, Some(s.value));
            assert_eq!(o.unit_ucum, s.ucum);
            assert_eq!(o.device_time_us, Some(s.device_time_us));
        }
        let (_, sent2) = m.next_message(now);
        assert_eq!(sent2.len(), 5, "periodic values only");
    }
}
