//! IHE PCD-01 (ORU^R01) to canonical observations (protocols.md §4.3).
//!
//! Guarantees:
//! - All or nothing: a message either decodes completely or is refused with one [`Hl7Error`]
//!   (AE for bad content, AR for a message this interface does not take); it is never
//!   half-accepted.
//! - Never panics, whatever the bytes (fuzzed by a property test).
//! - Fills what the message says and nothing else: `device_id`, `bed`, `seq` and `clock_synced`
//!   are left at their defaults for the gateway to set.
//!
//! Row rules:
//! - Device rows (OBX-2 and OBX-5 empty: MDS/VMD/CHAN) give no observation; their OBX-18 is the
//!   equipment id of the metric rows that follow in the same MDS (first number of OBX-4).
//! - `NM`: OBX-5 must be an HL7 number (sign, digits, optional decimal point), else AE 102. An
//!   empty value gives `value = None` with status NOT_AVAILABLE. A row with no OBX-2 but a value
//!   is treated as `NM` when the value is a number, as text otherwise.
//! - Any other value type (`ST`, `CWE`, `NA`, ...): `value_text` holds OBX-5 with escape sequences
//!   decoded, `value` is `None`.
//! - OBX-3 is `code^REFID^MDC`; the code must be a whole number. A LOINC-coded row (`^LN`, e.g.
//!   patient sex 46098-0) is kept with `mdc_code = 0` and the code in `loinc`.
//! - Status: MSH-11 `D`/`T` or OBX-8 CAL/TEST/DEMO → TEST; else OBX-8 INV/QUES (or OBX-11 `W`)
//!   → INVALID; else OBX-8 NAV/OFF/NI, OBX-11 `X` or an empty NM value → NOT_AVAILABLE; else
//!   OBX-11 `C` → CORRECTED; else VALID.
//! - Time: OBX-14, else OBR-7 of the enclosing OBR, else none; zone-less times are UTC (see
//!   [`super::parse_dtm`]).
//! - OBX-7 `low-high` gives the alarm limits (either side may be empty, negative numbers are
//!   understood); a range that is not of that form is ignored.

use icu_protos::v1::{Observation, ObservationStatus};

use super::error::{AckCode, ErrorCode, ErrorLocation, Hl7Error};
use super::header::{header_and_delimiters, leading_noise, MessageHeader};
use super::message::{self, component, quote, repetitions, unescape, Delimiters, Field, Segment};
use super::time::parse_dtm;
use crate::terminology::Terminology;

/// A decoded PCD-01 message.
#[derive(Debug, Clone, PartialEq)]
pub struct Pcd01Message {
    pub header: MessageHeader,
    /// EUI-64 (or other instance id) of the device: the first OBX-18 (component 3, else
    /// component 1), else MSH-3.2.
    pub equipment_id: Option<String>,
    /// PID-3.1 of the first repetition, as reported by the device (reconciliation only).
    pub patient_id: Option<String>,
    /// PV1-3 as written (`PointOfCare^Room^Bed^Facility...`).
    pub location: Option<String>,
    pub observations: Vec<Observation>,
}

/// Decodes a PCD-01 payload (one MLLP frame, markers excluded). See the module docs for rules.
pub fn decode_pcd01(
    payload: &[u8],
    receive_time_us: i64,
    terminology: &Terminology,
) -> Result<Pcd01Message, Hl7Error> {
    decode_pcd01_with(payload, receive_time_us, terminology, &mut |_, _| {
        Ok(Vec::new())
    })
}

