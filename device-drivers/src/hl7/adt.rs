//! HL7 v2 ADT (admit, transfer, discharge, update, cancels) to an [`AdtMessage`]
//! (protocols.md §4.6).
//!
//! Owns reading who the patient is and where they are from an ADT message; what that means for
//! the bed → patient census is the gateway's `census` module.
//!
//! Guarantees:
//! - All or nothing: a message decodes completely or is refused with one [`Hl7Error`] (AR for a
//!   message this interface does not take, AE for bad content); never half-accepted.
//! - Never panics, whatever the bytes; no I/O, no clock.
//! - Reads segments with the same layer as PCD-01 (`message.rs`): the same delimiter handling,
//!   the same guard against hl7-parser's silent truncation, HL7 escapes decoded.
//!
//! Field rules:
//! - Events (MSH-9.2): A01 admit, A02 transfer, A03 discharge, A04 register, A08 update patient
//!   information, A11 cancel admit, A12 cancel transfer, A13 cancel discharge. Other message
//!   types are AR 200, other events AR 201, both at `MSH^1^9`.
//! - Patient id: PID-3.1 of the first repetition whose identifier type (PID-3.5) is `MR`, else of
//!   the first repetition with an id; none → AE 101 at `PID^1^3`. Its assigning authority is
//!   PID-3.4 (first subcomponent).
//! - Name: the PID-5 repetition with name type (PID-5.7) `L`, else the first: family PID-5.1
//!   (first subcomponent), given PID-5.2.
//! - Location: PV1-3 (`PointOfCare^Room^Bed^Facility`), prior location PV1-6; A01 and A02 without
//!   PV1-3 → AE 101 at `PV1^1^3`.
//! - Event time: EVN-6 (event occurred), else EVN-2 (recorded), else MSH-7. Every timestamp that
//!   is present (EVN-2, EVN-6, MSH-7, PV1-44, PV1-45) must be a valid DTM, else AE 102 at its
//!   field; zone-less times are UTC ([`super::parse_dtm`]).

use super::error::{AckCode, ErrorCode, ErrorLocation, Hl7Error};
use super::header::{header_and_delimiters, leading_noise, MessageHeader};
use super::message::{self, component, quote, Delimiters, Field, Repeat, Segment};
use super::time::parse_dtm;

/// The ADT trigger events this interface takes (MSH-9.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdtEventKind {
    /// A01: admit / visit notification.
    Admit,
    /// A02: transfer to another location.
    Transfer,
    /// A03: discharge / end visit.
    Discharge,
    /// A04: register a patient (treated as an admission when it names a location).
    Register,
    /// A08: update patient information (never moves a patient).
    Update,
    /// A11: cancel admit / visit notification.
    CancelAdmit,
    /// A12: cancel transfer.
    CancelTransfer,
    /// A13: cancel discharge.
    CancelDischarge,
}

impl AdtEventKind {
    /// All supported events.
    pub const ALL: [AdtEventKind; 8] = [
        AdtEventKind::Admit,
        AdtEventKind::Transfer,
        AdtEventKind::Discharge,
        AdtEventKind::Register,
        AdtEventKind::Update,
        AdtEventKind::CancelAdmit,
        AdtEventKind::CancelTransfer,
        AdtEventKind::CancelDischarge,
    ];

    /// The HL7 trigger event code, e.g. `A01`.
    pub fn code(self) -> &'static str {
        match self {
            AdtEventKind::Admit => "A01",
            AdtEventKind::Transfer => "A02",
            AdtEventKind::Discharge => "A03",
            AdtEventKind::Register => "A04",
            AdtEventKind::Update => "A08",
            AdtEventKind::CancelAdmit => "A11",
            AdtEventKind::CancelTransfer => "A12",
            AdtEventKind::CancelDischarge => "A13",
        }
    }

    /// The event for a trigger event code (`A01` ...), if supported.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// Whether HL7 requires PV1-3 for this event here (A01, A02).
    pub fn requires_location(self) -> bool {
        matches!(self, AdtEventKind::Admit | AdtEventKind::Transfer)
    }
}

