//! One ASCII 1 line: parsing, ALARM/EXC decoding and mapping to observations.

use chrono::NaiveDate;
use icu_protos::v1::{Observation, ObservationStatus};

use crate::terminology::Terminology;

/// Driver name of the native-code table (`terminology/native-masimo.tsv`).
pub const DRIVER: &str = "masimo";

/// Length of the leading `MM/DD/YY HH:MM:SS` timestamp.
const TIMESTAMP_LEN: usize = 17;

/// Why a line was refused. `at` is the byte offset inside the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasimoError {
    #[error(
        "byte {at}: 0x{byte:02X} is not printable ASCII; check the port settings (9600 8N1) and that the device outputs ASCII 1"
    )]
    NotAscii { at: usize, byte: u8 },
    #[error(
        "byte {at}: expected the timestamp MM/DD/YY HH:MM:SS, found '{found}'; set the device's serial output to ASCII 1"
    )]
    BadTimestamp { at: usize, found: String },
    #[error("byte {at}: expected KEY=value, found '{found}'")]
    BadField { at: usize, found: String },
    #[error("byte {at}: field {key} appears twice in one line")]
    DuplicateKey { at: usize, key: String },
    #[error("byte {at}: {key}={found} is not a hexadecimal bit field of at most 8 digits")]
    BadHex {
        at: usize,
        key: &'static str,
        found: String,
    },
    #[error("the line has no {key} field; set the device's serial output to ASCII 1")]
    MissingField { key: &'static str },
    #[error("the stream ended inside a line (no CR LF)")]
    Unterminated,
}

/// Whether a value could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueStatus {
    /// A number.
    Valid,
    /// Filled with dashes: the device has no value (no sensor, searching, ...).
    NotAvailable,
    /// Neither a number nor dashes; kept as text.
    Unparseable,
}

/// One `KEY=value` field (other than SN, ALARM, EXC, EXC1).
#[derive(Debug, Clone, PartialEq)]
pub struct MasimoValue {
    pub key: String,
    /// The number with `%` and sign handled; `None` unless `status` is `Valid`.
    pub value: Option<f64>,
    /// The value as written, e.g. `097%`.
    pub raw: String,
    pub status: ValueStatus,
}

/// One ASCII 1 line.
#[derive(Debug, Clone, PartialEq)]
pub struct MasimoRecord {
    /// The line's timestamp, read in the configured UTC offset, as microseconds since the epoch.
    pub device_time_us: i64,
    /// `SN`; `None` when absent or dashes.
    pub serial: Option<String>,
    /// The other fields in line order.
    pub values: Vec<MasimoValue>,
    /// ALARM bit field (§2.4).
    pub alarm: u32,
    /// EXC bit field (§2.5).
    pub exc: u32,
    /// EXC1 bit field (Radical-7 "color" only; meaning unconfirmed, kept raw).
    pub exc1: Option<u32>,
}

/// Alarm priority (IEC 60601-1-8 high / medium / low).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlarmPriority {
    Low,
    Medium,
    High,
}

impl AlarmPriority {
    /// PCD-04 / `Alarm.priority` code: `PH`, `PM` or `PL`.
    pub fn code(self) -> &'static str {
        match self {
            AlarmPriority::High => "PH",
            AlarmPriority::Medium => "PM",
            AlarmPriority::Low => "PL",
        }
    }
}

/// A physiological alarm or technical condition decoded from a device's bit field or code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceAlarm {
    /// Stable identifier, e.g. `SPO2_LOW` or `NO_SENSOR`.
    pub code: &'static str,
    pub text: &'static str,
    pub priority: AlarmPriority,
}

use AlarmPriority::{High, Low, Medium};

