use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt as _;

use super::*;

/// A log writer the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Logs what a device actor and the MLLP path log, in `format`, and returns the lines.
fn log_in(format: LogFormat) -> String {
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::registry().with(log_layer(format, move || writer.clone()));
    tracing::subscriber::with_default(subscriber, || {
        let device = tracing::info_span!("device", device = "mon-1", bed = "bed-1");
        let _in = device.enter();
        // A pipeline span is for the exporter only: never on a log line.
        let receipt = tracing::info_span!(target: icu_cloud_bridge::trace::TARGET, "mllp.receive", peer = "x");
        let _r = receipt.enter();
        tracing::warn!(
            offset = 12,
            reason = "OBX^2^5 is not numeric",
            "mllp input rejected"
        );
        tracing::debug!("below the default filter");
    });
    out.text()
}

#[test]
fn the_format_is_the_flag_then_the_environment_then_the_file_then_the_journal() {
    use LogFormat::*;
    assert_eq!(LogFormat::choose(None, None, None, false), Text);
    assert_eq!(LogFormat::choose(None, None, None, true), Journald);
    assert_eq!(LogFormat::choose(None, None, Some(Json), true), Json);
    assert_eq!(
        LogFormat::choose(None, Some("text"), Some(Json), true),
        Text
    );
    assert_eq!(LogFormat::choose(None, Some(" JSON "), None, false), Json);
    // An unknown ICU_LOG_FORMAT does not win over the file.
    assert_eq!(
        LogFormat::choose(None, Some("xml"), Some(Json), false),
        Json
    );
    assert_eq!(
        LogFormat::choose(Some(Journald), Some("json"), Some(Text), false),
        Journald
    );
}

#[test]
fn journald_lines_carry_the_priority_and_no_timestamp_or_colour() {
    let text = log_in(LogFormat::Journald);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line = lines[0];
    assert!(
        line.starts_with("<4>WARN icu_gateway::telemetry::tests: device{device=\"mon-1\" bed=\"bed-1\"}: mllp input rejected"),
        "{line}"
    );
    assert!(line.contains("offset=12"), "{line}");
    assert!(!line.contains('\u{1b}'), "no ANSI colours: {line}");
    assert!(!line.contains("mllp.receive"), "{line}");
    assert_eq!(priority(&tracing::Level::ERROR), 3);
    assert_eq!(priority(&tracing::Level::INFO), 6);
    assert_eq!(priority(&tracing::Level::TRACE), 7);
}

#[test]
fn json_lines_are_one_object_with_the_span_fields() {
    let text = log_in(LogFormat::Json);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("one JSON object per line");
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["target"], "icu_gateway::telemetry::tests");
    assert!(
        v["timestamp"].as_str().is_some_and(|t| t.contains('T')),
        "{v}"
    );
    assert_eq!(v["fields"]["message"], "mllp input rejected");
    assert_eq!(v["fields"]["offset"], 12);
    assert_eq!(v["span"]["device"], "mon-1");
    assert_eq!(v["span"]["bed"], "bed-1");
    assert_eq!(v["spans"].as_array().map(Vec::len), Some(1), "{v}");
}

#[test]
fn settings_are_checked_and_the_endpoint_comes_from_the_file_or_the_environment() {
    let s = TracingSettings {
        otlp_endpoint: Some("127.0.0.1:4318".into()),
        sample_ratio: 1.5,
        ..TracingSettings::default()
    };
    let fields: Vec<String> = s.problems().into_iter().map(|p| p.field).collect();
    assert_eq!(fields, ["tracing.otlp_endpoint", "tracing.sample_ratio"]);
    assert!(TracingSettings::default().problems().is_empty());
    assert_eq!(TracingSettings::default().endpoint(None), None);
    assert_eq!(TracingSettings::default().endpoint(Some(" ")), None);
    assert_eq!(
        TracingSettings::default().endpoint(Some("http://c:4318")),
        Some("http://c:4318".into())
    );
    assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
    assert_eq!(
        traces_url("http://c:4318/v1/traces"),
        "http://c:4318/v1/traces"
    );
}

#[test]
fn with_tracing_off_the_pipeline_spans_are_disabled_at_their_call_sites() {
    // The subscriber `init` installs without an OTLP endpoint: the log layer alone.
    let subscriber = tracing_subscriber::registry().with(log_layer(LogFormat::Text, std::io::sink));
    tracing::subscriber::with_default(subscriber, || {
        let commit = tracing::info_span!(target: icu_cloud_bridge::trace::TARGET, "store.commit");
        assert!(commit.is_disabled(), "no layer wants the pipeline spans");
        assert_eq!(icu_cloud_bridge::trace::traceparent_of(&commit), None);
        assert!(!tracing::info_span!("device").is_disabled());
    });
}
