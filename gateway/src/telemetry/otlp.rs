//! The OTLP exporter: spans posted as protobuf to a collector's `/v1/traces` by the SDK's batch
//! processor, on a thread of its own with a blocking HTTP client (so it needs no async runtime
//! and is independent of the actix system; flushed on shutdown).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// How long one export may take before it is given up (the spans of that batch are dropped).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the exporter needs: where to, and who is speaking.
#[derive(Debug, Clone)]
pub struct OtlpSetup {
    /// The traces URL (`…/v1/traces`).
    pub url: String,
    pub service_name: String,
    /// `service.instance.id`: the gateway id.
    pub instance_id: String,
    /// Share of traces kept (parent-based, so a trace is kept or dropped whole).
    pub sample_ratio: f64,
}

/// Builds the provider that exports through the batch processor.
pub fn provider(setup: &OtlpSetup) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(setup.url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let resource = Resource::builder()
        .with_service_name(setup.service_name.clone())
        .with_attribute(KeyValue::new(
            "service.instance.id",
            setup.instance_id.clone(),
        ))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            setup.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// The tracer the `tracing` layer writes through.
pub fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::Tracer {
    provider.tracer("icu-gateway")
}