/// ALARM bits that are conditions (0x0010 active, 0x0020 silenced and 0x0080 reserved are not).
const ALARM_BITS: [(u32, &str, &str, AlarmPriority); 11] = [
    (0x0001, "SPO2_HIGH", "SpO2 high limit violated", Medium),
    (0x0002, "SPO2_LOW", "SpO2 low limit violated", High),
    (0x0004, "PR_HIGH", "pulse rate high limit violated", Medium),
    (0x0008, "PR_LOW", "pulse rate low limit violated", Medium),
    (0x0040, "LOW_BATTERY", "low battery", Low),
    (0x0100, "SPCO_HIGH", "SpCO high limit violated", Medium),
    (0x0200, "SPCO_LOW", "SpCO low limit violated", Low),
    (0x0400, "SPMET_HIGH", "SpMet high limit violated", Medium),
    (0x0800, "SPMET_LOW", "SpMet low limit violated", Low),
    (0x1000, "DESAT", "desaturation index alarm", Medium),
    (
        0x2000,
        "PI_DELTA",
        "perfusion index rate-of-change alarm",
        Low,
    ),
];

/// EXC bits that are technical conditions (0x000800 "Masimo SET" is normal; 0x000200 and
/// 0x800000 are reserved).
const EXC_BITS: [(u32, &str, &str, AlarmPriority); 21] = [
    (0x000001, "NO_SENSOR", "no sensor", Medium),
    (0x000002, "DEFECTIVE_SENSOR", "defective sensor", Medium),
    (0x000004, "LOW_PERFUSION", "low perfusion", Low),
    (0x000008, "PULSE_SEARCH", "pulse search", Low),
    (0x000010, "INTERFERENCE", "interference detected", Low),
    (0x000020, "SENSOR_OFF", "sensor off patient", Medium),
    (0x000040, "AMBIENT_LIGHT", "too much ambient light", Low),
    (
        0x000080,
        "UNRECOGNIZED_SENSOR",
        "unrecognized sensor",
        Medium,
    ),
    (
        0x000100,
        "INCOMPATIBLE_SENSOR",
        "incompatible sensor",
        Medium,
    ),
    (0x000400, "LOW_SIGNAL_IQ", "low signal IQ", Low),
    (0x001000, "NO_CABLE", "no cable connected", Medium),
    (0x002000, "CABLE_EXPIRED", "cable life expired", Low),
    (0x004000, "INCOMPATIBLE_CABLE", "incompatible cable", Medium),
    (0x008000, "UNRECOGNIZED_CABLE", "unrecognized cable", Medium),
    (0x010000, "DEFECTIVE_CABLE", "defective cable", Medium),
    (0x020000, "SENSOR_CALIBRATING", "sensor calibrating", Low),
    (0x040000, "SENSOR_EXPIRED", "sensor life expired", Low),
    (
        0x080000,
        "EMITTER_TEMPERATURE",
        "emitter temperature out of range",
        Low,
    ),
    (
        0x100000,
        "SENSOR_CURRENT_LIMIT",
        "sensor current limit exceeded",
        Low,
    ),
    (0x200000, "SPCO_LOW_CONFIDENCE", "SpCO low confidence", Low),
    (
        0x400000,
        "SPMET_LOW_CONFIDENCE",
        "SpMet low confidence",
        Low,
    ),
];

fn decode_bits(
    bits: u32,
    table: &[(u32, &'static str, &'static str, AlarmPriority)],
) -> Vec<DeviceAlarm> {
    table
        .iter()
        .filter(|(mask, ..)| bits & mask != 0)
        .map(|&(_, code, text, priority)| DeviceAlarm {
            code,
            text,
            priority,
        })
        .collect()
}

impl MasimoRecord {
    /// Physiological alarms and device alarms set in ALARM.
    pub fn alarms(&self) -> Vec<DeviceAlarm> {
        decode_bits(self.alarm, &ALARM_BITS)
    }

    /// Technical conditions set in EXC (sensor, cable, signal quality).
    pub fn technical_conditions(&self) -> Vec<DeviceAlarm> {
        decode_bits(self.exc, &EXC_BITS)
    }

    /// ALARM bit 0x0010: an alarm is sounding or shown.
    pub fn alarm_active(&self) -> bool {
        self.alarm & 0x0010 != 0
    }

    /// ALARM bit 0x0020: alarms are silenced (mute pressed).
    pub fn alarm_silenced(&self) -> bool {
        self.alarm & 0x0020 != 0
    }

    /// The field with this key.
    pub fn value(&self, key: &str) -> Option<&MasimoValue> {
        self.values.iter().find(|v| v.key == key)
    }
}

