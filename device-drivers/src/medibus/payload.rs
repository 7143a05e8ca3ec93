//! Response payloads (protocols.md §1.6): parsing for the gateway, building for the simulator.
//!
//! Offsets in [`PayloadError`] count from the first data byte (the byte after the echoed command
//! code); add 2 and the frame offset for a stream position.

use super::frame::{hex_pair, ETX};

/// Width of a measured-data / alarm-limit value (2 code + 4 value chars per record).
pub const MEASURED_VALUE_WIDTH: usize = 4;
/// Width of a device-setting value (2 code + 5 value chars per record).
pub const SETTING_VALUE_WIDTH: usize = 5;
/// Width of an alarm phrase (1 priority + 2 code + 12 phrase chars per record).
pub const ALARM_PHRASE_WIDTH: usize = 12;
/// Width of the revision field of the device identification.
pub const REVISION_WIDTH: usize = 11;

/// One data code with its value (measured data, alarm limits or settings).
#[derive(Debug, Clone, PartialEq)]
pub struct MedibusValue {
    /// Data code, e.g. 0x7D for Ppeak.
    pub code: u8,
    /// The number; `None` when the field is blank, dashes or not a number.
    pub value: Option<f64>,
    /// The field as sent, e.g. `" 22 "`.
    pub raw: String,
}

impl MedibusValue {
    /// A value whose wire text is produced by the encoder (right-justified number).
    pub fn number(code: u8, value: f64) -> Self {
        Self {
            code,
            value: Some(value),
            raw: String::new(),
        }
    }

    /// A value with its exact wire text, e.g. `(0x7D, " 22 ")`.
    pub fn raw(code: u8, raw: &str) -> Self {
        Self {
            code,
            value: parse_number(raw),
            raw: raw.to_owned(),
        }
    }

    /// Blank or dashes: the device has no value.
    pub fn is_not_available(&self) -> bool {
        self.value.is_none() && self.raw.trim().bytes().all(|b| b == b'-')
    }
}

/// One current alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MedibusAlarm {
    /// 1–31, 31 highest (sent as `'0' + priority`).
    pub priority: u8,
    /// Alarm code of the codepage (§1.11).
    pub code: u8,
    /// The device's phrase, trailing spaces removed.
    pub phrase: String,
}

/// One text message (mode, patient type, units; §1.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MedibusText {
    pub code: u8,
    pub text: String,
}

/// The device identification response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// Device id number, e.g. `0161`.
    pub device_id: String,
    /// Device name (between apostrophes), e.g. `ICE`.
    pub name: String,
    /// Revision, trailing spaces removed, e.g. `04.03`.
    pub revision: String,
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error(
        "record at data byte {offset}: {len} bytes left, but a {what} record is {need} bytes long"
    )]
    Truncated {
        offset: usize,
        len: usize,
        need: usize,
        what: &'static str,
    },
    #[error("record at data byte {offset}: code '{found}' is not two hex digits")]
    BadCode { offset: usize, found: String },
    #[error("record at data byte {offset}: alarm priority character 0x{byte:02X} is not '1'..'O' (priority 1-31)")]
    BadPriority { offset: usize, byte: u8 },
    #[error("record at data byte {offset}: text length character 0x{byte:02X} is below '0'")]
    BadLength { offset: usize, byte: u8 },
    #[error("record at data byte {offset}: the {len}-character text is not followed by ETX")]
    MissingEtx { offset: usize, len: usize },
    #[error("data byte {offset}: the device identification has no name in apostrophes ('...')")]
    BadIdentity { offset: usize },
    #[error("record at data byte {offset}: {what} '{found}' is not readable")]
    BadField {
        offset: usize,
        what: &'static str,
        found: String,
    },
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Two ASCII-hex characters; a space counts as `0` (as OpenICE does).
pub(super) fn parse_code(pair: &[u8], offset: usize) -> Result<u8, PayloadError> {
    let digit = |c: u8| {
        if c == b' ' {
            Some(0)
        } else {
            (c as char).to_digit(16)
        }
    };
    match pair {
        [hi, lo] => match (digit(*hi), digit(*lo)) {
            (Some(h), Some(l)) => Ok((h * 16 + l) as u8),
            _ => Err(PayloadError::BadCode {
                offset,
                found: lossy(pair),
            }),
        },
        _ => Err(PayloadError::BadCode {
            offset,
            found: lossy(pair),
        }),
    }
}