/// The OBX rows (1-based occurrences, ascending) another decoder of the same message takes, so
/// they give no observation here; called once with the split message before any row is read.
pub(super) type RowsElsewhere<'h> =
    dyn FnMut(&[Segment<'_>], &Delimiters) -> Result<Vec<u32>, Hl7Error> + 'h;

/// [`decode_pcd01`], with the rows `rows_elsewhere` returns left to its caller (the waveform
/// decoder takes the waveform rows and their attribute rows this way, from one split).
pub(super) fn decode_pcd01_with(
    payload: &[u8],
    receive_time_us: i64,
    terminology: &Terminology,
    rows_elsewhere: &mut RowsElsewhere<'_>,
) -> Result<Pcd01Message, Hl7Error> {
    let (header, d) = header_and_delimiters(payload)?;
    check_envelope(&header)?;
    let start = leading_noise(payload);
    let text = std::str::from_utf8(&payload[start..]).map_err(|e| {
        Hl7Error::reject(
            ErrorCode::DataTypeError,
            None,
            format!(
                "the message is not valid UTF-8 (bad byte at offset {}); configure the device to send UTF-8 or ASCII",
                start + e.valid_up_to()
            ),
        )
    })?;
    let mut fields = Vec::new();
    let segments = message::parse(text, &d, &mut fields)?;
    let skip = rows_elsewhere(&segments, &d)?;

    let mut decoder = Decoder {
        d,
        terminology,
        header: &header,
        receive_time_us,
        test_mode: matches!(header.processing_id.as_str(), "D" | "T"),
        obr_time: None,
        current_mds: None,
        current_equipment: None,
        first_obx18: None,
        skip,
        rows: Vec::with_capacity(segments.iter().filter(|s| s.id == "OBX").count()),
    };
    let mut patient_id = None;
    let mut location = None;
    for seg in &segments {
        match seg.id {
            "MSH" if seg.occurrence > 1 => {
                return Err(super::header::second_msh(seg.occurrence, seg.index));
            }
            "PID" if seg.occurrence == 1 => {
                let id = unescape(component(seg.field(3), 1), &d);
                patient_id = Some(id.trim().to_owned()).filter(|s| !s.is_empty());
            }
            "PV1" if seg.occurrence == 1 => {
                let raw = message::to_standard_delimiters(seg.raw(3).trim(), &d);
                location = Some(raw.into_owned()).filter(|s| !s.is_empty());
            }
            "OBR" => decoder.obr(seg)?,
            "OBX" => decoder.obx(seg)?,
            _ => {}
        }
    }

    // The header is stored with the standard delimiters.
    let std = Delimiters::default();
    let msh3 = Field::new(&header.sending_application, &std);
    let msh3_eui = unescape(component(Some(msh3), 2), &std).trim().to_owned();
    let equipment_id = decoder
        .first_obx18
        .clone()
        .or(Some(msh3_eui).filter(|s| !s.is_empty()));
    let mut observations = decoder.rows;
    for obs in &mut observations {
        if let (true, Some(id)) = (obs.equipment_id.is_empty(), &equipment_id) {
            obs.equipment_id.clone_from(id);
        }
        if let Some(id) = &patient_id {
            obs.reported_patient_id.clone_from(id);
        }
    }
    Ok(Pcd01Message {
        header,
        equipment_id,
        patient_id,
        location,
        observations,
    })
}

/// MSH-9, MSH-11, MSH-12 and MSH-10 checks.
pub(super) fn check_envelope(h: &MessageHeader) -> Result<(), Hl7Error> {
    let msh9 = || Some(ErrorLocation::field("MSH", 1, 9));
    let shown_type = || quote(&format!("{}^{}", h.message_type, h.trigger_event));
    if h.message_type != "ORU" {
        return Err(Hl7Error::reject(
            ErrorCode::UnsupportedMessageType,
            msh9(),
            format!(
                "message type '{}' is not accepted here: this interface takes IHE PCD-01 observations (ORU^R01) only",
                shown_type()
            ),
        ));
    }
    if h.trigger_event != "R01" {
        return Err(Hl7Error::reject(
            ErrorCode::UnsupportedEventCode,
            msh9(),
            format!(
                "event '{}' is not accepted here: this interface takes IHE PCD-01 observations (ORU^R01) only",
                shown_type()
            ),
        ));
    }
    super::header::check_envelope(h, "2.6", "the device")?;
    Ok(())
}

/// Walks OBR/OBX segments in order, keeping the context a row needs.
struct Decoder<'a> {
    d: Delimiters,
    terminology: &'a Terminology,
    header: &'a MessageHeader,
    receive_time_us: i64,
    /// MSH-11 D/T: every observation is TEST.
    test_mode: bool,
    /// OBR-7 of the enclosing OBR.
    obr_time: Option<i64>,
    /// First number of the last OBX-4 seen, and the nearest OBX-18 within it.
    current_mds: Option<String>,
    current_equipment: Option<String>,
    first_obx18: Option<String>,
    /// OBX occurrences another decoder takes (ascending): no observation from them.
    skip: Vec<u32>,
    /// Observations with the equipment id known so far (empty: use the message-level one;
    /// an OBX-18 equipment id is never empty).
    rows: Vec<Observation>,
}

impl Decoder<'_> {
    fn obr(&mut self, seg: &Segment<'_>) -> Result<(), Hl7Error> {
        self.obr_time = time_field(seg, 7)?;
        Ok(())
    }

    fn obx(&mut self, seg: &Segment<'_>) -> Result<(), Hl7Error> {
        let d = self.d;
        let n = seg.occurrence;
        let at = |field| ErrorLocation::field("OBX", n, field);
        let value_type = component(seg.field(2), 1).trim();
        let obx5 = seg.raw(5);
        let containment_id = seg.raw(4).trim();

        // Equipment context: a new MDS resets it; an OBX-18 sets it.
        let mds = containment_id.split('.').next().unwrap_or("");
        if self.current_mds.as_deref() != Some(mds) {
            self.current_mds = Some(mds.to_owned());
            self.current_equipment = None;
        }
        if let Some(eq) = equipment_of(seg.field(18), &d) {
            self.first_obx18.get_or_insert_with(|| eq.clone());
            self.current_equipment = Some(eq);
        }
        if value_type.is_empty() && obx5.trim().is_empty() {
            return Ok(()); // device-related row (MDS/VMD/CHAN)
        }
        if self.skip.binary_search(&n).is_ok() {
            return Ok(()); // taken by another decoder (a waveform row)
        }

        // OBX-3: code^REFID^coding system.
        let obx3 = seg.field(3);
        if seg.raw(3).trim().is_empty() {
            return Err(Hl7Error::content(
                ErrorCode::RequiredFieldMissing,
                at(3),
                format!("OBX-3 (observation identifier) is empty on row {n}, which carries a value; expected code^REFID^MDC"),
            ));
        }
        let code_text = component(obx3, 1).trim();
        let refid = unescape(component(obx3, 2), &d).trim().to_owned();
        let system = component(obx3, 3).trim();
        let (mdc_code, loinc_from_row) = if system.eq_ignore_ascii_case("LN") {
            (0, Some(code_text.to_owned()))
        } else if code_text.is_empty() {
            return Err(Hl7Error::content(
                ErrorCode::RequiredFieldMissing,
                ErrorLocation::component("OBX", n, 3, 1),
                format!("OBX-3.1 (MDC code) is empty on row {n}; expected code^REFID^MDC"),
            ));
        } else {
            let code = numeric_mdc_code(code_text, n, "150456^MDC_PULS_OXIM_SAT_O2^MDC")?;
            (code, None)
        };
        let term = self.terminology.by_mdc(mdc_code).filter(|_| mdc_code != 0);

        // OBX-5 by value type.
        let first_value = repetitions(seg.field(5)).next().unwrap_or("").trim();
        let numeric = value_type.eq_ignore_ascii_case("NM")
            || (value_type.is_empty() && is_hl7_numeric(first_value));
        let (value, value_text) = if numeric {
            if first_value.is_empty() {
                (None, String::new())
            } else if let Some(v) = parse_hl7_numeric(first_value) {
                (Some(v), first_value.to_owned())
            } else {
                return Err(Hl7Error::content(
                    ErrorCode::DataTypeError,
                    at(5),
                    format!("OBX-5 '{}' is not numeric", quote(first_value)),
                ));
            }
        } else {
            (None, unescape(obx5, &d).into_owned())
        };

        let (unit_mdc_code, unit_ucum) = units(seg.field(6), &d, self.terminology);

        let limits = repetitions(seg.field(7)).next().unwrap_or("");
        let (limit_low, limit_high) = parse_range(limits.trim());
        let flags: Vec<&str> = repetitions(seg.field(8))
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        let result_status = component(seg.field(11), 1).trim();
        let status = self.status(result_status, &flags, numeric && value.is_none());
        let device_time_us = match time_field(seg, 14)? {
            Some(t) => Some(t),
            None => self.obr_time,
        };
        let source_row = seg.raw(1).trim().parse::<u32>().unwrap_or(n);

        let observation = Observation {
            mdc_code,
            mdc_refid: if refid.is_empty() {
                term.map(|t| t.refid.clone()).unwrap_or_default()
            } else {
                refid
            },
            value,
            value_text,
            unit_ucum,
            unit_mdc_code,
            containment_id: containment_id.to_owned(),
            device_time_us,
            receive_time_us: self.receive_time_us,
            status: status as i32,
            limit_low,
            limit_high,
            abnormal_flags: flags.join("~"),
            loinc: loinc_from_row
                .or_else(|| term.and_then(|t| t.loinc.clone()))
                .unwrap_or_default(),
            source_message_id: self.header.control_id.clone(),
            source_row,
            equipment_id: self.current_equipment.clone().unwrap_or_default(),
            result_status: result_status.to_ascii_uppercase(),
            ..Default::default()
        };
        self.rows.push(observation);
        Ok(())
    }

    fn status(&self, obx11: &str, flags: &[&str], empty_numeric: bool) -> ObservationStatus {
        row_status(self.test_mode, obx11, flags, empty_numeric)
    }
}