/// Parses one line (without CR LF). The timestamp is read in `utc_offset_minutes` (east of UTC
/// positive).
pub fn parse_line(line: &[u8], utc_offset_minutes: i32) -> Result<MasimoRecord, MasimoError> {
    if let Some(at) = line
        .iter()
        .position(|&b| !(b == b'\t' || b == b'\r' || (0x20..0x7F).contains(&b)))
    {
        return Err(MasimoError::NotAscii { at, byte: line[at] });
    }
    // Only ASCII bytes are left, so this cannot fail; stay panic-free anyway.
    let text = std::str::from_utf8(line).map_err(|e| MasimoError::NotAscii {
        at: e.valid_up_to(),
        byte: line[e.valid_up_to()],
    })?;
    let text = text.trim_end();
    let start = text.len() - text.trim_start().len();
    let device_time_us = parse_timestamp(&text[start..], start, utc_offset_minutes)?;

    let mut record = MasimoRecord {
        device_time_us,
        serial: None,
        values: Vec::new(),
        alarm: 0,
        exc: 0,
        exc1: None,
    };
    let (mut seen_alarm, mut seen_exc, mut seen_sn) = (false, false, false);
    for (at, token) in tokens(text, start + TIMESTAMP_LEN) {
        let Some((key, raw)) = token.split_once('=').filter(|(k, _)| {
            !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }) else {
            return Err(MasimoError::BadField {
                at,
                found: token.to_owned(),
            });
        };
        let duplicate = match key {
            "SN" => std::mem::replace(&mut seen_sn, true),
            "ALARM" => std::mem::replace(&mut seen_alarm, true),
            "EXC" => std::mem::replace(&mut seen_exc, true),
            "EXC1" => record.exc1.is_some(),
            _ => record.values.iter().any(|v| v.key == key),
        };
        if duplicate {
            return Err(MasimoError::DuplicateKey {
                at,
                key: key.to_owned(),
            });
        }
        let value_at = at + key.len() + 1;
        match key {
            "SN" => {
                record.serial = Some(raw.to_owned()).filter(|s| !s.is_empty() && !s.contains('-'))
            }
            "ALARM" => record.alarm = parse_hex(raw, "ALARM", value_at)?,
            "EXC" => record.exc = parse_hex(raw, "EXC", value_at)?,
            "EXC1" => record.exc1 = Some(parse_hex(raw, "EXC1", value_at)?),
            _ => {
                let (value, status) = parse_value(raw);
                record.values.push(MasimoValue {
                    key: key.to_owned(),
                    value,
                    raw: raw.to_owned(),
                    status,
                });
            }
        }
    }
    if !seen_alarm {
        return Err(MasimoError::MissingField { key: "ALARM" });
    }
    if !seen_exc {
        return Err(MasimoError::MissingField { key: "EXC" });
    }
    Ok(record)
}

/// Whitespace-separated tokens of `text` from byte `from`, with their byte offsets.
fn tokens(text: &str, from: usize) -> impl Iterator<Item = (usize, &str)> {
    let rest = text.get(from..).unwrap_or("");
    let mut pos = from;
    rest.split([' ', '\t', '\r']).filter_map(move |t| {
        let at = pos;
        pos += t.len() + 1;
        (!t.is_empty()).then_some((at, t))
    })
}

fn parse_timestamp(text: &str, at: usize, utc_offset_minutes: i32) -> Result<i64, MasimoError> {
    let bad = || MasimoError::BadTimestamp {
        at,
        found: text.chars().take(TIMESTAMP_LEN).collect(),
    };
    let b = text.as_bytes();
    if b.len() < TIMESTAMP_LEN {
        return Err(bad());
    }
    let shape = b"00/00/00 00:00:00 ";
    for (i, (&c, &s)) in b.iter().zip(shape).enumerate() {
        let ok = match s {
            b'0' => c.is_ascii_digit(),
            b' ' => c.is_ascii_whitespace(),
            _ => c == s,
        };
        if !ok {
            return Err(MasimoError::BadTimestamp {
                at,
                found: format!("{} (byte {})", text[..TIMESTAMP_LEN].trim_end(), at + i),
            });
        }
    }
    let n = |i: usize| u32::from(b[i] - b'0') * 10 + u32::from(b[i + 1] - b'0');
    let date = NaiveDate::from_ymd_opt(2000 + n(6) as i32, n(0), n(3)).ok_or_else(bad)?;
    let time = date.and_hms_opt(n(9), n(12), n(15)).ok_or_else(bad)?;
    Ok(time.and_utc().timestamp_micros() - i64::from(utc_offset_minutes) * 60_000_000)
}

