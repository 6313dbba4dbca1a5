//! What operators see of baton: traces (OpenTelemetry over OTLP), metrics
//! (Prometheus) and logs (`tracing`). This module sets them up and offers the
//! runtime spans and counters; it decides nothing about processes.

pub mod health;
pub mod metrics;
pub mod trace;

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
};

use crate::config::{self, LogFormat, OtlpProtocol};

pub use health::Health;
pub use metrics::Metrics;
pub use trace::{Span, Tracer};

/// Telemetry that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// Installs the log subscriber (stderr). `RUST_LOG` wins over `log.level`.
pub fn init_logs(log: &config::Log) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Whether traces should be exported: an endpoint is configured (here or in
/// the standard variables) and `OTEL_SDK_DISABLED` / `OTEL_TRACES_EXPORTER`
/// do not turn them off.
pub fn traces_wanted(cfg: &config::Telemetry) -> bool {
    let off = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    let endpoint = cfg.otlp_endpoint.is_some()
        || env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
        || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    endpoint && !off
}

/// The trace pipeline; [`Traces::shutdown`] flushes what is still queued.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// A tracer for the runtime; `group` is its consumer group.
    pub fn tracer(&self, group: &str) -> Tracer {
        Tracer::new(self.provider.tracer("baton"), group)
    }

    /// Exports the spans still queued and stops the exporter.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace export did not shut down cleanly");
        }
    }
}

/// Sets up OTLP trace export, or returns `None` when traces are off.
pub fn init_traces(
    cfg: &config::Telemetry,
    instance_id: &str,
) -> Result<Option<Traces>, TelemetryError> {
    if !traces_wanted(cfg) {
        return Ok(None);
    }
    let protocol = cfg.otlp_protocol.unwrap_or_else(|| {
        let env = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_default();
        if env.trim() == "grpc" {
            OtlpProtocol::Grpc
        } else {
            OtlpProtocol::HttpProtobuf
        }
    });
    // The OTLP clients need a Tokio reactor; the SDK's batch processor
    // exports from a plain thread of its own, so the exporter brings one.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("baton-otlp")
        .enable_all()
        .build()
        .map_err(|e| TelemetryError::Exporter(format!("cannot start its runtime: {e}")))?;
    let exporter = {
        let _guard = rt.enter();
        let timeout = Duration::from_secs(10);
        match protocol {
            OtlpProtocol::Grpc => {
                let mut b = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_timeout(timeout);
                if let Some(e) = &cfg.otlp_endpoint {
                    b = b.with_endpoint(e.clone());
                }
                b.build()
            }
            OtlpProtocol::HttpProtobuf => {
                let mut b = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_timeout(timeout);
                if let Some(e) = &cfg.otlp_endpoint {
                    b = b.with_endpoint(http_traces_url(e));
                }
                b.build()
            }
        }
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?
    };
    let mut batch = BatchConfigBuilder::default();
    if !env_set("OTEL_BSP_MAX_QUEUE_SIZE") {
        // Several spans per event at thousands of events per second.
        batch = batch.with_max_queue_size(65_536);
    }
    if !env_set("OTEL_BSP_SCHEDULE_DELAY") {
        batch = batch.with_scheduled_delay(Duration::from_secs(1));
    }
    let processor = BatchSpanProcessor::builder(OnRuntime { exporter, rt })
        .with_batch_config(batch.build())
        .build();
    let mut resource = Resource::builder()
        .with_attribute(KeyValue::new(
            "service.instance.id",
            instance_id.to_string(),
        ))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if !env_set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(cfg.service_name.clone());
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sample_ratio,
        ))))
        .with_resource(resource.build())
        .build();
    tracing::info!(?protocol, "exporting traces over OTLP");
    Ok(Some(Traces { provider }))
}

/// The traces URL of an OTLP/HTTP endpoint given as a base address, as the
/// `OTEL_EXPORTER_OTLP_ENDPOINT` convention has it.
fn http_traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// An exporter that runs on a Tokio runtime of its own.
#[derive(Debug)]
struct OnRuntime {
    exporter: opentelemetry_otlp::SpanExporter,
    rt: tokio::runtime::Runtime,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.rt.block_on(self.exporter.export(batch))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let _guard = self.rt.enter();
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        let _guard = self.rt.enter();
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.exporter.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_get_the_traces_path_once() {
        assert_eq!(http_traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(http_traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            http_traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
