//! MQTT observation payloads (JSON and protobuf) to canonical observations. Pure: no I/O, no
//! clock (the caller passes the receive time).

use chrono::DateTime;
use icu_protos::v1::{Observation, ObservationStatus, WaveformSegment};
use prost::Message;
use serde::Deserialize;

use super::topic::PayloadFormat;
use super::waveform::check_segment;
use crate::hl7::WaveformConfig;
use crate::terminology::Terminology;

/// Default bound on one payload: 256 KiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// Longest `msg_id` accepted, in bytes.
pub const MAX_MSG_ID_BYTES: usize = 256;

/// The protobuf payload of `.../obs/pb`, and what [`decode_payload`] returns for both formats.
///
/// Wire contract (field numbers are stable: add, never reuse):
///
/// | field | number | type |
/// |---|---|---|
/// | `observations` | 1 | repeated `icu.v1.Observation` |
/// | `msg_id` | 2 | string |
/// | `waveforms` | 3 | repeated `icu.v1.WaveformSegment` (protobuf only; see `waveform.rs`) |
#[derive(Clone, PartialEq, Message)]
pub struct MqttBatch {
    /// The observations, in the order the device sent them.
    #[prost(message, repeated, tag = "1")]
    pub observations: Vec<Observation>,
    /// The device's message id (dedup of redelivered messages); empty when none was sent.
    #[prost(string, tag = "2")]
    pub msg_id: String,
    /// Curves (issue 19), e.g. a wearable's ECG: checked like PCD-01 waveforms (rate, count,
    /// bounded length) and stored with the observations in one commit.
    #[prost(message, repeated, tag = "3")]
    pub waveforms: Vec<WaveformSegment>,
}

