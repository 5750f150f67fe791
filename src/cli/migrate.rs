use crate::config::Settings;
use crate::{store, telemetry};

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    telemetry::init(&settings.log);
    store::migrate(&settings.database).await?;
    tracing::info!("database is up to date");
    Ok(())
}