/// A right-justified decimal (`" 22 "`, `" 8.5"`, `"-2"`); `None` when blank, dashes or text.
pub fn parse_number(raw: &str) -> Option<f64> {
    let t = raw.trim();
    let body = t.strip_prefix(['-', '+']).unwrap_or(t);
    let digits = body.bytes().filter(u8::is_ascii_digit).count();
    let dots = body.bytes().filter(|&b| b == b'.').count();
    if digits == 0 || dots > 1 || digits + dots != body.len() {
        return None;
    }
    let x: f64 = body.parse().ok()?;
    Some(if t.starts_with('-') { -x } else { x })
}

/// Splits `data` into records of `record` bytes and parses each with `parse(offset, record)`;
/// a short last record is [`PayloadError::Truncated`].
pub(super) fn fixed_records<T>(
    data: &[u8],
    record: usize,
    what: &'static str,
    mut parse: impl FnMut(usize, &[u8]) -> Result<T, PayloadError>,
) -> Result<Vec<T>, PayloadError> {
    data.chunks(record)
        .enumerate()
        .map(|(i, chunk)| {
            let offset = i * record;
            if chunk.len() < record {
                return Err(PayloadError::Truncated {
                    offset,
                    len: chunk.len(),
                    need: record,
                    what,
                });
            }
            parse(offset, chunk)
        })
        .collect()
}

fn parse_records(
    data: &[u8],
    width: usize,
    what: &'static str,
) -> Result<Vec<MedibusValue>, PayloadError> {
    fixed_records(data, 2 + width, what, |offset, chunk| {
        let code = parse_code(&chunk[..2], offset)?;
        let raw = lossy(&chunk[2..]);
        Ok(MedibusValue {
            code,
            value: parse_number(&raw),
            raw,
        })
    })
}

/// Measured data, low or high alarm limits (CP1/CP2): records of 2 code + 4 value characters.
pub fn parse_measured(data: &[u8]) -> Result<Vec<MedibusValue>, PayloadError> {
    parse_records(data, MEASURED_VALUE_WIDTH, "measured-data")
}

/// Device settings: records of 2 code + 5 value characters.
pub fn parse_settings(data: &[u8]) -> Result<Vec<MedibusValue>, PayloadError> {
    parse_records(data, SETTING_VALUE_WIDTH, "device-setting")
}

/// Alarms: records of 1 priority + 2 code + 12 phrase characters.
pub fn parse_alarms(data: &[u8]) -> Result<Vec<MedibusAlarm>, PayloadError> {
    fixed_records(data, 3 + ALARM_PHRASE_WIDTH, "alarm", |offset, chunk| {
        let priority = chunk[0].wrapping_sub(b'0');
        if !(1..=31).contains(&priority) {
            return Err(PayloadError::BadPriority {
                offset,
                byte: chunk[0],
            });
        }
        Ok(MedibusAlarm {
            priority,
            code: parse_code(&chunk[1..3], offset + 1)?,
            phrase: lossy(&chunk[3..]).trim_end().to_owned(),
        })
    })
}

/// Text messages: each 2 code + 1 length character (`'0' + n`) + n characters + ETX.
pub fn parse_text_messages(data: &[u8]) -> Result<Vec<MedibusText>, PayloadError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < data.len() {
        let rest = &data[offset..];
        if rest.len() < 4 {
            return Err(PayloadError::Truncated {
                offset,
                len: rest.len(),
                need: 4,
                what: "text-message",
            });
        }
        let code = parse_code(&rest[..2], offset)?;
        let len = usize::from(rest[2].checked_sub(b'0').ok_or(PayloadError::BadLength {
            offset: offset + 2,
            byte: rest[2],
        })?);
        let need = 3 + len + 1;
        if rest.len() < need {
            return Err(PayloadError::Truncated {
                offset,
                len: rest.len(),
                need,
                what: "text-message",
            });
        }
        if rest[3 + len] != ETX {
            return Err(PayloadError::MissingEtx { offset, len });
        }
        out.push(MedibusText {
            code,
            text: lossy(&rest[3..3 + len]),
        });
        offset += need;
    }
    Ok(out)
}

