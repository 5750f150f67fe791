//! A service started per test through `Application::build`, with its own queues and its own
//! database, so tests run in parallel against the real RabbitMQ and Postgres.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use customer_ingest::amqp::headers::ProducerMessage;
use customer_ingest::config::Settings;
use customer_ingest::startup::Application;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How long a test waits for something the service should do within a second or two.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct TestApp {
    pub settings: Settings,
    pub http: SocketAddr,
    pub pool: PgPool,
    pub channel: Channel,
    pub connection: Connection,
    replies: Consumer,
    events: Consumer,
    events_queue: String,
    workers: Vec<InProcessWorker>,
}

/// A worker running inside the test process, started through `Application::build`.
pub struct InProcessWorker {
    pub http: SocketAddr,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcessWorker {
    pub async fn start(settings: &Settings) -> Self {
        // Warnings and errors of the service show in a failing test's output.
        let mut log = settings.log.clone();
        log.level = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
        customer_ingest::telemetry::init(&log);
        let application = Application::build(settings.clone())
            .await
            .expect("the service starts: is Postgres running on 127.0.0.1:5432? (scripts/test.sh starts it)");
        let http = application.http_addr();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(application.run_until_stopped(stop.clone()));
        wait_until_ready(http).await;
        InProcessWorker { http, stop, handle }
    }

    /// Stops the worker as SIGTERM would and waits until it has.
    pub async fn stop(self) {
        self.stop.cancel();
        self.handle
            .await
            .expect("the service task does not panic")
            .expect("the service stops cleanly");
    }
}

/// Settings with names no other test uses.
pub fn test_settings() -> Settings {
    let mut settings = Settings::load(None).expect("default settings load");
    let id = uuid::Uuid::new_v4().simple().to_string();
    let suffix = &id[..12];
    let amqp = &mut settings.amqp;
    amqp.url = amqp_url().into();
    amqp.ingest_queue = format!("test.{suffix}.ingest");
    amqp.dead_letter_exchange = format!("test.{suffix}.dlx");
    amqp.dead_letter_queue = format!("test.{suffix}.dlq");
    amqp.events_exchange = format!("test.{suffix}.events");
    amqp.results_queue = format!("test.{suffix}.results");
    settings.database.url = format!("{}/ingest_test_{suffix}", postgres_base()).into();
    settings.http.addr = "127.0.0.1:0".parse().unwrap();
    settings.shutdown.deadline_secs = 10;
    settings.relay.poll_interval_ms = 200;
    settings
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn postgres_base() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A connection and a confirming channel on which the settings' topology is declared, as the
/// service declares it. A quorum queue the broker could not start in time (`cluster_not_formed`, seen
/// when the machine is overloaded; the service reconnects and declares again) is tried again twice;
/// any other error fails the test.
async fn declare_topology(settings: &Settings) -> (Connection, Channel) {
    for attempt in 1.. {
        let connection =
            customer_ingest::amqp::connection::connect_once(&settings.amqp, "ingest-tests")
                .await
                .expect("RabbitMQ answers on 127.0.0.1:5672 (scripts/test.sh starts it)");
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        match customer_ingest::amqp::topology::declare(&channel, &settings.amqp).await {
            Ok(()) => return (connection, channel),
            Err(error) if attempt < 3 && format!("{error:#}").contains("cluster_not_formed") => {
                eprintln!(
                    "the broker could not start a quorum queue in time; declaring again: {error:#}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => panic!("the topology is declared: {error:?}"),
        }
    }
    unreachable!("the loop returns or panics")
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts the service with `customize` applied to fresh test settings, and waits until it is
    /// ready (consuming). Panics, naming the service, if RabbitMQ or Postgres cannot be reached.
    pub async fn spawn_with(customize: impl FnOnce(&mut Settings)) -> Self {
        let mut app = Self::without_worker(customize).await;
        let worker = InProcessWorker::start(&app.settings).await;
        app.http = worker.http;
        app.workers.push(worker);
        app
    }

    /// Queues, exchanges, database and observers, but no worker: for tests that run the service as
    /// a separate process.
    pub async fn without_worker(customize: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = test_settings();
        customize(&mut settings);
        customer_ingest::store::migrate(&settings.database)
            .await
            .expect("the test database is created: is Postgres running on 127.0.0.1:5432? (scripts/test.sh starts it)");

        // As the service connects (over TLS with its CA when the settings say so).
        let (connection, channel) = declare_topology(&settings).await;
        // Named apart from the service's connections, which some tests kill on purpose.
        let options: sqlx::postgres::PgConnectOptions = settings.database.url().parse().unwrap();
        let pool = PgPool::connect_with(options.application_name("ingest-tests"))
            .await
            .expect("the test database is reachable");

        // Everything the service publishes on the events exchange lands in this test's queue.
        channel
            .exchange_declare(
                settings.amqp.events_exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let events_queue = format!("{}.observer", settings.amqp.events_exchange);
        let events = bind_and_consume(
            &connection,
            &channel,
            &events_queue,
            &settings.amqp.events_exchange,
            "#",
        )
        .await;
        let replies = consume(&connection, &settings.amqp.results_queue).await;

        TestApp {
            settings,
            http: "127.0.0.1:9".parse().unwrap(),
            pool,
            channel,
            connection,
            replies,
            events,
            events_queue,
            workers: Vec::new(),
        }
    }

    /// A consumer of a new exclusive queue bound to the events exchange with `pattern`, as a
    /// downstream system binds one.
    pub async fn bind_events(&self, pattern: &str) -> Consumer {
        let queue = format!(
            "{}.bound.{}",
            self.settings.amqp.events_exchange,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        bind_and_consume(
            &self.connection,
            &self.channel,
            &queue,
            &self.settings.amqp.events_exchange,
            pattern,
        )
        .await
    }

    /// Publishes a body to the ingest queue as a producer would.
    pub async fn publish(&self, message: Message<'_>) {
        self.publish_on(&self.channel, message)
            .await
            .expect("the broker confirms the message");
    }

    /// Publishes a body to the ingest queue on `channel` (a connection of another user, say) and
    /// waits for the broker's confirm; the broker's refusal is returned, not a panic.
    pub async fn publish_on(
        &self,
        channel: &Channel,
        message: Message<'_>,
    ) -> lapin::Result<lapin::Confirmation> {
        let mut properties = ProducerMessage {
            dialect: message.dialect,
            tenant: message.tenant,
            message_id: message.message_id,
            correlation_id: message.correlation_id,
            reply_to: message.reply_to,
        }
        .properties();
        if let Some(user_id) = message.user_id {
            properties = properties.with_user_id(user_id.into());
        }
        channel
            .basic_publish(
                "".into(),
                self.settings.amqp.ingest_queue.as_str().into(),
                BasicPublishOptions::default(),
                message.body,
                properties,
            )
            .await?
            .await
    }

    /// The next reply on the default results queue, with its message properties.
    pub async fn next_reply(&mut self) -> (Value, BasicProperties) {
        next_json(&mut self.replies, "a reply").await
    }

    /// Exactly `n` events: waits for them, then checks that no more arrive.
    pub async fn events(&mut self, n: usize) -> Vec<(Value, BasicProperties)> {
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            events.push(next_json(&mut self.events, "an event").await);
        }
        self.no_more_events().await;
        events
    }

    /// Every event, once the outbox has drained, by event id (CloudEvents `id`), whether it came alone
    /// or in a batch. Events are published at least once: after a fault an event may arrive twice,
    /// but always under the same id with the same body.
    pub async fn distinct_events(&mut self) -> HashMap<String, Value> {
        wait_for("the outbox to drain", || async {
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&self.pool)
                .await
                .unwrap();
            pending == 0
        })
        .await;
        let mut distinct = HashMap::new();
        for event in self.drain_events(Duration::from_secs(1)).await {
            let id = event["id"].as_str().unwrap().to_owned();
            if let Some(seen) = distinct.get(&id) {
                assert_eq!(seen, &event, "a re-published event is the same event");
            }
            distinct.insert(id, event);
        }
        distinct
    }

    /// Waits until the outbox is empty and checks that nothing more was published.
    pub async fn no_more_events(&mut self) {
        wait_for("the outbox to drain", || async {
            let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&self.pool)
                .await
                .unwrap();
            pending == 0
        })
        .await;
        let extra = tokio::time::timeout(Duration::from_millis(300), self.events.next()).await;
        if let Ok(Some(Ok(delivery))) = extra {
            panic!(
                "an unexpected event: {}",
                String::from_utf8_lossy(&delivery.data)
            );
        }
    }

    /// Takes every message from the dead-letter queue.
    pub async fn dead_letters(&self) -> Vec<lapin::message::Delivery> {
        let mut messages = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(
                self.settings.amqp.dead_letter_queue.as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .unwrap()
        {
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            messages.push(message.delivery);
        }
        messages
    }

    pub async fn customer(&self, tenant: &str, key: &str) -> Option<(uuid::Uuid, i64, Value)> {
        sqlx::query_as("SELECT id, version, data FROM customers WHERE tenant = $1 AND key = $2")
            .bind(tenant)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
    }

    pub async fn customer_count(&self, tenant: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM customers WHERE tenant = $1")
            .bind(tenant)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Starts one more in-process worker on the same queues and database.
    pub async fn add_worker(&mut self) {
        let worker = InProcessWorker::start(&self.settings).await;
        self.workers.push(worker);
    }

    /// The next reply, if one arrives within `wait`.
    pub async fn reply_within(&mut self, wait: Duration) -> Option<Value> {
        match tokio::time::timeout(wait, self.replies.next()).await {
            Ok(Some(Ok(delivery))) => Some(serde_json::from_slice(&delivery.data).unwrap()),
            _ => None,
        }
    }

    /// Every event that arrives until none has for `quiet`, in the order they arrived: the events
    /// of a batch message (a JSON array) one by one.
    pub async fn drain_events(&mut self, quiet: Duration) -> Vec<Value> {
        let mut events = Vec::new();
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(quiet, self.events.next()).await {
            match serde_json::from_slice(&delivery.data).unwrap() {
                Value::Array(batch) => events.extend(batch),
                event => events.push(event),
            }
        }
        events
    }

    /// Messages waiting in a queue.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Stops the workers as SIGTERM would, then removes the test's queues and database.
    pub async fn stop(mut self) {
        for worker in self.workers.drain(..) {
            worker.stop().await;
        }
        // A fresh connection: the test's own may have died with a broker restart.
        let _ = self.connection.close(200, "test done".into()).await;
        if let Ok(connection) =
            Connection::connect(&amqp_url(), ConnectionProperties::default()).await
            && let Ok(channel) = connection.create_channel().await
        {
            let amqp = &self.settings.amqp;
            let durable_observers = [
                format!("{}.durable-observer", amqp.events_exchange),
                format!("{}.durable", amqp.results_queue),
            ];
            for queue in [
                &amqp.ingest_queue,
                &amqp.dead_letter_queue,
                &amqp.results_queue,
                &self.events_queue,
                &durable_observers[0],
                &durable_observers[1],
            ] {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for exchange in [&amqp.events_exchange, &amqp.dead_letter_exchange] {
                let _ = channel
                    .exchange_delete(exchange.as_str().into(), Default::default())
                    .await;
            }
            let _ = connection.close(200, "cleaned up".into()).await;
        }
        self.pool.close().await;
        drop_database(&self.settings).await;
    }
}

pub async fn drop_database(settings: &Settings) {
    let url = settings.database.url();
    let name = url.rsplit('/').next().unwrap().to_owned();
    if let Ok(admin) = PgPool::connect(&format!("{}/postgres", postgres_base())).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}

#[derive(Default, Clone, Copy)]
pub struct Message<'a> {
    pub body: &'a [u8],
    pub dialect: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub message_id: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub reply_to: Option<&'a str>,
    /// The AMQP `user_id` property; the broker refuses it unless it is the connection's user.
    pub user_id: Option<&'a str>,
}

impl<'a> Message<'a> {
    /// An `upsert-by-customer-id` message for `tenant`.
    pub fn upsert(body: &'a [u8], tenant: &'a str, message_id: &'a str) -> Self {
        Message {
            body,
            dialect: Some("upsert-by-customer-id"),
            tenant: Some(tenant),
            message_id: Some(message_id),
            correlation_id: Some(message_id),
            reply_to: None,
            user_id: None,
        }
    }
}

/// Declares the exclusive queue `queue`, binds it to `exchange` with `pattern`, and consumes it.
async fn bind_and_consume(
    connection: &Connection,
    channel: &Channel,
    queue: &str,
    exchange: &str,
    pattern: &str,
) -> Consumer {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    consume(connection, queue).await
}

pub async fn consume(connection: &Connection, queue: &str) -> Consumer {
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
}

pub async fn next_json(consumer: &mut Consumer, what: &str) -> (Value, BasicProperties) {
    let delivery = tokio::time::timeout(PATIENCE, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("waited {PATIENCE:?} for {what}"))
        .expect("the consumer is open")
        .expect("the delivery is readable");
    let json = serde_json::from_slice(&delivery.data).expect("the message is JSON");
    (json, delivery.properties)
}

async fn wait_until_ready(http: SocketAddr) {
    wait_for("/readyz to answer 200", || async {
        reqwest::get(format!("http://{http}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
}

pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {PATIENCE:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` customers in the `upsert-by-customer-id` dialect, keys `{prefix}-0`.. with every field set.
pub fn customers_body(prefix: &str, n: usize, name: &str) -> Vec<u8> {
    let records: Vec<Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "customerID": format!("{prefix}-{i}"),
                "customerName": format!("{name} {i}"),
                "email": format!("c{i}@example.com"),
                "phone": "555-0100",
                "priceZone": i % 5,
                "test": false,
                "placeholder": false,
                "street1": "1 Main St",
                "city": "Springfield",
                "state": "IL",
                "zipCode": "62701",
                "warehouseID": "W1",
                "salesReps": ["R1"],
                "orderingGroups": [{"orderingGroupID": "G1", "orderingSubGroups": [
                    {"orderingGroupID": "G1a", "customers": [format!("{prefix}-{i}")]}]}],
                "extra1": "x"
            })
        })
        .collect();
    serde_json::to_vec(&records).unwrap()
}

/// The service as its own process (the binary built for these tests), configured for `settings`.
/// `failpoints` switches failure points on (see src/failpoints.rs), e.g. `chunk-after-commit=return`.
pub fn spawn_worker_process(
    settings: &Settings,
    failpoints: Option<&str>,
) -> tokio::process::Child {
    let mut settings = settings.clone();
    // Any free port, since several workers may run at once; only warnings and errors are logged.
    settings.http.addr = "127.0.0.1:0".parse().unwrap();
    settings.log.level = "warn".into();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_customer-ingest"));
    command
        .arg("serve")
        .envs(settings.to_env())
        .kill_on_drop(true);
    match failpoints {
        Some(failpoints) => command.env("FAILPOINTS", failpoints),
        None => command.env_remove("FAILPOINTS"),
    };
    command.spawn().expect("the service binary starts")
}

/// Sends SIGTERM to a worker process and waits for it to exit.
pub async fn terminate(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    signal(child, "TERM");
    tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the worker exits after SIGTERM")
        .unwrap()
}

/// Sends a signal (`TERM`, `KILL`...) to a worker process.
pub fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("the worker is running");
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Stops a test that needs failure points when they are not compiled in, rather than letting it pass
/// without them.
pub fn failpoints_compiled_in() {
    if !cfg!(feature = "failpoints") {
        panic!(
            "these tests need failure points: run them with --features failpoints (scripts/test.sh does)"
        );
    }
}