/// The status rules of the module docs: `test_mode` is MSH-11 D/T, `flags` OBX-8, `obx11`
/// OBX-11, `empty_numeric` an NM row without a value.
pub(super) fn row_status(
    test_mode: bool,
    obx11: &str,
    flags: &[&str],
    empty_numeric: bool,
) -> ObservationStatus {
    let has = |set: &[&str]| {
        flags
            .iter()
            .any(|f| set.iter().any(|s| f.eq_ignore_ascii_case(s)))
    };
    if test_mode || has(&["CAL", "TEST", "DEMO"]) {
        ObservationStatus::Test
    } else if has(&["INV", "QUES"]) || obx11 == "W" {
        ObservationStatus::Invalid
    } else if has(&["NAV", "OFF", "NI"]) || obx11 == "X" || empty_numeric {
        ObservationStatus::NotAvailable
    } else if obx11 == "C" {
        ObservationStatus::Corrected
    } else {
        ObservationStatus::Valid
    }
}

/// OBX-6 as (MDC unit code or 0, UCUM): the UCUM alternate when the sender gave one, the code
/// itself when it is coded UCUM, else the terminology's unit table ("" when unknown).
pub(super) fn units(
    obx6: Option<Field<'_>>,
    d: &Delimiters,
    terminology: &Terminology,
) -> (u32, String) {
    let unit_code_text = component(obx6, 1).trim();
    let unit_mdc_code = unit_code_text.parse::<u32>().unwrap_or(0);
    let ucum_alt = component(obx6, 4).trim();
    let unit_ucum = if component(obx6, 6).trim() == "UCUM" && !ucum_alt.is_empty() {
        unescape(ucum_alt, d).into_owned()
    } else if component(obx6, 3).trim() == "UCUM" {
        unescape(unit_code_text, d).into_owned()
    } else {
        terminology
            .ucum_for_unit(unit_mdc_code)
            .unwrap_or("")
            .to_owned()
    };
    (unit_mdc_code, unit_ucum)
}

