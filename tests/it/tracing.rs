//! Trace context: a producer's W3C `traceparent` continues into the worker's span, which is exported
//! over OTLP/HTTP when `telemetry.otlp_endpoint` is set, and goes out again on the reply.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use customer_ingest::amqp::headers::{self, ProducerMessage, long_string};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

use crate::helpers::{TestApp, customers_body, spawn_worker_process, terminate, wait_for};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN_ID: &str = "00f067aa0ba902b7";

fn producer_traceparent() -> String {
    format!("00-{TRACE_ID}-{PRODUCER_SPAN_ID}-01")
}

/// A collector in miniature: every span posted to `/v1/traces` as OTLP protobuf.
async fn start_receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    async fn receive(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) {
        let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
        let received = request
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        spans.lock().unwrap().extend(received);
    }
    let router = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}"), spans)
}

/// Publishes an `upsert-by-customer-id` batch carrying `trace` headers.
async fn publish_traced(app: &TestApp, body: &[u8], message_id: &str, trace: &[(&str, &str)]) {
    let properties = ProducerMessage {
        dialect: Some("upsert-by-customer-id"),
        tenant: Some("acme"),
        message_id: Some(message_id),
        correlation_id: Some(message_id),
        reply_to: None,
    }
    .properties();
    let mut table = properties.headers().clone().unwrap_or_default();
    for (name, value) in trace {
        table.insert((*name).into(), long_string(value));
    }
    app.channel
        .basic_publish(
            "".into(),
            app.settings.amqp.ingest_queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            properties.with_headers(table),
        )
        .await
        .unwrap()
        .await
        .expect("the broker confirms the message");
}

fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    headers::header_str(properties.headers(), name).map(str::to_owned)
}

fn attribute(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
}

fn text(value: &str) -> Option<AnyValue> {
    Some(AnyValue::StringValue(value.to_owned()))
}

#[tokio::test]
async fn a_producers_trace_continues_into_the_exported_span_of_its_batch_and_onto_the_reply() {
    let (endpoint, spans) = start_receiver().await;
    let mut app = TestApp::without_worker(|s| s.telemetry.otlp_endpoint = endpoint).await;
    let mut worker = spawn_worker_process(&app.settings, None);

    let body = customers_body("T", 3, "Traced");
    let tracestate = "vendor=opaque";
    publish_traced(
        &app,
        &body,
        "traced-1",
        &[
            (headers::TRACEPARENT, &producer_traceparent()),
            (headers::TRACESTATE, tracestate),
        ],
    )
    .await;
    let (reply, properties) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");

    // The reply continues the producer's trace, from the worker's own span.
    let traceparent = header(&properties, headers::TRACEPARENT).expect("the reply's traceparent");
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!((fields[0], fields[1]), ("00", TRACE_ID), "{traceparent}");
    let worker_span_id = fields[2].to_owned();
    assert_ne!(worker_span_id, PRODUCER_SPAN_ID, "{traceparent}");
    assert_eq!(
        header(&properties, headers::TRACESTATE).as_deref(),
        Some(tracestate)
    );

    // Stopping the worker flushes its spans to the collector.
    assert!(terminate(&mut worker).await.success());
    wait_for("the batch's span at the collector", || {
        let spans = spans.clone();
        async move {
            spans
                .lock()
                .unwrap()
                .iter()
                .any(|s| hex::encode(&s.trace_id) == TRACE_ID)
        }
    })
    .await;
    let spans = spans.lock().unwrap().clone();
    let batch: Vec<&Span> = spans
        .iter()
        .filter(|s| hex::encode(&s.trace_id) == TRACE_ID && s.kind == SpanKind::Consumer as i32)
        .collect();
    assert_eq!(batch.len(), 1, "{spans:#?}");
    let span = batch[0];
    let queue = app.settings.amqp.ingest_queue.clone();
    assert_eq!(span.name, format!("process {queue}"));
    assert_eq!(hex::encode(&span.parent_span_id), PRODUCER_SPAN_ID);
    assert_eq!(hex::encode(&span.span_id), worker_span_id);
    assert_eq!(span.trace_state, tracestate);
    assert!(
        span.links
            .iter()
            .any(|l| hex::encode(&l.span_id) == PRODUCER_SPAN_ID),
        "the process span links the message's creation context: {span:#?}"
    );
    assert_eq!(attribute(span, "messaging.system"), text("rabbitmq"));
    assert_eq!(attribute(span, "messaging.operation.name"), text("process"));
    assert_eq!(attribute(span, "messaging.operation.type"), text("process"));
    assert_eq!(attribute(span, "messaging.destination.name"), text(&queue));
    assert_eq!(attribute(span, "messaging.message.id"), text("traced-1"));
    assert_eq!(
        attribute(span, "messaging.batch.message_count"),
        Some(AnyValue::IntValue(3))
    );
    app.stop().await;
}

