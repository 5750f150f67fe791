//! Postgres sessions sampled during a phase, by state and wait event.

use std::collections::BTreeMap;
use std::time::Duration;

use customer_ingest::config::Settings;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection as _};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::connect::{BENCH_APP, CALL_PATIENCE, pg_options};
use crate::report::round;
use crate::rig::Rig;

/// How often Postgres sessions are sampled during a phase.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Samples `pg_stat_activity` during a phase: on average, how many sessions of the measured database
/// were running, waiting on something (and on what), or idle inside a transaction.
pub struct Sampler {
    stop: CancellationToken,
    task: AbortOnDropHandle<BTreeMap<String, f64>>,
}

impl Sampler {
    pub fn start_for(rig: &Rig) -> Self {
        let options = (*rig.pool.connect_options()).clone().database("postgres");
        Self::spawn(options, rig.database_name.clone())
    }

    pub fn start(settings: &Settings, database: &str) -> anyhow::Result<Self> {
        let options = pg_options(settings.database.url(), BENCH_APP)?.database("postgres");
        Ok(Self::spawn(options, database.to_owned()))
    }

    fn spawn(options: PgConnectOptions, database: String) -> Self {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            let mut samples = 0u64;
            let Ok(Ok(mut connection)) =
                tokio::time::timeout(CALL_PATIENCE, options.connect()).await
            else {
                return BTreeMap::new();
            };
            loop {
                tokio::select! {
                    () = stopped.cancelled() => break,
                    () = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
                let rows: Result<Vec<(String, i64)>, _> = sqlx::query_as(
                    "SELECT CASE WHEN state = 'idle in transaction' THEN 'idle in transaction'
                                 WHEN wait_event IS NULL THEN 'CPU'
                                 ELSE wait_event_type || ':' || wait_event END,
                            count(*)
                     FROM pg_stat_activity
                     WHERE datname = $1 AND application_name <> $2
                       AND state IN ('active', 'idle in transaction')
                     GROUP BY 1",
                )
                .bind(&database)
                .bind(BENCH_APP)
                .fetch_all(&mut connection)
                .await;
                if let Ok(rows) = rows {
                    samples += 1;
                    for (state, n) in rows {
                        *counts.entry(state).or_default() += n.max(0) as u64;
                    }
                }
            }
            let _ = connection.close().await;
            counts
                .into_iter()
                .map(|(state, n)| (state, round(n as f64 / samples.max(1) as f64, 2)))
                .collect()
        });
        Sampler {
            stop,
            task: AbortOnDropHandle::new(task),
        }
    }

    pub async fn finish(self) -> BTreeMap<String, f64> {
        self.stop.cancel();
        tokio::time::timeout(CALL_PATIENCE, self.task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }
}