/// OBX-3.1 of OBX row `n` as a numeric MDC code, else AE 102 at `OBX^n^3^1` (`example` shows
/// a good OBX-3).
pub(super) fn numeric_mdc_code(code_text: &str, n: u32, example: &str) -> Result<u32, Hl7Error> {
    code_text.parse::<u32>().map_err(|_| {
        Hl7Error::content(
            ErrorCode::DataTypeError,
            ErrorLocation::component("OBX", n, 3, 1),
            format!(
                "OBX-3.1 '{}' is not a numeric MDC code; expected code^REFID^MDC such as {example}",
                quote(code_text)
            ),
        )
    })
}

/// A DTM field of a segment: `None` when empty, AE 102 when malformed.
pub(super) fn time_field(seg: &Segment<'_>, field: usize) -> Result<Option<i64>, Hl7Error> {
    if seg.raw(field).trim().is_empty() {
        return Ok(None);
    }
    // Only the first component carries the time (DTM; TS has a precision component).
    let value = component(seg.field(field), 1).trim();
    parse_dtm(value).map(Some).map_err(|e| {
        Hl7Error::new(
            AckCode::AE,
            ErrorCode::DataTypeError,
            Some(ErrorLocation::field(seg.id, seg.occurrence, field as u32)),
            format!("{}-{field} {e}", seg.id),
        )
    })
}

