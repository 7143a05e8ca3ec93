//! HL7 v2 date/time (DTM) to microseconds since the Unix epoch, UTC.
//!
//! Accepted form: `YYYY[MM[DD[HH[MM[SS[.S{1,4}]]]]]][+/-ZZZZ]`. Missing parts take their lowest
//! value (`2025` is 2025-01-01T00:00:00). Up to six fraction digits are accepted (senders that
//! write microseconds are tolerated).
//!
//! **A timestamp without a zone offset is taken as UTC.** SDPI requires PCD-01 observation times
//! in UTC (`+0000`), and the gateway never guesses a device's local time zone; a device that
//! sends local time without an offset must be configured to send UTC or an offset.

use chrono::{DateTime, NaiveDate, Utc};

/// Why a DTM value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmError {
    #[error("'{0}' is not an HL7 timestamp: expected YYYY[MM[DD[HH[MM[SS[.SSSS]]]]]][+/-ZZZZ]")]
    Format(String),
    #[error("'{0}' is not a real calendar date or time of day")]
    OutOfRange(String),
}

/// Parses an HL7 DTM into microseconds since the Unix epoch (UTC). See the module docs.
pub fn parse_dtm(value: &str) -> Result<i64, DtmError> {
    let text = value.trim();
    let format_err = || DtmError::Format(super::message::quote(text));
    if !text.is_ascii() {
        return Err(format_err());
    }
    // Split off the zone.
    let (datetime, zone) = match text.find(['+', '-']) {
        Some(i) => (&text[..i], Some(&text[i..])),
        None => (text, None),
    };
    let (digits, fraction) = match datetime.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (datetime, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(digits) || !matches!(digits.len(), 4 | 6 | 8 | 10 | 12 | 14) {
        return Err(format_err());
    }
    let num = |range: std::ops::Range<usize>, default: u32| -> u32 {
        digits
            .get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let year = num(0..4, 0) as i32;
    let (month, day) = (num(4..6, 1), num(6..8, 1));
    let (hour, minute, second) = (num(8..10, 0), num(10..12, 0), num(12..14, 0));
    let micros = match fraction {
        None => 0,
        Some(f) if digits.len() == 14 && (1..=6).contains(&f.len()) && all_digits(f) => {
            let scaled = format!("{f:0<6}");
            scaled.parse::<u32>().map_err(|_| format_err())?
        }
        Some(_) => return Err(format_err()),
    };
    let offset_seconds = match zone {
        None => 0,
        Some(z) => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let hhmm = &z[1..];
            if hhmm.len() != 4 || !all_digits(hhmm) {
                return Err(format_err());
            }
            let (h, m): (i64, i64) = (
                hhmm[..2].parse().map_err(|_| format_err())?,
                hhmm[2..].parse().map_err(|_| format_err())?,
            );
            if h > 23 || m > 59 {
                return Err(DtmError::OutOfRange(super::message::quote(text)));
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let local = NaiveDate::from_ymd_opt(year, month, day)
        .and_then(|d| d.and_hms_micro_opt(hour, minute, second, micros))
        .ok_or_else(|| DtmError::OutOfRange(super::message::quote(text)))?;
    Ok(local.and_utc().timestamp_micros() - offset_seconds * 1_000_000)
}

/// `YYYYMMDDHHMMSS+0000`, the form the gateway writes.
pub(crate) fn format_dtm(t: DateTime<Utc>) -> String {
    t.format("%Y%m%d%H%M%S+0000").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn us(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .map(|t| t.timestamp_micros())
            .unwrap_or_default()
    }

    #[test]
    fn parses_every_precision() {
        assert_eq!(parse_dtm("2025"), Ok(us(2025, 1, 1, 0, 0, 0)));
        assert_eq!(parse_dtm("202503"), Ok(us(2025, 3, 1, 0, 0, 0)));
        assert_eq!(parse_dtm("20250304"), Ok(us(2025, 3, 4, 0, 0, 0)));
        assert_eq!(parse_dtm("2025030405"), Ok(us(2025, 3, 4, 5, 0, 0)));
        assert_eq!(parse_dtm("202503040506"), Ok(us(2025, 3, 4, 5, 6, 0)));
        assert_eq!(parse_dtm("20250304050607"), Ok(us(2025, 3, 4, 5, 6, 7)));
        assert_eq!(
            parse_dtm("20250304050607.1234"),
            Ok(us(2025, 3, 4, 5, 6, 7) + 123_400)
        );
        assert_eq!(
            parse_dtm("20250304050607.5"),
            Ok(us(2025, 3, 4, 5, 6, 7) + 500_000)
        );
    }

    #[test]
    fn applies_zone_offset_and_defaults_to_utc() {
        let utc = us(2025, 1, 1, 12, 0, 0);
        assert_eq!(parse_dtm("20250101120000+0000"), Ok(utc));
        assert_eq!(parse_dtm("20250101120000"), Ok(utc));
        assert_eq!(parse_dtm("20250101130000+0100"), Ok(utc));
        assert_eq!(parse_dtm("20250101063000-0530"), Ok(utc));
        assert_eq!(parse_dtm("202501011200+0000"), Ok(utc));
        assert_eq!(parse_dtm("20250101120000.25+0000"), Ok(utc + 250_000));
    }

    #[test]
    fn rejects_malformed_and_impossible_values() {
        for bad in [
            "",
            "abc",
            "202",
            "20250",
            "2025010112000",
            "20250101120000.",
            "2025010112.5",
            "20250101120000+00",
            "20250101120000+0a00",
            "2025-01-01",
            "20250101120000.1234567",
            "２０２５",
        ] {
            assert!(
                matches!(parse_dtm(bad), Err(DtmError::Format(_))),
                "{bad} accepted"
            );
        }
        for bad in [
            "20251301",
            "20250230",
            "20250101250000",
            "20250101126000",
            "20250101120000+2500",
        ] {
            assert!(
                matches!(parse_dtm(bad), Err(DtmError::OutOfRange(_))),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn formats_utc() {
        let t = Utc
            .with_ymd_and_hms(2025, 1, 1, 12, 0, 1)
            .single()
            .unwrap_or_default();
        assert_eq!(format_dtm(t), "20250101120001+0000");
    }
}
