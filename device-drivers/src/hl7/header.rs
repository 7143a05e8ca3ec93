//! The MSH segment: who sent a message, what it is, and its control id.
//!
//! [`parse_header`] reads only the first segment (split with `message::split_msh`), so an ACK (even an AE/AR one) can be addressed
//! and correlated when the rest of the message is broken.

use super::error::{ErrorCode, ErrorLocation, Hl7Error};
use super::message::{self, Delimiters};

/// The fields of MSH that routing and acknowledging need.
///
/// Values are kept as written (escape sequences not decoded, components not split) except that a
/// sender's non-standard delimiters are re-encoded as `|^~\&`, so each value can be echoed
/// verbatim into an ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageHeader {
    /// MSH-3, e.g. `ICU_GW^0012AB00000000A1^EUI-64`.
    pub sending_application: String,
    /// MSH-4.
    pub sending_facility: String,
    /// MSH-5.
    pub receiving_application: String,
    /// MSH-6.
    pub receiving_facility: String,
    /// MSH-7 as written (DTM).
    pub message_time: String,
    /// MSH-9.1, e.g. `ORU`.
    pub message_type: String,
    /// MSH-9.2, e.g. `R01`.
    pub trigger_event: String,
    /// MSH-10, echoed in MSA-2.
    pub control_id: String,
    /// MSH-11.1, `P` production, `D` debugging/demo, `T` training.
    pub processing_id: String,
    /// MSH-12.1, e.g. `2.6`.
    pub version: String,
}

/// Reads the MSH segment of an HL7 v2 message.
///
/// Errors (all AR): the payload is empty, does not start with `MSH`, its first segment is not
/// UTF-8, or MSH-1/MSH-2 do not declare usable delimiters. A leading byte-order mark and leading
/// blank lines are tolerated.
pub fn parse_header(payload: &[u8]) -> Result<MessageHeader, Hl7Error> {
    header_and_delimiters(payload).map(|(header, _)| header)
}

/// [`parse_header`] and the delimiters the message declares, for the decoders.
pub(crate) fn header_and_delimiters(
    payload: &[u8],
) -> Result<(MessageHeader, Delimiters), Hl7Error> {
    let (line, d) = msh_line(payload)?;
    // The MSH line alone, so the header is readable whatever follows it.
    let mut fields = Vec::new();
    let msh = message::split_msh(line, &d, &mut fields);
    // Trimming before re-encoding is the same as after: delimiters are ASCII punctuation and
    // escape sequences contain no whitespace.
    let std = |value: &str| message::to_standard_delimiters(value, &d).into_owned();
    let raw = |n: usize| std(msh.raw(n));
    let comp = |n: usize, c: usize| std(message::component(msh.field(n), c).trim());
    let header = MessageHeader {
        sending_application: raw(3),
        sending_facility: raw(4),
        receiving_application: raw(5),
        receiving_facility: raw(6),
        message_time: raw(7),
        message_type: comp(9, 1),
        trigger_event: comp(9, 2),
        control_id: std(msh.raw(10).trim()),
        processing_id: comp(11, 1),
        version: comp(12, 1),
    };
    Ok((header, d))
}

/// The MSH line of a payload (as text) and its delimiters.
pub(crate) fn msh_line(payload: &[u8]) -> Result<(&str, Delimiters), Hl7Error> {
    let start = leading_noise(payload);
    let body = &payload[start..];
    if !body.starts_with(b"MSH") {
        return Err(not_hl7(payload));
    }
    let end = body
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(body.len());
    let line = std::str::from_utf8(&body[..end]).map_err(|e| {
        Hl7Error::reject(
            ErrorCode::DataTypeError,
            Some(ErrorLocation::field("MSH", 1, 1)),
            format!(
                "the MSH segment is not valid UTF-8 (bad byte at offset {}); configure the device to send UTF-8 or ASCII",
                start + e.valid_up_to()
            ),
        )
    })?;
    let d = Delimiters::from_msh(line)?;
    Ok((line, d))
}