/// Device identification: id, `'name'`, revision.
pub fn parse_identity(data: &[u8]) -> Result<DeviceIdentity, PayloadError> {
    let open = data
        .iter()
        .position(|&b| b == b'\'')
        .ok_or(PayloadError::BadIdentity { offset: 0 })?;
    let close = data[open + 1..]
        .iter()
        .position(|&b| b == b'\'')
        .map(|i| open + 1 + i)
        .ok_or(PayloadError::BadIdentity { offset: open })?;
    Ok(DeviceIdentity {
        device_id: lossy(&data[..open]).trim().to_owned(),
        name: lossy(&data[open + 1..close]),
        revision: lossy(&data[close + 1..]).trim().to_owned(),
    })
}

/// `value` as at most `width` characters, right-justified, with as many decimals (≤ 3) as fit.
pub fn format_value(value: f64, width: usize) -> String {
    if !value.is_finite() {
        return "-".repeat(width);
    }
    for decimals in (0..=3).rev() {
        let text = format!("{value:.decimals$}");
        let text = if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            text
        };
        if text.len() <= width {
            return format!("{text:>width$}");
        }
    }
    "-".repeat(width)
}

fn value_field(v: &MedibusValue, width: usize) -> String {
    if v.raw.len() == width && v.raw.is_ascii() {
        return v.raw.clone();
    }
    let trimmed = v.raw.trim();
    if !trimmed.is_empty() && trimmed.len() <= width && trimmed.is_ascii() {
        return format!("{trimmed:>width$}");
    }
    match v.value {
        Some(x) => format_value(x, width),
        None => "-".repeat(width),
    }
}

fn encode_records(values: &[MedibusValue], width: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * (2 + width));
    for v in values {
        out.extend_from_slice(&hex_pair(v.code));
        out.extend_from_slice(value_field(v, width).as_bytes());
    }
    out
}

/// Measured data / limits payload. Each value uses its `raw` text when it has the right width,
/// else its number right-justified in 4 characters.
pub fn encode_measured(values: &[MedibusValue]) -> Vec<u8> {
    encode_records(values, MEASURED_VALUE_WIDTH)
}

/// Device settings payload (5-character values).
pub fn encode_settings(values: &[MedibusValue]) -> Vec<u8> {
    encode_records(values, SETTING_VALUE_WIDTH)
}

/// At most `max` characters of `text`, non-printable ones replaced by `?`.
fn printable(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(max)
        .collect()
}

/// `text` padded with spaces or cut to exactly `width` printable characters.
fn fixed_ascii(text: &str, width: usize) -> String {
    format!("{:<width$}", printable(text, width))
}

/// Alarms payload; priorities are clamped to 1–31, phrases padded or cut to 12 characters.
pub fn encode_alarms(alarms: &[MedibusAlarm]) -> Vec<u8> {
    let mut out = Vec::with_capacity(alarms.len() * 15);
    for a in alarms {
        out.push(b'0' + a.priority.clamp(1, 31));
        out.extend_from_slice(&hex_pair(a.code));
        out.extend_from_slice(fixed_ascii(&a.phrase, ALARM_PHRASE_WIDTH).as_bytes());
    }
    out
}

/// Text-messages payload; texts are cut to 79 printable characters.
pub fn encode_text_messages(texts: &[MedibusText]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in texts {
        let text = printable(&t.text, 79);
        out.extend_from_slice(&hex_pair(t.code));
        out.push(b'0' + text.len() as u8);
        out.extend_from_slice(text.as_bytes());
        out.push(ETX);
    }
    out
}

/// Device identification payload: id (4 chars), `'name'`, revision padded to 11 characters.
pub fn encode_identity(id: &DeviceIdentity) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(fixed_ascii(&id.device_id, 4).as_bytes());
    out.push(b'\'');
    out.extend_from_slice(printable(&id.name.replace('\'', " "), 32).as_bytes());
    out.push(b'\'');
    out.extend_from_slice(fixed_ascii(&id.revision, REVISION_WIDTH).as_bytes());
    out
}
