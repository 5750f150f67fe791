//! Removing what a run made: queues, exchanges and databases, recorded before they exist so that a
//! failed or interrupted run removes them too.

use std::sync::{Arc, Mutex, PoisonError};

use anyhow::bail;
use customer_ingest::config::Settings;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use sqlx::Connection as _;

use crate::connect::{CALL_PATIENCE, admin_connection, amqp_connection, within};

/// The queues, exchanges and databases a run made, so that they can be removed whatever happens.
#[derive(Debug, Default, Clone)]
pub struct Leftovers {
    pub queues: Vec<String>,
    pub exchanges: Vec<String>,
    pub databases: Vec<String>,
}

/// Everything made and not yet removed, shared so that the final sweep in [`run`](crate::run::run) sees what a failed
/// or interrupted phase left.
#[derive(Default, Clone)]
pub struct Ledger(Arc<Mutex<Leftovers>>);

impl Ledger {
    pub fn record(&self, items: &Leftovers) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.queues.extend(items.queues.iter().cloned());
        all.exchanges.extend(items.exchanges.iter().cloned());
        all.databases.extend(items.databases.iter().cloned());
    }

    pub fn forget(&self, items: &Leftovers) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.queues.retain(|q| !items.queues.contains(q));
        all.exchanges.retain(|e| !items.exchanges.contains(e));
        all.databases.retain(|d| !items.databases.contains(d));
    }

    pub fn take(&self) -> Leftovers {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Deletes the queues and exchanges and drops the databases (`WITH (FORCE)`: a killed worker's
/// sessions must not keep one alive). Goes on after a failure and reports every one of them.
pub async fn clean(settings: &Settings, items: &Leftovers) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    if !items.queues.is_empty() || !items.exchanges.is_empty() {
        match amqp_connection(settings, "customer-ingest bench clean-up").await {
            Ok(connection) => {
                for queue in &items.queues {
                    let deleted = within(CALL_PATIENCE, "deleting a queue", async {
                        // A channel per deletion: a refused one closes its channel.
                        let channel = connection.create_channel().await?;
                        channel
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await?;
                        let _ = channel.close(200, "deleted".into()).await;
                        Ok(())
                    })
                    .await;
                    if let Err(error) = deleted {
                        failures.push(format!("queue {queue}: {error:#}"));
                    }
                }
                for exchange in &items.exchanges {
                    let deleted = within(CALL_PATIENCE, "deleting an exchange", async {
                        let channel = connection.create_channel().await?;
                        channel
                            .exchange_delete(
                                exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await?;
                        let _ = channel.close(200, "deleted".into()).await;
                        Ok(())
                    })
                    .await;
                    if let Err(error) = deleted {
                        failures.push(format!("exchange {exchange}: {error:#}"));
                    }
                }
                let _ = connection.close(200, "bench done".into()).await;
            }
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    if !items.databases.is_empty() {
        match admin_connection(settings).await {
            Ok(mut admin) => {
                for database in &items.databases {
                    let quoted = format!("\"{}\"", database.replace('"', "\"\""));
                    let dropped = within(CALL_PATIENCE, "dropping a database", async {
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
                            .execute(&mut admin)
                            .await?;
                        Ok(())
                    })
                    .await;
                    if let Err(error) = dropped {
                        failures.push(format!("database {database}: {error:#}"));
                    }
                }
                let _ = admin.close().await;
            }
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!(
            "could not remove everything the bench made: {}",
            failures.join("; ")
        )
    }
}