/// Bytes to skip before `MSH`: a UTF-8 byte-order mark and ASCII whitespace.
pub(crate) fn leading_noise(payload: &[u8]) -> usize {
    let bom = if payload.starts_with(&[0xEF, 0xBB, 0xBF]) {
        3
    } else {
        0
    };
    bom + payload[bom..]
        .iter()
        .take_while(|b| b.is_ascii_whitespace())
        .count()
}

fn not_hl7(payload: &[u8]) -> Hl7Error {
    let shown = String::from_utf8_lossy(&payload[..payload.len().min(20)]).into_owned();
    let message = if payload.is_empty() {
        "the message is empty: expected an HL7 v2 message starting with MSH".to_owned()
    } else {
        format!(
            "this is not an HL7 v2 message: it must start with 'MSH' but starts with '{}'; check that the device sends HL7 over MLLP to this port",
            message::quote(&shown)
        )
    };
    Hl7Error::reject(ErrorCode::SegmentSequenceError, None, message)
}

/// The MSH checks every accepted message type shares: HL7 v2.x (MSH-12), a known processing id
/// (MSH-11) and a message control id (MSH-10) to acknowledge. `version_example` and `sender`
/// only shape the messages ("e.g. 2.6"; "the device must number its messages").
pub(crate) fn check_envelope(
    h: &MessageHeader,
    version_example: &str,
    sender: &str,
) -> Result<(), Hl7Error> {
    if !h.version.starts_with("2.") {
        return Err(Hl7Error::reject(
            ErrorCode::UnsupportedVersionId,
            Some(ErrorLocation::field("MSH", 1, 12)),
            format!(
                "HL7 version '{}' (MSH-12) is not supported: expected HL7 v2.x, e.g. {version_example}",
                message::quote(&h.version)
            ),
        ));
    }
    if !matches!(h.processing_id.as_str(), "" | "P" | "D" | "T") {
        return Err(Hl7Error::reject(
            ErrorCode::UnsupportedProcessingId,
            Some(ErrorLocation::field("MSH", 1, 11)),
            format!(
                "processing id '{}' (MSH-11) is not supported: expected P (production), D (debugging/demo) or T (training)",
                message::quote(&h.processing_id)
            ),
        ));
    }
    if h.control_id.is_empty() {
        return Err(Hl7Error::content(
            ErrorCode::RequiredFieldMissing,
            ErrorLocation::field("MSH", 1, 10),
            format!(
                "MSH-10 (message control id) is empty; {sender} must number its messages so they can be acknowledged"
            ),
        ));
    }
    Ok(())
}

/// The error for a second MSH in one frame: batches are not accepted, one message per frame.
pub(crate) fn second_msh(occurrence: u32, index: usize) -> Hl7Error {
    Hl7Error::content(
        ErrorCode::SegmentSequenceError,
        ErrorLocation {
            segment: "MSH".into(),
            sequence: occurrence,
            field: None,
            component: None,
        },
        format!(
            "segment {index} is a second MSH: batches are not supported, send one message per MLLP frame"
        ),
    )
}

/// Splits a whole payload and visits every field, repetition, component and subcomponent (the
/// work `hl7_parser::Message::parse` does eagerly); returns how many subcomponents it saw. For
/// the pcd01 bench, through `hl7::split_for_bench`.
pub(crate) fn split_everything(payload: &[u8]) -> Result<usize, Hl7Error> {
    let (_, d) = msh_line(payload)?;
    let start = leading_noise(payload);
    let text = std::str::from_utf8(&payload[start..]).map_err(|e| {
        Hl7Error::reject(
            ErrorCode::DataTypeError,
            None,
            format!(
                "the message is not valid UTF-8 (bad byte at offset {})",
                start + e.valid_up_to()
            ),
        )
    })?;
    let mut count = 0;
    let mut fields = Vec::new();
    for seg in message::parse(text, &d, &mut fields)? {
        for field in (1..).map_while(|n| seg.field(n)) {
            for rep in field.repeats() {
                for comp in rep.components() {
                    count += comp.subcomponents().count();
                }
            }
        }
    }
    Ok(count)
}
