//! `erase --tenant T --key K`: deletes a customer on request (the right to erasure), with what this
//! service keeps of it, and announces it with a `customer.deleted` event.
//!
//! The deletion is one transaction ([`store::erasure::erase`]); the event is written to the outbox
//! in it, and the relay of a running worker publishes it. The command then waits (up to
//! `--timeout`) until the event has left the outbox, published and confirmed. It prints what was
//! removed, by count, and never the customer's data or key.

use std::time::Duration;

use anyhow::{Context, bail};
use backon::Retryable;
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Settings;
use crate::reply::Reply;
use crate::store::{self, erasure, outbox};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The customer's tenant.
    #[arg(long)]
    pub tenant: String,
    /// The customer's key in that tenant (as the producer sent it: `customerID`, `id`, ...).
    #[arg(long)]
    pub key: String,
    /// How long to wait for a running worker to publish the `customer.deleted` event (0: do not
    /// wait). The erasure itself is done either way.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

pub async fn run(settings: Settings, args: Args) -> anyhow::Result<()> {
    let pool = store::connect(&settings.database).await?;
    let budget = settings
        .database
        .retry_budget()
        .min(Duration::from_secs(60));
    let erased = (|| erasure::erase(&pool, &args.tenant, &args.key, &scrub))
        .retry(store::retry_policy(budget))
        .when(store::is_transient)
        .await
        .context("erasing the customer")?;
    let Some(erased) = erased else {
        bail!(
            "tenant {:?} has no customer with this key; nothing was erased",
            args.tenant
        );
    };
    println!(
        "erased customer {} of tenant {:?}: 1 customer, {} contact resolutions, {} records in {} \
         stored replies, {} pending events",
        erased.customer_id,
        args.tenant,
        erased.contact_resolutions,
        erased.reply_records,
        erased.replies,
        erased.pending_events,
    );
    let published = wait_for_publication(&pool, erased.outbox_row, args.timeout).await?;
    if published {
        println!(
            "customer.deleted event (version {}) published",
            erased.version
        );
    } else {
        println!(
            "customer.deleted event (version {}) is in the outbox; a running worker publishes it",
            erased.version
        );
    }
    pool.close().await;
    Ok(())
}

/// A stored reply without the customer's records and response entries.
fn scrub(
    stored: serde_json::Value,
    key: &str,
    id: Uuid,
) -> Result<(serde_json::Value, u64), sqlx::error::BoxDynError> {
    // A reply this version cannot read fails the erasure rather than keeping the customer in it.
    let mut reply: Reply = serde_json::from_value(stored)?;
    let removed = reply.erase_customer(key, id);
    Ok((serde_json::to_value(&reply)?, removed as u64))
}

/// Whether the outbox row left within `timeout` seconds (the relay deletes it once published).
async fn wait_for_publication(pool: &PgPool, row: i64, timeout: u64) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    loop {
        if !outbox::is_pending(pool, row).await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
