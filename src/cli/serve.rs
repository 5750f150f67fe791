use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::startup::Application;
use crate::{shutdown, telemetry};

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let tracing = telemetry::init_with_export(&settings.log, &settings.telemetry)?;
    telemetry::install_panic_hook();
    let served = serve(settings).await;
    // The spans of the last messages are still in the exporter's buffer.
    tracing.shutdown().await;
    served
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let application = Application::build(settings).await?;
    tracing::info!(http = %application.http_addr(), "customer-ingest started");
    let stop = CancellationToken::new();
    shutdown::on_signal(stop.clone());
    application.run_until_stopped(stop).await
}