/// OBX-18 equipment instance id: component 3 (EUI-64/UUID) if present, else component 1.
fn equipment_of(field: Option<Field<'_>>, d: &Delimiters) -> Option<String> {
    let third = unescape(component(field, 3), d).trim().to_owned();
    let id = if third.is_empty() {
        unescape(component(field, 1), d).trim().to_owned()
    } else {
        third
    };
    Some(id).filter(|s| !s.is_empty())
}

/// HL7 NM: optional sign, digits, optional decimal point (`72`, `-0.5`, `+3.`, `.25`).
fn is_hl7_numeric(text: &str) -> bool {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !(int.is_empty() && frac.is_empty()) && digits(int) && digits(frac)
}

/// The value of an HL7 NM, or `None` if it is not one (or does not fit an f64).
pub(super) fn parse_hl7_numeric(text: &str) -> Option<f64> {
    if !is_hl7_numeric(text) {
        return None;
    }
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// OBX-7 `low-high`; either side may be empty; negative bounds are understood (`-10--2`).
fn parse_range(text: &str) -> (Option<f64>, Option<f64>) {
    for (i, _) in text.match_indices('-') {
        let (low, high) = (text[..i].trim(), text[i + 1..].trim());
        let side = |s: &str| -> Option<Option<f64>> {
            if s.is_empty() {
                Some(None)
            } else {
                parse_hl7_numeric(s).map(Some)
            }
        };
        if let (Some(l), Some(h)) = (side(low), side(high)) {
            if l.is_some() || h.is_some() {
                return (l, h);
            }
        }
    }
    (None, None)
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn hl7_numbers() {
        for ok in ["72", "-0.5", "+3.", ".25", "007", "1.000"] {
            assert!(is_hl7_numeric(ok), "{ok}");
        }
        for bad in [
            "", "-", ".", "+.", "1e5", "abc", "1,5", "NaN", "inf", "1.2.3", "--1", " 1",
        ] {
            assert!(!is_hl7_numeric(bad), "{bad}");
        }
        assert_eq!(parse_hl7_numeric(&"9".repeat(400)), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("50-120"), (Some(50.0), Some(120.0)));
        assert_eq!(parse_range("90-"), (Some(90.0), None));
        assert_eq!(parse_range("-160"), (None, Some(160.0)));
        assert_eq!(parse_range("-10-10"), (Some(-10.0), Some(10.0)));
        assert_eq!(parse_range("-10--2"), (Some(-10.0), Some(-2.0)));
        assert_eq!(parse_range("35.5 - 38.5"), (Some(35.5), Some(38.5)));
        for ignored in ["", "-", ">50", "50", "a-b", "1-2-3"] {
            assert_eq!(parse_range(ignored), (None, None), "{ignored}");
        }
    }
}
