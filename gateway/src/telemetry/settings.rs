//! The `[tracing]` section: OpenTelemetry export (off by default) and the log line format.

use serde::Deserialize;

use crate::domain::FieldProblem;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human lines with timestamps and colours when stderr is a terminal (a shell, a test log).
    Text,
    /// One JSON object per line: timestamp, level, target, message, the event's fields and the
    /// fields of the spans it happened in (for a log shipper).
    Json,
    /// For the systemd journal: a syslog priority prefix (`<3>` error … `<7>` trace, so
    /// `journalctl -p warning` works), no timestamp (the journal adds its own) and no colours.
    Journald,
}

impl LogFormat {
    /// Reads `text`, `json` or `journald` (as the flag, `ICU_LOG_FORMAT` and the file spell it).
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            "journald" => Some(LogFormat::Journald),
            _ => None,
        }
    }

    /// The format in force: the `--log-format` flag, else `ICU_LOG_FORMAT`, else the config
    /// file's `[tracing] log_format`, else journald-friendly when stderr is the journal
    /// (systemd sets `JOURNAL_STREAM` for a service whose output goes there), else text.
    pub fn choose(
        flag: Option<LogFormat>,
        env: Option<&str>,
        file: Option<LogFormat>,
        journal_stream: bool,
    ) -> LogFormat {
        flag.or_else(|| env.and_then(LogFormat::parse))
            .or(file)
            .unwrap_or(if journal_stream {
                LogFormat::Journald
            } else {
                LogFormat::Text
            })
    }
}

/// `[tracing]` as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSettings {
    /// Base URL of an OpenTelemetry collector's OTLP/HTTP receiver, e.g.
    /// `"http://127.0.0.1:4318"` (spans are posted to its `/v1/traces`, protobuf encoded).
    /// Absent: no spans are exported, unless the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// environment variable names one.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans (`service.instance.id` is the gateway id).
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Share of message traces exported, 0.0 to 1.0 (a trace is kept or dropped whole, the
    /// bridge's delivery span with it).
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// `"text"`, `"json"` or `"journald"`; absent: journald-friendly when stderr is the journal,
    /// text otherwise. `--log-format` and `ICU_LOG_FORMAT` take precedence.
    #[serde(default)]
    pub log_format: Option<LogFormat>,
}

fn default_service_name() -> String {
    "icu-gateway".into()
}

fn default_sample_ratio() -> f64 {
    1.0
}

impl Default for TracingSettings {
    fn default() -> Self {
        TracingSettings {
            otlp_endpoint: None,
            service_name: default_service_name(),
            sample_ratio: default_sample_ratio(),
            log_format: None,
        }
    }
}

impl TracingSettings {
    /// Every problem of the section, with its field path.
    pub fn problems(&self) -> Vec<FieldProblem> {
        let mut out = Vec::new();
        let mut problem = |field: &str, message: String| {
            out.push(FieldProblem {
                field: format!("tracing.{field}"),
                message,
            })
        };
        if let Some(url) = &self.otlp_endpoint {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
                problem(
                    "otlp_endpoint",
                    format!("'{url}' is not an http(s) URL like http://127.0.0.1:4318"),
                );
            }
        }
        if self.service_name.trim().is_empty() {
            problem("service_name", "must not be empty".into());
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            problem(
                "sample_ratio",
                format!("{} is not between 0.0 and 1.0", self.sample_ratio),
            );
        }
        out
    }

    /// The OTLP endpoint in force: the file's, else `OTEL_EXPORTER_OTLP_ENDPOINT` (`env`).
    pub fn endpoint(&self, env: Option<&str>) -> Option<String> {
        self.otlp_endpoint.clone().or_else(|| {
            env.map(str::trim)
                .filter(|e| !e.is_empty())
                .map(String::from)
        })
    }
}

/// The OTLP/HTTP traces URL of an endpoint: `<base>/v1/traces`, unless it already names it.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}
