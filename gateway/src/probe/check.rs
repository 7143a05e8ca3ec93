//! One probe's answer ([`Check`]) and the probe's options ([`ProbeOptions`]), shared by every
//! kind of check.

use std::time::Duration;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Something a site must fix before the gateway can do that part of its work.
    Fail,
    /// The part is not configured (no `[mqtt]`, no `[kafka]`, no alarm manager).
    Skip,
}

/// One line of `check-config --probe`: what was checked, and if it failed why and what to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub status: Status,
    /// What was checked, e.g. `serial port /dev/ttyUSB0 (spo2-01, 9600 8N1)`.
    pub what: String,
    /// Why it failed or was skipped; for an OK check an optional note (days left, free space).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub why: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl Check {
    pub fn ok(what: impl Into<String>) -> Self {
        Self::new(Status::Ok, what, String::new(), String::new())
    }

    /// OK, with a note in brackets after the line.
    pub fn ok_note(what: impl Into<String>, note: impl Into<String>) -> Self {
        Self::new(Status::Ok, what, note.into(), String::new())
    }

    pub fn fail(what: impl Into<String>, why: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(Status::Fail, what, why.into(), fix.into())
    }

    pub fn skip(what: impl Into<String>, why: impl Into<String>) -> Self {
        Self::new(Status::Skip, what, why.into(), String::new())
    }

    fn new(status: Status, what: impl Into<String>, why: String, fix: String) -> Self {
        Self {
            status,
            what: what.into(),
            why,
            fix,
        }
    }

    /// `OK   <what>` (` (<note>)`), `FAIL <what>: <why>; <fix>`, `SKIP <what>: <why>`.
    pub fn line(&self) -> String {
        match self.status {
            Status::Ok if self.why.is_empty() => format!("OK   {}", self.what),
            Status::Ok => format!("OK   {} ({})", self.what, self.why),
            Status::Fail if self.fix.is_empty() => format!("FAIL {}: {}", self.what, self.why),
            Status::Fail => format!("FAIL {}: {}; {}", self.what, self.why, self.fix),
            Status::Skip => format!("SKIP {}: {}", self.what, self.why),
        }
    }
}

/// How `check-config --probe` probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Each probe's own bound (opening a port, a broker's answer, a TCP connect).
    pub timeout: Duration,
    /// The shortest `retention.ms` a Kafka topic may report (the `topics create` default: 7 days).
    pub min_retention: Duration,
    /// The config file, as given (named in the fix for a missing topic).
    pub config_path: std::path::PathBuf,
}

impl ProbeOptions {
    pub fn new(config_path: &std::path::Path) -> Self {
        Self {
            timeout: Duration::from_secs(5),
            min_retention: Duration::from_secs(7 * 24 * 3600),
            config_path: config_path.to_owned(),
        }
    }
}

/// Parses a duration as `5s`, `500ms`, `2m` or plain seconds (`5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((t, "s"), |i| (&t[..i], t[i..].trim()));
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 5s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    if !(0.001..=600.0).contains(&seconds) {
        return Err(format!("{text:?} is outside 1ms..10m"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `1.5 GiB`, `320 MiB`.
pub fn bytes_text(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let mib = bytes as f64 / MIB;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}