impl std::fmt::Display for AdtEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// The patient of an ADT message (PID), escape sequences decoded, trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AdtPatient {
    /// PID-3.1 of the `MR` repetition, else of the first repetition with an id. Never empty.
    pub id: String,
    /// PID-3.4 (first subcomponent), e.g. `HOSP`; may be empty.
    pub assigning_authority: String,
    /// PID-5.1 (first subcomponent).
    pub family: String,
    /// PID-5.2.
    pub given: String,
    /// PID-7.1 as written, e.g. `19600101` (not validated).
    pub birth_date: String,
    /// PID-8.1, e.g. `M`, `F`, `U`.
    pub sex: String,
}

/// A PL (person location) field: PV1-3 or PV1-6. Components are unescaped and trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AdtLocation {
    /// PL.1, e.g. `ICU1`.
    pub point_of_care: String,
    /// PL.2, e.g. `101`.
    pub room: String,
    /// PL.3, e.g. `A`.
    pub bed: String,
    /// PL.4 (first subcomponent), e.g. `HOSP`.
    pub facility: String,
    /// The whole field as written, re-encoded with the standard delimiters `|^~\&`.
    pub raw: String,
}

impl AdtLocation {
    /// The census key `point_of_care^room^bed`, e.g. `ICU1^101^A`.
    pub fn key(&self) -> String {
        format!("{}^{}^{}", self.point_of_care, self.room, self.bed)
    }
}

/// A decoded ADT message.
#[derive(Debug, Clone, PartialEq)]
pub struct AdtMessage {
    pub header: MessageHeader,
    pub event: AdtEventKind,
    /// EVN-6, else EVN-2, else MSH-7, in µs since the Unix epoch (UTC); `None` if none is given.
    pub event_time_us: Option<i64>,
    pub patient: AdtPatient,
    /// PV1-3 assigned location; `None` when PV1 or PV1-3 is absent or empty.
    pub location: Option<AdtLocation>,
    /// PV1-6 prior location (transfers).
    pub prior_location: Option<AdtLocation>,
    /// PV1-19.1 visit number.
    pub visit_number: Option<String>,
    /// PV1-44 admit date/time.
    pub admit_time_us: Option<i64>,
    /// PV1-45 discharge date/time (first repetition).
    pub discharge_time_us: Option<i64>,
}

/// Decodes an ADT payload (one MLLP frame, markers excluded). See the module docs for rules.
pub fn decode_adt(payload: &[u8]) -> Result<AdtMessage, Hl7Error> {
    let (header, d) = header_and_delimiters(payload)?;
    let event = check_envelope(&header)?;
    let start = leading_noise(payload);
    let text = std::str::from_utf8(&payload[start..]).map_err(|e| {
        Hl7Error::reject(
            ErrorCode::DataTypeError,
            None,
            format!(
                "the message is not valid UTF-8 (bad byte at offset {}); configure the sender to send UTF-8 or ASCII",
                start + e.valid_up_to()
            ),
        )
    })?;
    let mut fields = Vec::new();
    let segments = message::parse(text, &d, &mut fields)?;

    let msh_time = msh_time(&header)?;
    let mut evn_recorded = None;
    let mut evn_occurred = None;
    let mut patient = None;
    let mut pv1 = None;
    for seg in &segments {
        match seg.id {
            "MSH" if seg.occurrence > 1 => {
                return Err(super::header::second_msh(seg.occurrence, seg.index));
            }
            "EVN" if seg.occurrence == 1 => {
                evn_recorded = time_field(seg, 2)?;
                evn_occurred = time_field(seg, 6)?;
            }
            "PID" if seg.occurrence == 1 => patient = Some(read_patient(seg, &d)?),
            "PV1" if seg.occurrence == 1 => pv1 = Some(read_visit(seg, &d)?),
            _ => {}
        }
    }
    let Some(patient) = patient else {
        return Err(Hl7Error::content(
            ErrorCode::RequiredFieldMissing,
            ErrorLocation::field("PID", 1, 3),
            format!(
                "the {event} message has no PID segment: PID-3 (patient identifier) is required"
            ),
        ));
    };
    let visit = pv1.unwrap_or_default();
    if event.requires_location() && visit.location.is_none() {
        return Err(Hl7Error::content(
            ErrorCode::RequiredFieldMissing,
            ErrorLocation::field("PV1", 1, 3),
            format!(
                "PV1-3 (assigned patient location) is {} in this {event} message; expected PointOfCare^Room^Bed^Facility such as ICU1^101^A^HOSP",
                if visit.present { "empty" } else { "missing (no PV1 segment)" }
            ),
        ));
    }
    Ok(AdtMessage {
        header,
        event,
        event_time_us: evn_occurred.or(evn_recorded).or(msh_time),
        patient,
        location: visit.location,
        prior_location: visit.prior_location,
        visit_number: visit.visit_number,
        admit_time_us: visit.admit_time_us,
        discharge_time_us: visit.discharge_time_us,
    })
}

