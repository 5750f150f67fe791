//! Every metric the service exports, declared in one place under the `customer_ingest_` prefix.
//!
//! Labels carry only dialects, outcomes, actions, SQLSTATEs and reasons: never a tenant's customer
//! data, and nothing unbounded.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

const PREFIX: &str = "customer_ingest";

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Messages finished, by dialect and outcome: completed, partial, failed, rejected, requeued (a
    /// database outage), retried (handed back after an error) or dead_lettered (at its last delivery).
    pub messages: IntCounterVec,
    /// Records finished, by dialect and action.
    pub records: IntCounterVec,
    pub batch_duration: HistogramVec,
    pub chunk_duration: Histogram,
    /// Transient database errors retried, by SQLSTATE (or `connection`).
    pub db_retries: IntCounterVec,
    pub outbox_pending: IntGauge,
    pub outbox_oldest_pending_age: IntGauge,
    pub in_flight: IntGauge,
    pub body_bytes_in_flight: IntGauge,
    pub events_published: IntCounter,
    pub replies_published: IntCounter,
    /// Messages this service dead-lettered, by reason code.
    pub dead_lettered: IntCounterVec,
    /// Deliveries that arrived flagged as redelivered by the broker.
    pub redeliveries: IntCounter,
    /// Connections re-established, by `amqp` or `database`.
    pub reconnects: IntCounterVec,
    /// 1 while Postgres cannot be reached and no message is taken.
    pub database_unavailable: IntGauge,
    /// Messages handed back to the queue as fresh copies because Postgres stayed unreachable.
    pub requeued_for_outage: IntCounter,
    /// Deliveries of messages moved back from the dead-letter queue by `dlq replay`.
    pub replays: IntCounter,
    /// Rows of batch bookkeeping removed past the retention, by table.
    pub retention_removed: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some(PREFIX.to_owned()), None)
            .expect("the metric prefix is a valid name");

        // Batches of 1 to 100,000 records: from a few milliseconds to a few minutes.
        let batch_buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ];
        // One chunk is one transaction of up to a few thousand rows: milliseconds to seconds, more
        // only while retrying.
        let chunk_buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];

        let metrics = Self {
            messages: IntCounterVec::new(
                Opts::new(
                    "messages_total",
                    "Messages finished, by dialect and outcome.",
                ),
                &["dialect", "outcome"],
            )
            .unwrap(),
            records: IntCounterVec::new(
                Opts::new("records_total", "Records finished, by dialect and action."),
                &["dialect", "action"],
            )
            .unwrap(),
            batch_duration: HistogramVec::new(
                HistogramOpts::new(
                    "batch_duration_seconds",
                    "Time from taking a message to acknowledging it.",
                )
                .buckets(batch_buckets),
                &["dialect"],
            )
            .unwrap(),
            chunk_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "chunk_duration_seconds",
                    "Time to apply one chunk in one transaction, retries included.",
                )
                .buckets(chunk_buckets),
            )
            .unwrap(),
            db_retries: IntCounterVec::new(
                Opts::new(
                    "db_retries_total",
                    "Transient database errors retried, by SQLSTATE.",
                ),
                &["sqlstate"],
            )
            .unwrap(),
            outbox_pending: IntGauge::new("outbox_pending", "Events waiting in the outbox.")
                .unwrap(),
            outbox_oldest_pending_age: IntGauge::new(
                "outbox_oldest_pending_age_seconds",
                "Age of the oldest event waiting in the outbox.",
            )
            .unwrap(),
            in_flight: IntGauge::new("messages_in_flight", "Messages being processed.").unwrap(),
            body_bytes_in_flight: IntGauge::new(
                "body_bytes_in_flight",
                "Bytes of the bodies of the messages being processed (see pipeline.max_body_bytes_in_flight).",
            )
            .unwrap(),
            events_published: IntCounter::new(
                "events_published_total",
                "Customer-state events published and confirmed.",
            )
            .unwrap(),
            replies_published: IntCounter::new(
                "replies_published_total",
                "Reply messages published and confirmed.",
            )
            .unwrap(),
            dead_lettered: IntCounterVec::new(
                Opts::new(
                    "dead_lettered_total",
                    "Messages sent to the dead-letter queue, by reason.",
                ),
                &["reason"],
            )
            .unwrap(),
            redeliveries: IntCounter::new(
                "redeliveries_total",
                "Deliveries the broker flagged as redelivered.",
            )
            .unwrap(),
            reconnects: IntCounterVec::new(
                Opts::new("reconnects_total", "Connections re-established, by peer."),
                &["peer"],
            )
            .unwrap(),
            database_unavailable: IntGauge::new(
                "database_unavailable",
                "1 while Postgres cannot be reached.",
            )
            .unwrap(),
            requeued_for_outage: IntCounter::new(
                "requeued_for_outage_total",
                "Messages handed back to the queue because Postgres stayed unreachable.",
            )
            .unwrap(),
            replays: IntCounter::new(
                "replays_total",
                "Deliveries of messages replayed from the dead-letter queue.",
            )
            .unwrap(),
            retention_removed: IntCounterVec::new(
                Opts::new(
                    "retention_removed_total",
                    "Rows of batch bookkeeping (stored replies, fingerprints, chunk results, contact \
                     resolutions) removed past the retention, by table.",
                ),
                &["table"],
            )
            .unwrap(),
            registry,
        };
        metrics.register_all();
        metrics
    }

    /// Every collector of this struct, each registered once by `register_all` and listed by
    /// `families`.
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.messages.clone()),
            Box::new(self.records.clone()),
            Box::new(self.batch_duration.clone()),
            Box::new(self.chunk_duration.clone()),
            Box::new(self.db_retries.clone()),
            Box::new(self.outbox_pending.clone()),
            Box::new(self.outbox_oldest_pending_age.clone()),
            Box::new(self.in_flight.clone()),
            Box::new(self.body_bytes_in_flight.clone()),
            Box::new(self.events_published.clone()),
            Box::new(self.replies_published.clone()),
            Box::new(self.dead_lettered.clone()),
            Box::new(self.redeliveries.clone()),
            Box::new(self.reconnects.clone()),
            Box::new(self.database_unavailable.clone()),
            Box::new(self.requeued_for_outage.clone()),
            Box::new(self.replays.clone()),
            Box::new(self.retention_removed.clone()),
        ];
        collectors
    }

    fn register_all(&self) {
        for collector in self.collectors() {
            self.registry
                .register(collector)
                .expect("each metric is registered once");
        }
    }

    /// Every metric family this service registers, those without a series yet included: a labelled
    /// counter (`dead_lettered_total{reason}`, say) shows in `/metrics` only once it has counted
    /// something, but dashboards and alerts may use it from the start.
    pub fn families(&self) -> Vec<Family> {
        let mut families: Vec<Family> = self
            .collectors()
            .iter()
            .flat_map(|collector| {
                let labels: Vec<Vec<String>> = collector
                    .desc()
                    .iter()
                    .map(|desc| desc.variable_labels.clone())
                    .collect();
                collector
                    .collect()
                    .into_iter()
                    .zip(labels)
                    .map(|(family, labels)| Family {
                        name: format!("{PREFIX}_{}", family.name()),
                        kind: family.get_field_type(),
                        labels,
                    })
            })
            .collect();
        families.sort_by(|a, b| a.name.cmp(&b.name));
        families
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding metrics to memory cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

/// One metric family as `/metrics` shows it.
#[derive(Debug, Clone)]
pub struct Family {
    /// The full name, prefix included.
    pub name: String,
    pub kind: prometheus::proto::MetricType,
    /// The label names a series carries (besides a histogram's `le`).
    pub labels: Vec<String>,
}

impl Family {
    /// The names its samples carry: a histogram's `_bucket`, `_sum` and `_count`, else its name.
    pub fn sample_names(&self) -> Vec<String> {
        use prometheus::proto::MetricType;
        match self.kind {
            MetricType::HISTOGRAM => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|suffix| format!("{}{suffix}", self.name))
                .collect(),
            MetricType::SUMMARY => vec![
                self.name.clone(),
                format!("{}_sum", self.name),
                format!("{}_count", self.name),
            ],
            _ => vec![self.name.clone()],
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_the_common_prefix() {
        let metrics = Metrics::new();
        metrics
            .messages
            .with_label_values(&["upsert-by-customer-id", "completed"])
            .inc();
        let text = metrics.render();
        assert!(text.contains(
            "customer_ingest_messages_total{dialect=\"upsert-by-customer-id\",outcome=\"completed\"} 1"
        ));
        assert!(text.contains("# HELP customer_ingest_outbox_pending"));
    }

    #[test]
    fn families_list_labelled_metrics_that_have_not_counted_yet() {
        let metrics = Metrics::new();
        let families = metrics.families();
        let dead_lettered = families
            .iter()
            .find(|f| f.name == "customer_ingest_dead_lettered_total")
            .expect("dead_lettered_total is listed");
        assert_eq!(dead_lettered.labels, ["reason"]);
        assert!(
            !metrics
                .render()
                .contains("customer_ingest_dead_lettered_total")
        );
        let batch = families
            .iter()
            .find(|f| f.name == "customer_ingest_batch_duration_seconds")
            .expect("batch_duration_seconds is listed");
        assert_eq!(
            batch.sample_names(),
            [
                "customer_ingest_batch_duration_seconds_bucket",
                "customer_ingest_batch_duration_seconds_sum",
                "customer_ingest_batch_duration_seconds_count"
            ]
        );
    }
}
