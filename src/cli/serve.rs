use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::startup::Application;
use crate::{shutdown, telemetry};

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    telemetry::init(&settings.log);
    telemetry::install_panic_hook();
    let application = Application::build(settings).await?;
    tracing::info!(http = %application.http_addr(), "customer-ingest started");
    let stop = CancellationToken::new();
    shutdown::on_signal(stop.clone());
    application.run_until_stopped(stop).await
}
