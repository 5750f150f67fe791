//! The targets: each figure computed from the run's phases and ceilings, with what it is
//! held to, and a table of them for a person reading the terminal. A figure whose phase was skipped
//! (or whose ceiling could not be measured) is `null`, never estimated.

use serde::Serialize;

use crate::report::{Phase, round};

/// The performance targets, for 1,000-customer messages on a 2-core machine shared with RabbitMQ and
/// Postgres.
const POSTGRES_INSERT_X_COPY: f64 = 2.5;
const POSTGRES_UPDATE_X_COPY: f64 = 3.0;
const POSTGRES_UNCHANGED_X_COPY: f64 = 1.0;
const WORKER_US_INSERT_UPDATE: f64 = 15.0;
const WORKER_US_UNCHANGED: f64 = 8.0;
const BROKER_PER_CUSTOMER_X_BARE: f64 = 1.2;
const BROKER_US_BATCH: f64 = 5.0;
const IDLE_IN_TRANSACTION: f64 = 0.1;
const INSERT_BATCH_X_COPY: f64 = 0.4;
const INSERT_PER_CUSTOMER_X_COMBINED: f64 = 0.6;
const LARGE_RSS_TO_BODY: f64 = 4.0;
const SCALE_TWO_VS_ONE: f64 = 1.0;
const SMALL_P99_MS: f64 = 10.0;

/// The figures of one throughput phase that targets are computed from.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseFigures {
    pub customers: f64,
    pub seconds: f64,
    pub customers_per_sec: f64,
    pub events: f64,
    /// CPU µs per customer.
    pub postgres_us: Option<f64>,
    pub worker_us: Option<f64>,
    pub broker_us_per_event: Option<f64>,
    /// Sessions `idle in transaction`, on average over the phase.
    pub idle_in_transaction: f64,
}

impl From<&Phase> for PhaseFigures {
    fn from(phase: &Phase) -> Self {
        PhaseFigures {
            customers: phase.customers as f64,
            seconds: phase.seconds,
            customers_per_sec: phase.customers_per_sec,
            events: phase.events as f64,
            postgres_us: phase.cpu_us_per_customer.get("postgres").copied(),
            worker_us: phase.cpu_us_per_customer.get("worker").copied(),
            broker_us_per_event: phase.broker_us_per_event,
            idle_in_transaction: phase
                .postgres_sessions
                .get("idle in transaction")
                .copied()
                .unwrap_or(0.0),
        }
    }
}

/// Everything the targets are computed from.
#[derive(Debug, Default)]
pub struct Inputs {
    pub copy_customers_per_sec: f64,
    pub copy_postgres_us_per_row: Option<f64>,
    pub bare_events_per_sec: Option<f64>,
    pub bare_broker_us_per_event: Option<f64>,
    /// Under the settings' events mode.
    pub insert: PhaseFigures,
    pub update: PhaseFigures,
    pub unchanged: PhaseFigures,
    /// Insert and update per events mode, when that mode ran.
    pub per_customer: Option<[PhaseFigures; 2]>,
    pub batch: Option<[PhaseFigures; 2]>,
    /// Every throughput phase of the run once, for the sessions idle in transaction.
    pub all_phases: Vec<PhaseFigures>,
    pub small_p99_ms: Option<f64>,
    pub large_rss_to_body: Option<f64>,
    pub scale_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Target {
    target: String,
    value: Option<f64>,
    /// `null` when the figure could not be measured (its phase was skipped).
    met: Option<bool>,
}

impl Target {
    fn at_least(value: Option<f64>, min: f64) -> Self {
        Target {
            target: format!(">= {min}"),
            value: value.map(|v| round(v, 3)),
            met: value.map(|v| v >= min),
        }
    }