/// MSH-9, MSH-12, MSH-11 and MSH-10 checks; the event of MSH-9.2.
fn check_envelope(h: &MessageHeader) -> Result<AdtEventKind, Hl7Error> {
    let msh9 = || Some(ErrorLocation::field("MSH", 1, 9));
    let shown_type = || quote(&format!("{}^{}", h.message_type, h.trigger_event));
    const TAKES: &str = "this interface takes ADT^A01/A02/A03/A04/A08/A11/A12/A13 only";
    if h.message_type != "ADT" {
        return Err(Hl7Error::reject(
            ErrorCode::UnsupportedMessageType,
            msh9(),
            format!(
                "message type '{}' is not accepted here: {TAKES}",
                shown_type()
            ),
        ));
    }
    let Some(event) = AdtEventKind::from_code(&h.trigger_event) else {
        return Err(Hl7Error::reject(
            ErrorCode::UnsupportedEventCode,
            msh9(),
            format!("event '{}' is not accepted here: {TAKES}", shown_type()),
        ));
    };
    super::header::check_envelope(h, "2.5", "the ADT system")?;
    Ok(event)
}

fn read_patient(seg: &Segment<'_>, d: &Delimiters) -> Result<AdtPatient, Hl7Error> {
    // PID-3: the MR repetition, else the first one with an id.
    let mut ids: Vec<(String, String, bool)> = Vec::new();
    if let Some(field) = seg.field(3) {
        for rep in field.repeats() {
            let comp = |n: usize| rep_component(&rep, n);
            let id = text(comp(1), d);
            if id.is_empty() {
                continue;
            }
            let authority = text(first_subcomponent(comp(4), d), d);
            let is_mr = comp(5).trim().eq_ignore_ascii_case("MR");
            ids.push((id, authority, is_mr));
        }
    }
    let chosen =
        ids.iter()
            .position(|(_, _, mr)| *mr)
            .or(if ids.is_empty() { None } else { Some(0) });
    let Some(i) = chosen else {
        return Err(Hl7Error::content(
            ErrorCode::RequiredFieldMissing,
            ErrorLocation::field("PID", seg.occurrence, 3),
            "PID-3 (patient identifier list) is empty; expected ID^^^AssigningAuthority^MR such as 123456^^^HOSP^MR".into(),
        ));
    };
    let (id, assigning_authority, _) = ids.swap_remove(i);

    // PID-5: the legal name (type L), else the first repetition.
    let (mut family, mut given) = (String::new(), String::new());
    if let Some(field) = seg.field(5) {
        let names: Vec<_> = field.repeats().collect();
        let comp = rep_component;
        let legal = names
            .iter()
            .find(|r| comp(r, 7).trim().eq_ignore_ascii_case("L"))
            .or(names.first());
        if let Some(r) = legal {
            family = text(first_subcomponent(comp(r, 1), d), d);
            given = text(comp(r, 2), d);
        }
    }
    Ok(AdtPatient {
        id,
        assigning_authority,
        family,
        given,
        birth_date: text(component(seg.field(7), 1), d),
        sex: text(component(seg.field(8), 1), d),
    })
}

