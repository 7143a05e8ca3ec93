//! One message's trace across the outbox: the W3C trace context (`traceparent`) of the span
//! that committed a message, kept with its stored records, and the bridge's delivery span that
//! continues it, possibly after a restart.
//!
//! Owns: [`TARGET`], the tracing target of every pipeline span (receipt, decode, commit, ACK,
//! Kafka delivery), which only the OpenTelemetry layer listens to; [`traceparent_of`] and
//! [`continue_trace`], the two ends of the gap.
//! Guarantees:
//! - with tracing off (no `[tracing] otlp_endpoint`) no layer is interested in [`TARGET`], so the
//!   pipeline spans are disabled at their call sites and [`traceparent_of`] returns `None`
//!   without allocating: nothing is stored and no header is added;
//! - counts and seqs on the spans are recorded as `i64` (the OpenTelemetry layer exports a
//!   `u64` as a string), so a collector sees numbers;
//! - the `traceparent` header is transport metadata: it is not covered by the record's signed
//!   envelope (`crate::signing::envelope::COVERED`), since a re-send of the same bytes is a new
//!   delivery with a span of its own.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The tracing target of the pipeline spans (exported over OTLP, never written to the log).
pub const TARGET: &str = "icu::trace";

/// The W3C header (and Kafka record header) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The W3C `traceparent` of `span` (`00-<trace id>-<span id>-<flags>`), or `None` when the
/// span is disabled (tracing off) or has no valid context.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let mut carrier = OneHeader(None);
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.0
}

/// Makes `span` a child of the trace context in `traceparent` (as stored with the record). An
/// empty or malformed `traceparent`, or a disabled span, leaves it as it is (a root span).
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() || span.is_disabled() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&OneHeader(Some(traceparent.to_owned())));
    // Fails only when the span was already started or the layer is absent: it stays a root.
    let _ = span.set_parent(parent);
}

/// A carrier of the one header the W3C propagator reads and writes (`tracestate` is not used:
/// the gateway's spans never carry vendor state).
struct OneHeader(Option<String>);

impl Injector for OneHeader {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

impl Extractor for OneHeader {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_span_has_no_traceparent() {
        // No subscriber at all: every span is disabled, as with tracing off.
        let span = tracing::info_span!(target: TARGET, "commit");
        assert_eq!(traceparent_of(&span), None);
        continue_trace(
            &span,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        assert_eq!(traceparent_of(&span), None);
    }

    #[test]
    fn the_delivery_span_continues_the_stored_trace() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "test");
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
        tracing::subscriber::with_default(subscriber, || {
            let stored = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            let span = tracing::info_span!(target: TARGET, "kafka.deliver");
            continue_trace(&span, stored);
            let own = traceparent_of(&span).expect("an enabled span has a traceparent");
            assert!(
                own.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
                "same trace: {own}"
            );
            assert!(!own.contains("b7ad6b7169203331"), "its own span id: {own}");
            // A malformed context leaves a new root: a trace id of its own.
            let root = tracing::info_span!(target: TARGET, "kafka.deliver");
            continue_trace(&root, "not a traceparent");
            let own = traceparent_of(&root).expect("still traced");
            assert!(!own.contains("0af7651916cd43dd8448eb211c80319c"), "{own}");
        });
    }
}