fn parse_hex(raw: &str, key: &'static str, at: usize) -> Result<u32, MasimoError> {
    if raw.is_empty() || raw.len() > 8 || !raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(MasimoError::BadHex {
            at,
            key,
            found: raw.to_owned(),
        });
    }
    u32::from_str_radix(raw, 16).map_err(|_| MasimoError::BadHex {
        at,
        key,
        found: raw.to_owned(),
    })
}

/// `097%` → 97, `+05` → 5, `-03` → -3, `---%` / `+--` / `--.-` → not available.
fn parse_value(raw: &str) -> (Option<f64>, ValueStatus) {
    let v = raw.strip_suffix('%').unwrap_or(raw);
    let (negative, body) = match v.as_bytes().first() {
        Some(b'-') => (true, &v[1..]),
        Some(b'+') => (false, &v[1..]),
        _ => (false, v),
    };
    if body.contains('-') || (body.is_empty() && v.len() == 1) {
        return (None, ValueStatus::NotAvailable);
    }
    let digits = body.bytes().filter(u8::is_ascii_digit).count();
    let dots = body.bytes().filter(|&b| b == b'.').count();
    if digits == 0 || dots > 1 || digits + dots != body.len() {
        return (None, ValueStatus::Unparseable);
    }
    match body.parse::<f64>() {
        Ok(x) if x.is_finite() => (Some(if negative { -x } else { x }), ValueStatus::Valid),
        _ => (None, ValueStatus::Unparseable),
    }
}

/// The observations of one record: one per field with a native code in `terminology`
/// (`native-masimo.tsv`). `device_id`, `bed`, `seq` and `clock_synced` are left for the gateway.
///
/// `equipment_id` is the serial number; `source_row` is the 1-based field position among the
/// line's values; `abnormal_flags` is `H`/`L` when ALARM reports the SpO2 or pulse-rate limit
/// violated.
pub fn to_observations(
    record: &MasimoRecord,
    receive_time_us: i64,
    terminology: &Terminology,
) -> Vec<Observation> {
    let mut out = Vec::new();
    for (index, v) in record.values.iter().enumerate() {
        let Some(native) = terminology.native(DRIVER, &v.key) else {
            continue;
        };
        let term = terminology.by_mdc(native.mdc_code);
        let status = match v.status {
            ValueStatus::Valid => ObservationStatus::Valid,
            ValueStatus::NotAvailable => ObservationStatus::NotAvailable,
            ValueStatus::Unparseable => ObservationStatus::Invalid,
        };
        let (high_bit, low_bit) = match v.key.as_str() {
            "SPO2" => (0x0001, 0x0002),
            "BPM" => (0x0004, 0x0008),
            _ => (0, 0),
        };
        let abnormal_flags = if record.alarm & high_bit != 0 {
            "H"
        } else if record.alarm & low_bit != 0 {
            "L"
        } else {
            ""
        };
        out.push(Observation {
            mdc_code: native.mdc_code,
            mdc_refid: term.map(|t| t.refid.clone()).unwrap_or_default(),
            value: v.value.map(|x| x * native.scale),
            value_text: v.raw.clone(),
            unit_ucum: native.ucum.clone(),
            unit_mdc_code: native.unit_mdc_code,
            device_time_us: Some(record.device_time_us),
            receive_time_us,
            status: status as i32,
            abnormal_flags: abnormal_flags.to_owned(),
            equipment_id: record.serial.clone().unwrap_or_default(),
            loinc: term.and_then(|t| t.loinc.clone()).unwrap_or_default(),
            source_row: u32::try_from(index + 1).unwrap_or(u32::MAX),
            ..Observation::default()
        });
    }
    out
}