/// What PV1 says about the visit.
#[derive(Default)]
struct Visit {
    present: bool,
    location: Option<AdtLocation>,
    prior_location: Option<AdtLocation>,
    visit_number: Option<String>,
    admit_time_us: Option<i64>,
    discharge_time_us: Option<i64>,
}

fn read_visit(seg: &Segment<'_>, d: &Delimiters) -> Result<Visit, Hl7Error> {
    let visit_number = text(component(seg.field(19), 1), d);
    Ok(Visit {
        present: true,
        location: location(seg, 3, d),
        prior_location: location(seg, 6, d),
        visit_number: Some(visit_number).filter(|s| !s.is_empty()),
        admit_time_us: time_field(seg, 44)?,
        discharge_time_us: time_field(seg, 45)?,
    })
}

/// A PL field; `None` when its first four components are all empty.
fn location(seg: &Segment<'_>, field: usize, d: &Delimiters) -> Option<AdtLocation> {
    let f: Option<Field<'_>> = seg.field(field);
    let loc = AdtLocation {
        point_of_care: text(first_subcomponent(component(f, 1), d), d),
        room: text(first_subcomponent(component(f, 2), d), d),
        bed: text(first_subcomponent(component(f, 3), d), d),
        facility: text(first_subcomponent(component(f, 4), d), d),
        raw: message::to_standard_delimiters(seg.raw(field).trim(), d).into_owned(),
    };
    let empty = loc.point_of_care.is_empty()
        && loc.room.is_empty()
        && loc.bed.is_empty()
        && loc.facility.is_empty();
    (!empty).then_some(loc)
}

/// Component `n` (1-based) of one repetition as written, "" if absent.
fn rep_component<'m>(rep: &Repeat<'m>, n: usize) -> &'m str {
    rep.component(n).map_or("", |c| c.raw_value())
}

/// A component as written up to its first subcomponent separator.
fn first_subcomponent<'a>(value: &'a str, d: &Delimiters) -> &'a str {
    value.split(d.subcomponent).next().unwrap_or("")
}

/// Unescaped and trimmed.
fn text(value: &str, d: &Delimiters) -> String {
    message::unescape(value, d).trim().to_owned()
}

/// MSH-7 (first component; the header holds it with the standard delimiters).
fn msh_time(h: &MessageHeader) -> Result<Option<i64>, Hl7Error> {
    let value = h.message_time.split('^').next().unwrap_or("").trim();
    dtm(value, "MSH", 1, 7)
}

/// A DTM field of a segment: `None` when empty, AE 102 at the field when malformed.
fn time_field(seg: &Segment<'_>, field: usize) -> Result<Option<i64>, Hl7Error> {
    // Only the first component carries the time (DTM; TS has a precision component).
    let value = component(seg.field(field), 1).trim();
    dtm(value, seg.id, seg.occurrence, field)
}

fn dtm(value: &str, segment: &str, sequence: u32, field: usize) -> Result<Option<i64>, Hl7Error> {
    if value.is_empty() {
        return Ok(None);
    }
    parse_dtm(value).map(Some).map_err(|e| {
        Hl7Error::new(
            AckCode::AE,
            ErrorCode::DataTypeError,
            Some(ErrorLocation::field(
                segment,
                sequence,
                u32::try_from(field).unwrap_or(u32::MAX),
            )),
            format!("{segment}-{field} {e}"),
        )
    })
}

#[cfg(test)]
#[path = "adt_tests.rs"]
mod tests;
