//! Why an HL7 message was not accepted, in the terms the sender's ACK needs.
//!
//! Owns: the acknowledgement code (HL7 table 0008), the error code (HL7 table 0357), the error
//! location (ERR-2) and a message a biomedical engineer can act on. One [`Hl7Error`] maps to one
//! ACK with one ERR segment.

use std::fmt;

/// MSA-1 acknowledgement code (original mode, HL7 table 0008).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application accept: the message was stored.
    AA,
    /// Application error: the message content is wrong; resending it unchanged will fail again.
    AE,
    /// Application reject: the message is not one this interface takes (type, version, not HL7)
    /// or the gateway could not process it (store failure).
    AR,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
        }
    }
}

impl fmt::Display for AckCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// ERR-3 error condition (HL7 table 0357).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    SegmentSequenceError = 100,
    RequiredFieldMissing = 101,
    DataTypeError = 102,
    TableValueNotFound = 103,
    UnsupportedMessageType = 200,
    UnsupportedEventCode = 201,
    UnsupportedProcessingId = 202,
    UnsupportedVersionId = 203,
    UnknownKeyIdentifier = 204,
    DuplicateKeyIdentifier = 205,
    ApplicationRecordLocked = 206,
    ApplicationInternalError = 207,
}

impl ErrorCode {
    /// The numeric code of table 0357.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The table 0357 wording, e.g. "Data type error".
    pub fn text(self) -> &'static str {
        match self {
            ErrorCode::SegmentSequenceError => "Segment sequence error",
            ErrorCode::RequiredFieldMissing => "Required field missing",
            ErrorCode::DataTypeError => "Data type error",
            ErrorCode::TableValueNotFound => "Table value not found",
            ErrorCode::UnsupportedMessageType => "Unsupported message type",
            ErrorCode::UnsupportedEventCode => "Unsupported event code",
            ErrorCode::UnsupportedProcessingId => "Unsupported processing id",
            ErrorCode::UnsupportedVersionId => "Unsupported version id",
            ErrorCode::UnknownKeyIdentifier => "Unknown key identifier",
            ErrorCode::DuplicateKeyIdentifier => "Duplicate key identifier",
            ErrorCode::ApplicationRecordLocked => "Application record locked",
            ErrorCode::ApplicationInternalError => "Application internal error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.text())
    }
}

/// ERR-2 error location: segment id, its 1-based occurrence in the message, field, component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorLocation {
    pub segment: String,
    /// 1-based occurrence of `segment` in the message (the third OBX is 3).
    pub sequence: u32,
    pub field: Option<u32>,
    pub component: Option<u32>,
}

impl ErrorLocation {
    /// `SEG^sequence^field`.
    pub fn field(segment: &str, sequence: u32, field: u32) -> Self {
        Self {
            segment: segment.to_owned(),
            sequence,
            field: Some(field),
            component: None,
        }
    }

    /// `SEG^sequence^field^component`.
    pub fn component(segment: &str, sequence: u32, field: u32, component: u32) -> Self {
        Self {
            component: Some(component),
            ..Self::field(segment, sequence, field)
        }
    }
}

impl fmt::Display for ErrorLocation {
    /// As ERR-2 (ERL): `OBX^3^5` or `OBX^3^5^1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}^{}", self.segment, self.sequence)?;
        if let Some(field) = self.field {
            write!(f, "^{field}")?;
            if let Some(component) = self.component {
                write!(f, "^{component}")?;
            }
        }
        Ok(())
    }
}

/// A message that was not accepted, with everything its ACK carries.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Hl7Error {
    pub ack: AckCode,
    pub code: ErrorCode,
    pub location: Option<ErrorLocation>,
    pub message: String,
}

impl Hl7Error {
    pub fn new(
        ack: AckCode,
        code: ErrorCode,
        location: Option<ErrorLocation>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            ack,
            code,
            location,
            message: message.into(),
        }
    }

    /// AR 207: the gateway could not process a valid message (e.g. the store failed); the sender
    /// should resend it.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            AckCode::AR,
            ErrorCode::ApplicationInternalError,
            None,
            message,
        )
    }

    /// AR 204: the sending device is not declared in the gateway configuration.
    pub fn unknown_device(id: impl fmt::Display) -> Self {
        Self::new(
            AckCode::AR,
            ErrorCode::UnknownKeyIdentifier,
            Some(ErrorLocation::field("MSH", 1, 3)),
            format!(
                "device '{id}' is not declared in the gateway configuration; add it to the devices list or fix the sender's MSH-3/OBX-18"
            ),
        )
    }

    /// AE at a field.
    pub(crate) fn content(code: ErrorCode, location: ErrorLocation, message: String) -> Self {
        Self::new(AckCode::AE, code, Some(location), message)
    }

    /// AR at an optional field.
    pub(crate) fn reject(
        code: ErrorCode,
        location: Option<ErrorLocation>,
        message: String,
    ) -> Self {
        Self::new(AckCode::AR, code, location, message)
    }
}
