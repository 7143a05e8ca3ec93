//! Logs and traces: how the gateway reports what it does.
//!
//! Owns: the one `tracing` subscriber of the process ([`init`]): the log lines on stderr in the
//! chosen [`LogFormat`] (text, JSON lines, or journald-friendly, the default under systemd),
//! filtered by `RUST_LOG`; and, with `[tracing] otlp_endpoint` (or
//! `OTEL_EXPORTER_OTLP_ENDPOINT`), the OpenTelemetry layer that exports the pipeline spans
//! (target `icu::trace`: receipt, decode, commit, ACK, Kafka delivery; see
//! `icu_cloud_bridge::trace`) over OTLP/HTTP.
//! Guarantees:
//! - tracing is off by default, and then no layer is interested in the pipeline spans: they are
//!   disabled at their call sites and nothing is stored or added to Kafka headers;
//! - the pipeline spans never reach the log lines, and the log lines never reach the exported
//!   spans (only the `icu::trace` spans and their attributes are exported: ids, bed, transport,
//!   control id, counts; never a patient name);
//! - [`Telemetry::shutdown`] (and dropping it) flushes the spans not yet exported.

mod logs;
mod otlp;
mod settings;

use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer, Registry};

pub use logs::{priority, Journald};
pub use otlp::OtlpSetup;
pub use settings::{traces_url, LogFormat, TracingSettings};

/// The log filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,actix_server=warn,librdkafka=warn";

/// Why logging or tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot export traces to {url}: {reason}")]
    Exporter { url: String, reason: String },
    #[error("the log subscriber could not be installed: {0}")]
    Subscriber(String),
}

/// The installed subscriber's exporter, to flush on shutdown.
#[must_use = "dropping it flushes and stops the trace exporter"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn tracing_on(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is queued and stops the exporter (waits up to its export timeout).
    pub fn shutdown(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "traces not all exported at shutdown");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.flush();
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The log layer of `format`, filtered by `RUST_LOG` (else [`DEFAULT_FILTER`]), never showing
/// the pipeline spans.
pub fn log_layer<W>(format: LogFormat, writer: W) -> BoxedLayer
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
        .add_directive(
            format!("{}=off", icu_cloud_bridge::trace::TARGET)
                .parse()
                .expect("a valid directive"),
        );
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => layer.with_filter(filter).boxed(),
        LogFormat::Json => layer
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Journald => layer
            .with_ansi(false)
            .event_format(Journald)
            .with_filter(filter)
            .boxed(),
    }
}

/// Installs the process's subscriber: log lines in `format` on stderr and, with `otlp`, the
/// span exporter.
pub fn init(format: LogFormat, otlp: Option<&OtlpSetup>) -> Result<Telemetry, TelemetryError> {
    let mut layers = vec![log_layer(format, std::io::stderr)];
    let provider = match otlp {
        Some(setup) => {
            let provider = otlp::provider(setup).map_err(|reason| TelemetryError::Exporter {
                url: setup.url.clone(),
                reason,
            })?;
            let only_pipeline =
                Targets::new().with_target(icu_cloud_bridge::trace::TARGET, tracing::Level::INFO);
            layers.push(
                tracing_opentelemetry::layer()
                    .with_tracer(otlp::tracer(&provider))
                    .with_filter(only_pipeline)
                    .boxed(),
            );
            Some(provider)
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    if let Some(setup) = otlp {
        tracing::info!(url = %setup.url, service = %setup.service_name,
            sample_ratio = setup.sample_ratio, "tracing on: spans exported over OTLP/HTTP");
    }
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests;