#[tokio::test]
async fn without_an_exporter_the_reply_still_carries_the_producers_trace_and_a_malformed_one_is_ignored()
 {
    let mut app = TestApp::spawn().await;
    let body = customers_body("U", 1, "Untraced");
    publish_traced(
        &app,
        &body,
        "traced-2",
        &[(headers::TRACEPARENT, &producer_traceparent())],
    )
    .await;
    let (reply, properties) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(
        header(&properties, headers::TRACEPARENT),
        Some(producer_traceparent())
    );
    assert_eq!(header(&properties, headers::TRACESTATE), None);

    // An all-zero trace id is invalid: the batch is processed as if it carried none.
    let malformed = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    publish_traced(
        &app,
        &body,
        "traced-3",
        &[
            (headers::TRACEPARENT, malformed),
            (headers::TRACESTATE, "a=b"),
        ],
    )
    .await;
    let (reply, properties) = app.next_reply().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(header(&properties, headers::TRACEPARENT), None);
    assert_eq!(header(&properties, headers::TRACESTATE), None);
    app.stop().await;
}

#[tokio::test]
async fn events_carry_the_trace_of_the_batch_that_made_them_in_both_modes() {
    for mode in [
        customer_ingest::events::EventsMode::PerCustomer,
        customer_ingest::events::EventsMode::Batch,
    ] {
        let mut app = TestApp::spawn_with(|s| s.events.mode = mode).await;
        let body = customers_body("E", 2, "Evented");
        publish_traced(
            &app,
            &body,
            "traced-events",
            &[
                (headers::TRACEPARENT, &producer_traceparent()),
                (headers::TRACESTATE, "vendor=1"),
            ],
        )
        .await;
        assert_eq!(app.next_reply().await.0["status"], "completed");
        let messages = match mode {
            customer_ingest::events::EventsMode::PerCustomer => app.events(2).await,
            customer_ingest::events::EventsMode::Batch => app.events(1).await,
        };
        for (body, properties) in &messages {
            assert_eq!(
                header(properties, headers::TRACEPARENT),
                Some(producer_traceparent()),
                "{mode:?}"
            );
            assert_eq!(
                header(properties, headers::TRACESTATE).as_deref(),
                Some("vendor=1")
            );
            let events = body
                .as_array()
                .cloned()
                .unwrap_or_else(|| vec![body.clone()]);
            for event in events {
                assert_eq!(event["traceparent"], producer_traceparent().as_str());
                assert_eq!(event["tracestate"], "vendor=1");
            }
        }

        // A batch without trace context makes events without it.
        let body = customers_body("F", 1, "Untraced");
        publish_traced(&app, &body, "untraced-events", &[]).await;
        app.next_reply().await;
        let (event, properties) = app.events(1).await.remove(0);
        assert_eq!(header(&properties, headers::TRACEPARENT), None);
        let event = event
            .as_array()
            .map_or(event.clone(), |events| events[0].clone());
        assert!(event.get("traceparent").is_none(), "{event}");
        app.stop().await;
    }
}
