//! Logging and tracing set-up: human-readable or JSON log lines, filtered by `log.level` (or
//! RUST_LOG); and, when `telemetry.otlp_endpoint` is set, the service's spans exported over
//! OTLP/HTTP (protobuf) through a batch span processor. Without an endpoint no exporter is built and
//! no OpenTelemetry layer is installed.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, LogSettings};

/// Where the spans go (the `[telemetry]` settings).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// An OTLP/HTTP collector's base URL; spans are posted to `<url>/v1/traces`. Empty: no export.
    pub otlp_endpoint: String,
}

/// How long one export may take, the request and its answer.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The span exporter [`init_with_export`] installed, if any: [`Tracing::shutdown`] exports what it
/// still holds.
#[must_use = "shut it down on the way out, or the last spans are lost"]
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

/// Logging only: for commands and tests, which export no spans.
pub fn init(settings: &LogSettings) {
    install(settings, None);
}

/// Logging, and the export of spans when `telemetry.otlp_endpoint` is set. Runs within the tokio
/// runtime, which carries the exporter's requests.
pub fn init_with_export(
    log: &LogSettings,
    telemetry: &TelemetrySettings,
) -> anyhow::Result<Tracing> {
    let provider = provider(telemetry)?;
    install(log, provider.as_ref());
    Ok(Tracing { provider })
}

fn install(settings: &LogSettings, provider: Option<&SdkTracerProvider>) {
    // The exporter's own messages (`opentelemetry*` targets) from warnings up: a failed export.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},sqlx=warn,lapin=warn,opentelemetry=warn",
            settings.level
        ))
    });
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match settings.format {
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
        LogFormat::Human => lines.boxed(),
    };
    // The spans are exported whatever the log level: the service's own, from `info` up.
    let spans = provider.map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(env!("CARGO_PKG_NAME")))
            .with_filter(Targets::new().with_target(env!("CARGO_CRATE_NAME"), Level::INFO))
    });
    // A second initialisation (tests start many applications in one process) is not an error.
    let _ = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(spans)
        .try_init();
}

/// The tracer provider exporting to `telemetry.otlp_endpoint`, or `None` when it is empty.
fn provider(settings: &TelemetrySettings) -> anyhow::Result<Option<SdkTracerProvider>> {
    let base = settings.otlp_endpoint.trim();
    if base.is_empty() {
        return Ok(None);
    }
    // The HTTP client has no TLS: the endpoint is a collector or agent on the private network.
    anyhow::ensure!(
        base.starts_with("http://"),
        "invalid configuration: telemetry.otlp_endpoint ({base:?}) must be an http:// URL"
    );
    let runtime = tokio::runtime::Handle::try_current()
        .context("the span exporter needs the tokio runtime")?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')))
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(OnRuntime {
            client: HyperClient::with_default_connector(EXPORT_TIMEOUT, None),
            runtime,
        })
        .build()
        .with_context(|| format!("invalid configuration: telemetry.otlp_endpoint ({base:?})"))?;
    let resource = Resource::builder()
        .with_service_name(env!("CARGO_PKG_NAME"))
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

impl Tracing {
    /// Exports the spans still held, then stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // Blocks until the batch processor has exported, and its requests run on this runtime:
        // so not on one of the runtime's own threads.
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = %error, "exporting the last spans failed"),
            Err(error) => tracing::warn!(error = %error, "exporting the last spans failed"),
        }
    }
}

/// The exporter's HTTP client. The batch span processor exports from a thread of its own, outside
/// the tokio runtime, where hyper cannot run: each request is sent from the runtime instead.
#[derive(Debug)]
struct OnRuntime {
    client: HyperClient,
    runtime: tokio::runtime::Handle,
}

#[async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

/// Replaces the default panic hook, which prints the panic's message to stderr, with one that logs
/// where the panic happened and its message only when that is a literal: a formatted message (an
/// `expect` on an error, a `panic!` with arguments) may quote a customer's data.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            %location,
            message = literal_message(info.payload()),
            "panicked"
        );
    }));
}

/// The panic's message if it was written as a literal (it then holds no data), else a placeholder.
fn literal_message(payload: &(dyn std::any::Any + Send)) -> &'static str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .unwrap_or("(a formatted message, withheld: it may quote data)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_exporter_is_built_without_an_endpoint_and_an_https_one_is_refused_naming_the_key() {
        let off = TelemetrySettings::default();
        assert!(provider(&off).unwrap().is_none());
        let tls = TelemetrySettings {
            otlp_endpoint: "https://collector:4318".into(),
        };
        let error = provider(&tls).unwrap_err().to_string();
        assert!(error.contains("telemetry.otlp_endpoint"), "{error}");
    }

    #[test]
    // The point is an `expect` on an error that quotes data.
    #[allow(clippy::unnecessary_literal_unwrap)]
    fn a_formatted_panic_message_is_withheld_and_a_literal_one_kept() {
        let literal = std::panic::catch_unwind(|| panic!("a literal")).unwrap_err();
        assert_eq!(literal_message(literal.as_ref()), "a literal");
        let email = "ann@example.com";
        let formatted = std::panic::catch_unwind(|| panic!("bad {email}")).unwrap_err();
        assert!(!literal_message(formatted.as_ref()).contains(email));
        let expected: Result<(), String> = std::hint::black_box(Err(email.to_owned()));
        let expect = std::panic::catch_unwind(|| expected.expect("stored")).unwrap_err();
        assert!(!literal_message(expect.as_ref()).contains(email));
    }
}
