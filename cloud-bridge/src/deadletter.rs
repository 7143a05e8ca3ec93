//! The JSON value of one dead letter (for `icu.deadletter`): the rejected input and why.
//!
//! Not FHIR: a plain JSON object (header `content-type: application/json`) built from
//! [`DeadLetterJson`], whose field order is the serialization order, so the bytes are
//! deterministic (the signature covers them). Empty optional fields become `null`:
//! `device_id`, `ack_code` and `location` when empty, `error_code` when 0. `raw_base64` is the
//! standard base64 of the kept bytes; `raw_text` is the same bytes as text when they are valid
//! UTF-8, else `null`. A `received_us` out of range is a mapping error.

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat};
use icu_protos::v1::DeadLetter;
use serde::Serialize;

use crate::error::BridgeError;

/// The JSON object of one dead letter, in output field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterJson<'a> {
    pub gateway_id: &'a str,
    pub device_id: Option<&'a str>,
    /// The record's per-device seq in the outbox.
    pub seq: u64,
    /// RFC 3339 UTC with microseconds, e.g. `2024-05-01T12:00:00.000123Z`.
    pub received_at: String,
    pub transport: &'a str,
    pub peer: &'a str,
    pub stream_offset: u64,
    pub ack_code: Option<&'a str>,
    pub error_code: Option<u32>,
    pub location: Option<&'a str>,
    pub reason: &'a str,
    /// Length of the whole rejected input (`raw` may hold less).
    pub raw_len: u64,
    pub raw_base64: String,
    pub raw_text: Option<&'a str>,
}

impl<'a> DeadLetterJson<'a> {
    /// The object for `dl`, record `seq`; `None` when `received_us` is out of range.
    pub fn new(gateway_id: &'a str, seq: u64, dl: &'a DeadLetter) -> Option<Self> {
        let received_at = DateTime::from_timestamp_micros(dl.received_us)?
            .to_rfc3339_opts(SecondsFormat::Micros, true);
        let non_empty = |s: &'a str| (!s.is_empty()).then_some(s);
        Some(Self {
            gateway_id,
            device_id: non_empty(&dl.device_id),
            seq,
            received_at,
            transport: &dl.transport,
            peer: &dl.peer,
            stream_offset: dl.stream_offset,
            ack_code: non_empty(&dl.ack_code),
            error_code: (dl.error_code != 0).then_some(dl.error_code),
            location: non_empty(&dl.location),
            reason: &dl.reason,
            raw_len: dl.raw_len,
            raw_base64: base64::engine::general_purpose::STANDARD.encode(&dl.raw),
            raw_text: std::str::from_utf8(&dl.raw).ok(),
        })
    }
}

/// The JSON bytes for one dead letter, record `seq` of `device_id` (the outbox record's device,
/// used in the error only).
pub fn dead_letter_json(
    gateway_id: &str,
    device_id: &str,
    seq: u64,
    dl: &DeadLetter,
) -> Result<Vec<u8>, BridgeError> {
    let fail = |reason: String| BridgeError::FhirMapping {
        device_id: device_id.to_owned(),
        seq,
        reason,
    };
    let json = DeadLetterJson::new(gateway_id, seq, dl)
        .ok_or_else(|| fail(format!("received_us {} out of range", dl.received_us)))?;
    serde_json::to_vec(&json).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn full() -> DeadLetter {
        DeadLetter {
            received_us: 1_714_564_800_000_123,
            transport: "mllp".into(),
            peer: "10.0.0.7:51234".into(),
            device_id: "mon-1".into(),
            stream_offset: 4096,
            ack_code: "AE".into(),
            error_code: 102,
            location: "OBX^2^5".into(),
            reason: "bad numeric value".into(),
            raw: b"MSH|^~\\&|\rOBX|2|NM|x".to_vec(),
            raw_len: 70_000,
        }
    }

    #[test]
    fn maps_every_field_in_order() {
        let bytes = dead_letter_json("gw-1", "mon-1", 42, &full()).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let expected = json!({
            "gateway_id": "gw-1",
            "device_id": "mon-1",
            "seq": 42,
            "received_at": "2024-05-01T12:00:00.000123Z",
            "transport": "mllp",
            "peer": "10.0.0.7:51234",
            "stream_offset": 4096,
            "ack_code": "AE",
            "error_code": 102,
            "location": "OBX^2^5",
            "reason": "bad numeric value",
            "raw_len": 70000,
            "raw_base64": "TVNIfF5+XCZ8DU9CWHwyfE5NfHg=",
            "raw_text": "MSH|^~\\&|\rOBX|2|NM|x",
        });
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), expected);
        let keys = [
            "gateway_id",
            "device_id",
            "seq",
            "received_at",
            "transport",
            "peer",
            "stream_offset",
            "ack_code",
            "error_code",
            "location",
            "reason",
            "raw_len",
            "raw_base64",
            "raw_text",
        ];
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(
            dead_letter_json("gw-1", "mon-1", 42, &full()).unwrap(),
            bytes,
            "deterministic bytes"
        );
    }

    #[test]
    fn empty_fields_are_null_and_non_utf8_has_no_text() {
        let dl = DeadLetter {
            received_us: 0,
            transport: "serial:masimo".into(),
            peer: "/dev/ttyUSB0".into(),
            reason: "checksum".into(),
            raw: vec![0xff, 0x00, b'a'],
            raw_len: 3,
            ..DeadLetter::default()
        };
        let value: Value =
            serde_json::from_slice(&dead_letter_json("gw", "serial", 1, &dl).unwrap()).unwrap();
        assert_eq!(value["device_id"], Value::Null);
        assert_eq!(value["ack_code"], Value::Null);
        assert_eq!(value["error_code"], Value::Null);
        assert_eq!(value["location"], Value::Null);
        assert_eq!(value["raw_text"], Value::Null);
        assert_eq!(value["raw_base64"], "/wBh");
        assert_eq!(value["received_at"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(value["stream_offset"], 0);
        assert_eq!(value.as_object().unwrap().len(), 14);

        let empty = DeadLetter::default();
        let value: Value =
            serde_json::from_slice(&dead_letter_json("gw", "d", 1, &empty).unwrap()).unwrap();
        assert_eq!(value["raw_text"], "", "empty bytes are valid UTF-8");
        assert_eq!(value["raw_base64"], "");
    }

    #[test]
    fn out_of_range_time_is_an_error() {
        let dl = DeadLetter {
            received_us: i64::MAX,
            ..DeadLetter::default()
        };
        assert!(dead_letter_json("gw", "d", 7, &dl).is_err());
    }
}
