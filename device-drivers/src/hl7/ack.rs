//! The HL7 ACK returned to a PCD-01 sender (protocols.md §4.4), and the reading of an ACK the
//! gateway receives as a sender (the PCD-04 alarm output): [`parse_msa`], [`ack_error_text`].
//!
//! Guarantees: the result is one MSH, one MSA and at most one ERR segment joined by `\r`, written
//! with the standard delimiters `|^~\&`; device-derived free text is escaped and carries no CR, LF
//! or other control characters, so it can never break the segment structure or MLLP framing.

use chrono::{DateTime, Utc};

use super::error::{AckCode, Hl7Error};
use super::header::MessageHeader;
use super::message::escape;
use super::time::format_dtm;

/// Sending application used when the received payload had no readable header.
pub const GATEWAY_APPLICATION: &str = "ICU_GW";

/// Builds the ACK for a received message.
///
/// `header` is the received MSH (`None` when the payload was not HL7 at all: the ACK then comes
/// from `ICU_GW` and MSA-2 is empty). `error`, when given, adds an ERR segment with its location,
/// table 0357 code and message. `ack_control_id` is this ACK's own MSH-10.
pub fn build_ack(
    header: Option<&MessageHeader>,
    ack: AckCode,
    error: Option<&Hl7Error>,
    ack_control_id: &str,
    now: DateTime<Utc>,
) -> String {
    let time = format_dtm(now);
    let control_id = escape(ack_control_id);
    let msh = match header {
        Some(h) => {
            let message_type = if h.trigger_event.is_empty() {
                "ACK".to_owned()
            } else {
                format!("ACK^{}^ACK", h.trigger_event)
            };
            let version = if h.version.starts_with("2.") {
                h.version.as_str()
            } else {
                "2.6"
            };
            format!(
                "MSH|^~\\&|{}|{}|{}|{}|{time}||{}|{control_id}|P|{}|||NE|NE",
                raw_safe(&h.receiving_application),
                raw_safe(&h.receiving_facility),
                raw_safe(&h.sending_application),
                raw_safe(&h.sending_facility),
                raw_safe(&message_type),
                raw_safe(version),
            )
        }
        None => {
            format!("MSH|^~\\&|{GATEWAY_APPLICATION}||||{time}||ACK|{control_id}|P|2.6|||NE|NE")
        }
    };
    let original_id = header.map(|h| raw_safe(&h.control_id)).unwrap_or_default();
    let mut out = format!("{msh}\rMSA|{}|{original_id}", ack.as_str());
    if let Some(e) = error {
        let location = e
            .location
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        out.push_str(&format!(
            "\rERR||{}|{}^{}^HL70357|E||||{}",
            escape_location(&location),
            e.code.code(),
            e.code.text(),
            escape(&e.message)
        ));
    }
    out
}

/// A header value is already HL7-encoded (components kept); only make sure it cannot end the
/// field or the segment.
fn raw_safe(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            '|' => "\\F\\".to_owned(),
            c if c.is_control() => " ".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// A location is `SEG^n^f^c`: keep its component separators, escape anything else.
fn escape_location(location: &str) -> String {
    location
        .split('^')
        .map(escape)
        .collect::<Vec<_>>()
        .join("^")
}

/// MSA-1 (acknowledgement code, trimmed, upper case) and MSA-2 (acknowledged control id,
/// trimmed) of a received ACK, with the field separator declared in MSH-1 (`|` when the text
/// does not start with `MSH`). `None` when the text has no MSA segment. Total: any text, however
/// malformed, gives an answer (fuzzed: `icu_drivers::fuzzing::hl7_ack`).
pub fn parse_msa(text: &str) -> Option<(String, String)> {
    let sep = text
        .strip_prefix("MSH")
        .and_then(|r| r.chars().next())
        .unwrap_or('|');
    let msa = text
        .split(['\r', '\n'])
        .find(|line| line.starts_with("MSA") && line[3..].starts_with(sep))?;
    let mut fields = msa.split(sep).skip(1);
    let code = fields.next().unwrap_or("").trim().to_ascii_uppercase();
    let id = fields.next().unwrap_or("").trim().to_owned();
    Some((code, id))
}

/// ERR-8 (user message), else ERR-3, of a negative ACK, at most 200 characters, for the log.
pub fn ack_error_text(text: &str) -> Option<String> {
    let err = text
        .split(['\r', '\n'])
        .find(|line| line.starts_with("ERR|"))?;
    let fields: Vec<&str> = err.split('|').collect();
    let pick = |n: usize| fields.get(n).copied().filter(|f| !f.is_empty());
    pick(8)
        .or_else(|| pick(3))
        .map(|t| t.chars().take(200).collect())
}