/// Why a payload was refused. Every message names where (JSON line/column and byte offset, or
/// the path `observations[i].field`) and what to fix on the device.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MqttPayloadError {
    #[error(
        "payload of {size} bytes exceeds the {limit}-byte limit (mqtt.max_payload_bytes); send smaller batches"
    )]
    TooLarge { size: usize, limit: usize },
    #[error("JSON payload rejected at line {line}, column {column} (byte {offset}): {reason}")]
    Json {
        line: usize,
        column: usize,
        offset: usize,
        reason: String,
    },
    #[error(
        "protobuf payload is not an MqttBatch (observations = 1, msg_id = 2, waveforms = 3): {reason}"
    )]
    Protobuf { reason: String },
    #[error("{path}: MDC code {code} is not in the gateway terminology table")]
    UnknownMdc { path: String, code: u32 },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl MqttPayloadError {
    fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// The JSON payload (`.../obs/json`). Unknown fields are refused, so a misspelt `vlaue` is an
/// error instead of a silently missing value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonBatch {
    #[serde(default)]
    device_time: Option<String>,
    #[serde(default)]
    msg_id: Option<String>,
    observations: Vec<JsonObservation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonObservation {
    mdc_code: u32,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    containment_id: Option<String>,
    #[serde(default)]
    time: Option<String>,
}

/// The status words of the JSON payload, and the status each gives.
pub const JSON_STATUSES: &[(&str, ObservationStatus)] = &[
    ("valid", ObservationStatus::Valid),
    ("not-available", ObservationStatus::NotAvailable),
    ("invalid", ObservationStatus::Invalid),
    ("corrected", ObservationStatus::Corrected),
    ("test", ObservationStatus::Test),
];

/// Decodes one payload of `format` into normalised observations (see the module docs for the
/// rules). All or nothing: one bad observation refuses the whole payload.
///
/// `device_id`, `bed` and `seq` of the returned observations are empty (the gateway sets them
/// from the topic and its config, never from the payload), `clock_synced` is false and
/// `receive_time_us` is `receive_time_us`.
pub fn decode_payload(
    format: PayloadFormat,
    bytes: &[u8],
    max_payload_bytes: usize,
    receive_time_us: i64,
    terminology: &Terminology,
) -> Result<MqttBatch, MqttPayloadError> {
    if bytes.len() > max_payload_bytes {
        return Err(MqttPayloadError::TooLarge {
            size: bytes.len(),
            limit: max_payload_bytes,
        });
    }
    let mut batch = match format {
        PayloadFormat::Json => decode_json(bytes, terminology)?,
        PayloadFormat::Protobuf => decode_protobuf(bytes, receive_time_us, terminology)?,
    };
    if batch.msg_id.len() > MAX_MSG_ID_BYTES {
        return Err(MqttPayloadError::invalid(
            "msg_id",
            format!(
                "{} bytes long, at most {MAX_MSG_ID_BYTES} are accepted",
                batch.msg_id.len()
            ),
        ));
    }
    for (i, o) in batch.observations.iter_mut().enumerate() {
        o.receive_time_us = receive_time_us;
        o.source_message_id = batch.msg_id.clone();
        o.source_row = u32::try_from(i + 1).unwrap_or(u32::MAX);
    }
    for (i, w) in batch.waveforms.iter_mut().enumerate() {
        w.source_message_id = batch.msg_id.clone();
        w.source_row = u32::try_from(i + 1).unwrap_or(u32::MAX);
    }
    Ok(batch)
}

/// Encodes a batch for `format` (the publisher side; the inverse of [`decode_payload`] for
/// the fields the JSON form carries).
pub fn encode_payload(format: PayloadFormat, batch: &MqttBatch) -> Vec<u8> {
    match format {
        PayloadFormat::Protobuf => batch.encode_to_vec(),
        PayloadFormat::Json => {
            let observations: Vec<serde_json::Value> = batch
                .observations
                .iter()
                .map(|o| {
                    let mut m = serde_json::Map::new();
                    m.insert("mdc_code".into(), o.mdc_code.into());
                    if let Some(v) = o.value.filter(|v| v.is_finite()) {
                        m.insert("value".into(), v.into());
                    }
                    if !o.unit_ucum.is_empty() {
                        m.insert("unit".into(), o.unit_ucum.clone().into());
                    }
                    let status = ObservationStatus::try_from(o.status).ok();
                    if let Some((word, _)) = JSON_STATUSES.iter().find(|(_, s)| Some(*s) == status)
                    {
                        m.insert("status".into(), (*word).into());
                    }
                    if !o.containment_id.is_empty() {
                        m.insert("containment_id".into(), o.containment_id.clone().into());
                    }
                    if let Some(t) = o.device_time_us.and_then(DateTime::from_timestamp_micros) {
                        m.insert("time".into(), t.to_rfc3339().into());
                    }
                    serde_json::Value::Object(m)
                })
                .collect();
            let mut doc = serde_json::Map::new();
            if !batch.msg_id.is_empty() {
                doc.insert("msg_id".into(), batch.msg_id.clone().into());
            }
            doc.insert("observations".into(), observations.into());
            serde_json::to_vec(&serde_json::Value::Object(doc))
                .expect("a JSON value always serialises")
        }
    }
}

fn decode_json(bytes: &[u8], terminology: &Terminology) -> Result<MqttBatch, MqttPayloadError> {
    let doc: JsonBatch = serde_json::from_slice(bytes).map_err(|e| json_error(bytes, &e))?;
    let batch_time = doc
        .device_time
        .as_deref()
        .map(|t| parse_time("device_time", t))
        .transpose()?;
    let mut observations = Vec::with_capacity(doc.observations.len());
    for (i, o) in doc.observations.into_iter().enumerate() {
        let path = |field: &str| format!("observations[{i}].{field}");
        let status = match o.status.as_deref() {
            None => ObservationStatus::Unspecified,
            Some(word) => JSON_STATUSES
                .iter()
                .find(|(w, _)| *w == word)
                .map(|(_, s)| *s)
                .ok_or_else(|| {
                    let words: Vec<&str> = JSON_STATUSES.iter().map(|(w, _)| *w).collect();
                    MqttPayloadError::invalid(
                        path("status"),
                        format!("'{word}' is not one of {}", words.join(", ")),
                    )
                })?,
        };
        let time = match o.time.as_deref() {
            Some(t) => Some(parse_time(&path("time"), t)?),
            None => batch_time,
        };
        let obs = Observation {
            mdc_code: o.mdc_code,
            value: o.value,
            unit_ucum: o.unit.unwrap_or_default(),
            containment_id: o.containment_id.unwrap_or_default(),
            device_time_us: time,
            status: status as i32,
            ..Default::default()
        };
        observations.push(normalise(i, obs, terminology)?);
    }
    Ok(MqttBatch {
        observations,
        msg_id: doc.msg_id.unwrap_or_default(),
        waveforms: Vec::new(),
    })
}

fn decode_protobuf(
    bytes: &[u8],
    receive_time_us: i64,
    terminology: &Terminology,
) -> Result<MqttBatch, MqttPayloadError> {
    let raw = MqttBatch::decode(bytes).map_err(|e| MqttPayloadError::Protobuf {
        reason: e.to_string(),
    })?;
    let mut observations = Vec::with_capacity(raw.observations.len());
    for (i, o) in raw.observations.into_iter().enumerate() {
        observations.push(normalise(i, o, terminology)?);
    }
    let bounds = WaveformConfig::default();
    let mut waveforms = Vec::with_capacity(raw.waveforms.len());
    for (i, w) in raw.waveforms.into_iter().enumerate() {
        let checked = check_segment(w, receive_time_us, terminology, &bounds).map_err(
            |(field, reason)| MqttPayloadError::invalid(format!("waveforms[{i}].{field}"), reason),
        )?;
        waveforms.push(checked);
    }
    Ok(MqttBatch {
        observations,
        msg_id: raw.msg_id,
        waveforms,
    })
}

/// The rules shared by both formats (module docs, "Normalisation").
fn normalise(
    i: usize,
    mut o: Observation,
    terminology: &Terminology,
) -> Result<Observation, MqttPayloadError> {
    let path = |field: &str| format!("observations[{i}].{field}");
    let term = terminology
        .by_mdc(o.mdc_code)
        .filter(|_| o.mdc_code != 0)
        .ok_or_else(|| MqttPayloadError::UnknownMdc {
            path: path("mdc_code"),
            code: o.mdc_code,
        })?;
    for (field, v) in [
        ("value", o.value),
        ("limit_low", o.limit_low),
        ("limit_high", o.limit_high),
    ] {
        if v.is_some_and(|v| !v.is_finite()) {
            return Err(MqttPayloadError::invalid(
                path(field),
                "must be a finite number (NaN and infinity are refused); omit it when the device has no value",
            ));
        }
    }
    let status = ObservationStatus::try_from(o.status).map_err(|_| {
        MqttPayloadError::invalid(
            path("status"),
            format!("{} is not an icu.v1.ObservationStatus (0 to 5)", o.status),
        )
    })?;
    let no_value = o.value.is_none() && o.value_text.is_empty();
    let status = match status {
        // A missing value is "not available", never zero and never "valid".
        ObservationStatus::Unspecified
        | ObservationStatus::Valid
        | ObservationStatus::Corrected
            if no_value =>
        {
            ObservationStatus::NotAvailable
        }
        ObservationStatus::Unspecified => ObservationStatus::Valid,
        s => s,
    };
    o.status = status as i32;

    if o.unit_ucum.is_empty() {
        if o.unit_mdc_code != 0 {
            o.unit_ucum = terminology
                .ucum_for_unit(o.unit_mdc_code)
                .ok_or_else(|| {
                    MqttPayloadError::invalid(
                        path("unit_mdc_code"),
                        format!(
                            "MDC unit code {} is not in the gateway unit table",
                            o.unit_mdc_code
                        ),
                    )
                })?
                .to_owned();
        } else {
            o.unit_ucum = term.ucum.clone();
            o.unit_mdc_code = term.unit_mdc_code;
        }
    } else if o.unit_mdc_code == 0 && o.unit_ucum == term.ucum {
        o.unit_mdc_code = term.unit_mdc_code;
    }
    if o.mdc_refid.is_empty() {
        o.mdc_refid = term.refid.clone();
    }
    if o.loinc.is_empty() {
        o.loinc = term.loinc.clone().unwrap_or_default();
    }
    // Identity comes from the topic and the gateway config, never from the payload.
    o.device_id.clear();
    o.bed.clear();
    o.seq = 0;
    o.clock_synced = false;
    Ok(o)
}

fn parse_time(path: &str, text: &str) -> Result<i64, MqttPayloadError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|e| {
            MqttPayloadError::invalid(
                path,
                format!("'{text}' is not an RFC 3339 time such as 2024-05-01T12:00:00.250Z ({e})"),
            )
        })
}

fn json_error(bytes: &[u8], e: &serde_json::Error) -> MqttPayloadError {
    let (line, column) = (e.line(), e.column());
    // serde_json counts columns in bytes from 1; line 0 means "no position" (e.g. EOF).
    let line_start: usize = bytes
        .split(|b| *b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    let offset = (line_start + column.saturating_sub(1)).min(bytes.len());
    let reason = e.to_string();
    // Drop serde_json's own " at line L column C" suffix: the position is in our message.
    let reason = match reason.rfind(" at line ") {
        Some(at) => reason[..at].to_owned(),
        None => reason,
    };
    MqttPayloadError::Json {
        line,
        column,
        offset,
        reason,
    }
}