    fn at_most(value: Option<f64>, max: f64) -> Self {
        Target {
            target: format!("<= {max}"),
            value: value.map(|v| round(v, 3)),
            met: value.map(|v| v <= max),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Targets {
    /// Postgres CPU per customer over the `COPY`'s per row.
    postgres_insert_x_copy: Target,
    postgres_update_x_copy: Target,
    postgres_unchanged_x_copy: Target,
    /// Worker CPU µs per customer over insert and update together.
    worker_us_insert_update: Target,
    worker_us_unchanged: Target,
    /// RabbitMQ CPU per event in per-customer mode (insert and update) over `bare_publish`'s.
    broker_per_event_per_customer_mode_x_bare_publish: Target,
    /// RabbitMQ CPU µs per event in batch mode (insert and update).
    broker_us_per_event_batch_mode: Target,
    /// Average sessions idle in transaction over every throughput phase, weighted by duration.
    idle_in_transaction_avg: Target,
    /// Batch-mode insert customers/s over the `COPY`'s rows/s.
    insert_batch_mode_x_copy: Target,
    /// Per-customer-mode insert customers/s over 1 / (1/copy + 1/bare_publish).
    insert_per_customer_mode_x_combined_ceiling: Target,
    large_rss_to_body: Target,
    scale_two_workers_vs_one: Target,
    small_p99_ms: Target,
    /// Every target that was measured was met.
    all_met: bool,
}

impl Targets {
    pub fn new(inputs: &Inputs) -> Self {
        let copy_pg = inputs.copy_postgres_us_per_row;
        let postgres_x_copy = |phase: &PhaseFigures| ratio(phase.postgres_us, copy_pg);
        let (insert, update, unchanged) = (&inputs.insert, &inputs.update, &inputs.unchanged);
        let broker_per_event = |phases: &[PhaseFigures; 2]| {
            weighted(&phases.map(|p| (p.broker_us_per_event, p.events)))
        };
        let per_customer_broker = inputs.per_customer.as_ref().and_then(broker_per_event);
        let combined = inputs
            .bare_events_per_sec
            .and_then(|bare| combined_ceiling(inputs.copy_customers_per_sec, bare));
        let idle = weighted(
            &inputs
                .all_phases
                .iter()
                .map(|p| (Some(p.idle_in_transaction), p.seconds))
                .collect::<Vec<_>>(),
        );
        let mut targets = Targets {
            postgres_insert_x_copy: Target::at_most(
                postgres_x_copy(insert),
                POSTGRES_INSERT_X_COPY,
            ),
            postgres_update_x_copy: Target::at_most(
                postgres_x_copy(update),
                POSTGRES_UPDATE_X_COPY,
            ),
            postgres_unchanged_x_copy: Target::at_most(
                postgres_x_copy(unchanged),
                POSTGRES_UNCHANGED_X_COPY,
            ),
            worker_us_insert_update: Target::at_most(
                weighted(&[
                    (insert.worker_us, insert.customers),
                    (update.worker_us, update.customers),
                ]),
                WORKER_US_INSERT_UPDATE,
            ),
            worker_us_unchanged: Target::at_most(unchanged.worker_us, WORKER_US_UNCHANGED),
            broker_per_event_per_customer_mode_x_bare_publish: Target::at_most(
                ratio(per_customer_broker, inputs.bare_broker_us_per_event),
                BROKER_PER_CUSTOMER_X_BARE,
            ),
            broker_us_per_event_batch_mode: Target::at_most(
                inputs.batch.as_ref().and_then(broker_per_event),
                BROKER_US_BATCH,
            ),
            idle_in_transaction_avg: Target::at_most(idle, IDLE_IN_TRANSACTION),
            insert_batch_mode_x_copy: Target::at_least(
                ratio(
                    inputs.batch.map(|[insert, _]| insert.customers_per_sec),
                    Some(inputs.copy_customers_per_sec),
                ),
                INSERT_BATCH_X_COPY,
            ),
            insert_per_customer_mode_x_combined_ceiling: Target::at_least(
                ratio(
                    inputs
                        .per_customer
                        .map(|[insert, _]| insert.customers_per_sec),
                    combined,
                ),
                INSERT_PER_CUSTOMER_X_COMBINED,
            ),
            large_rss_to_body: Target::at_most(inputs.large_rss_to_body, LARGE_RSS_TO_BODY),
            scale_two_workers_vs_one: Target::at_least(inputs.scale_ratio, SCALE_TWO_VS_ONE),
            small_p99_ms: Target::at_most(inputs.small_p99_ms, SMALL_P99_MS),
            all_met: false,
        };
        targets.all_met = targets.rows().iter().all(|(_, t)| t.met != Some(false));
        targets
    }

    fn rows(&self) -> [(&'static str, &Target); 13] {
        [
            ("postgres insert × COPY", &self.postgres_insert_x_copy),
            ("postgres update × COPY", &self.postgres_update_x_copy),
            ("postgres unchanged × COPY", &self.postgres_unchanged_x_copy),
            (
                "worker µs/customer insert+update",
                &self.worker_us_insert_update,
            ),
            ("worker µs/customer unchanged", &self.worker_us_unchanged),
            (
                "broker/event per-customer × bare_publish",
                &self.broker_per_event_per_customer_mode_x_bare_publish,
            ),
            (
                "broker µs/event batch mode",
                &self.broker_us_per_event_batch_mode,
            ),
            (
                "sessions idle in transaction",
                &self.idle_in_transaction_avg,
            ),
            ("insert batch mode × COPY", &self.insert_batch_mode_x_copy),
            (
                "insert per-customer × combined ceiling",
                &self.insert_per_customer_mode_x_combined_ceiling,
            ),
            ("large peak RSS × body", &self.large_rss_to_body),
            ("two workers vs one", &self.scale_two_workers_vs_one),
            ("small p99 ms", &self.small_p99_ms),
        ]
    }

    /// The targets as a table for the terminal: figure, value, target, met.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<42} {:>10}  {:<8} {}\n",
            "figure", "value", "target", "met"
        );
        for (name, target) in self.rows() {
            let value = target
                .value
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
            let met = match target.met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "skipped",
            };
            out.push_str(&format!(
                "{name:<42} {value:>10}  {:<8} {met}\n",
                target.target
            ));
        }
        out
    }
}

/// `value / of`, when both are known and `of` is positive.
fn ratio(value: Option<f64>, of: Option<f64>) -> Option<f64> {
    match (value, of) {
        (Some(value), Some(of)) if of > 0.0 => Some(value / of),
        _ => None,
    }
}

/// The rate of two stages that each item must pass through one after the other, on the same
/// machine: 1 / (1/a + 1/b). Both positive, or nothing.
pub fn combined_ceiling(a: f64, b: f64) -> Option<f64> {
    (a > 0.0 && b > 0.0).then(|| 1.0 / (1.0 / a + 1.0 / b))
}

/// The mean of values by weight; unknown if any value is, or if nothing weighs anything.
fn weighted(pairs: &[(Option<f64>, f64)]) -> Option<f64> {
    let total: f64 = pairs.iter().map(|(_, w)| w).sum();
    if total <= 0.0 {
        return None;
    }
    let sum = pairs
        .iter()
        .map(|(v, w)| v.map(|v| v * w))
        .sum::<Option<f64>>()?;
    Some(sum / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(cps: f64, postgres_us: f64, worker_us: f64, broker_us: f64) -> PhaseFigures {
        PhaseFigures {
            customers: 1000.0,
            seconds: 1.0,
            customers_per_sec: cps,
            events: 1000.0,
            postgres_us: Some(postgres_us),
            worker_us: Some(worker_us),
            broker_us_per_event: Some(broker_us),
            idle_in_transaction: 0.0,
        }
    }

    #[test]
    fn the_combined_ceiling_adds_the_time_of_both_stages() {
        assert_eq!(combined_ceiling(100.0, 100.0), Some(50.0));
        assert_eq!(combined_ceiling(30_000.0, 60_000.0), Some(20_000.0));
        assert_eq!(combined_ceiling(0.0, 100.0), None);
    }

    #[test]
    fn weighted_means_are_unknown_when_a_part_is() {
        assert_eq!(
            weighted(&[(Some(10.0), 1.0), (Some(20.0), 3.0)]),
            Some(17.5)
        );
        assert_eq!(weighted(&[(Some(10.0), 1.0), (None, 3.0)]), None);
        assert_eq!(weighted(&[]), None);
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
    }

    #[test]
    fn each_figure_is_set_against_its_ceiling_and_its_target() {
        let mut idle = phase(0.0, 0.0, 0.0, 0.0);
        idle.idle_in_transaction = 0.4;
        idle.seconds = 3.0;
        let inputs = Inputs {
            copy_customers_per_sec: 30_000.0,
            copy_postgres_us_per_row: Some(10.0),
            bare_events_per_sec: Some(60_000.0),
            bare_broker_us_per_event: Some(20.0),
            insert: phase(9_000.0, 20.0, 10.0, 0.0),
            update: phase(0.0, 40.0, 30.0, 0.0),
            unchanged: phase(0.0, 10.0, 8.0, 0.0),
            per_customer: Some([phase(12_000.0, 0.0, 0.0, 22.0), phase(0.0, 0.0, 0.0, 26.0)]),
            batch: Some([phase(12_000.0, 0.0, 0.0, 4.0), phase(0.0, 0.0, 0.0, 6.0)]),
            all_phases: vec![phase(0.0, 0.0, 0.0, 0.0), idle],
            small_p99_ms: None,
            large_rss_to_body: Some(4.5),
            scale_ratio: Some(1.0),
        };
        let targets = Targets::new(&inputs);
        assert_eq!(targets.postgres_insert_x_copy.value, Some(2.0));
        assert_eq!(targets.postgres_insert_x_copy.met, Some(true));
        assert_eq!(targets.postgres_update_x_copy.value, Some(4.0));
        assert_eq!(targets.postgres_update_x_copy.met, Some(false));
        assert_eq!(targets.postgres_unchanged_x_copy.met, Some(true), "at most");
        assert_eq!(targets.worker_us_insert_update.value, Some(20.0));
        assert_eq!(targets.worker_us_unchanged.met, Some(true));
        assert_eq!(
            targets
                .broker_per_event_per_customer_mode_x_bare_publish
                .value,
            Some(1.2)
        );
        assert_eq!(
            targets
                .broker_per_event_per_customer_mode_x_bare_publish
                .met,
            Some(true)
        );
        assert_eq!(targets.broker_us_per_event_batch_mode.value, Some(5.0));
        assert_eq!(targets.idle_in_transaction_avg.value, Some(0.3));
        assert_eq!(targets.insert_batch_mode_x_copy.value, Some(0.4));
        assert_eq!(targets.insert_batch_mode_x_copy.met, Some(true), "at least");
        // 12,000 / (1 / (1/30,000 + 1/60,000)) = 12,000 / 20,000
        assert_eq!(
            targets.insert_per_customer_mode_x_combined_ceiling.value,
            Some(0.6)
        );
        assert_eq!(targets.large_rss_to_body.met, Some(false));
        assert_eq!(targets.scale_two_workers_vs_one.met, Some(true));
        assert_eq!(targets.small_p99_ms.met, None);
        assert!(!targets.all_met);
        assert!(targets.table().contains("small p99 ms"));
    }

    #[test]
    fn a_skipped_phase_gives_null_figures_and_does_not_fail_the_run() {
        let inputs = Inputs {
            copy_customers_per_sec: 30_000.0,
            copy_postgres_us_per_row: Some(10.0),
            insert: phase(9_000.0, 20.0, 10.0, 0.0),
            update: phase(0.0, 25.0, 10.0, 0.0),
            unchanged: phase(0.0, 9.0, 5.0, 0.0),
            ..Inputs::default()
        };
        let targets = Targets::new(&inputs);
        assert_eq!(targets.broker_us_per_event_batch_mode.value, None);
        assert_eq!(
            targets.insert_per_customer_mode_x_combined_ceiling.met,
            None
        );
        assert_eq!(targets.idle_in_transaction_avg.met, None);
        assert!(targets.all_met);
        assert!(targets.table().contains("skipped"));
    }
}
