//! A librdkafka client context that keeps the log readable while Kafka is down.
//!
//! librdkafka reports the same global error (e.g. "all brokers down") many times a second during
//! an outage. This context logs the first occurrence of each error kind, then at most one summary
//! per interval with the number of repeats suppressed; librdkafka's own log lines go to `debug`
//! except errors. The bridge's state on `/api/status` carries the current condition anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

use super::security::SecurityFailure;

/// The last authentication or TLS failure librdkafka reported, with when; shared by every
/// producer the bridge makes (a producer is replaced after failed deliveries).
pub type FailureSlot = Arc<Mutex<Option<(Instant, SecurityFailure)>>>;

/// How often one repeated error is logged again.
const REPEAT_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct QuietContext {
    seen: Mutex<HashMap<String, (Instant, u64)>>,
    failure: FailureSlot,
}

impl QuietContext {
    /// A context that records authentication and TLS failures into `failure`.
    pub fn with_failure_slot(failure: FailureSlot) -> Self {
        Self {
            seen: Mutex::default(),
            failure,
        }
    }

    fn note(&self, code: Option<rdkafka::error::RDKafkaErrorCode>, text: &str) {
        if let Some(f) = SecurityFailure::classify(code, text) {
            *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), f));
        }
    }

    /// Returns `Some(suppressed)` when this error kind should be logged now.
    fn should_log(&self, kind: String, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get_mut(&kind) {
            None => {
                seen.insert(kind, (now, 0));
                Some(0)
            }
            Some((last, suppressed)) => {
                if now.duration_since(*last) >= REPEAT_INTERVAL {
                    let n = *suppressed;
                    *last = now;
                    *suppressed = 0;
                    Some(n)
                } else {
                    *suppressed += 1;
                    None
                }
            }
        }
    }
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                self.note(None, log_message);
                if let Some(suppressed) = self.should_log(format!("log:{fac}"), Instant::now()) {
                    tracing::warn!(facility = fac, suppressed, "librdkafka: {log_message}");
                }
            }
            _ => tracing::debug!(facility = fac, "librdkafka: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.note(error.rdkafka_error_code(), reason);
        let kind = format!("error:{:?}", error.rdkafka_error_code());
        if let Some(suppressed) = self.should_log(kind, Instant::now()) {
            tracing::warn!(error = %error, suppressed, "kafka client: {reason}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_suppressed_then_summarised() {
        let c = QuietContext::default();
        let t0 = Instant::now();
        assert_eq!(c.should_log("a".into(), t0), Some(0));
        for i in 1..=100 {
            assert_eq!(
                c.should_log("a".into(), t0 + Duration::from_millis(i * 50)),
                None
            );
        }
        assert_eq!(
            c.should_log("b".into(), t0),
            Some(0),
            "another kind is logged at once"
        );
        assert_eq!(c.should_log("a".into(), t0 + REPEAT_INTERVAL), Some(100));
    }
}
