use std::collections::HashSet;

use serde_json::{Value, json};

use crate::helpers::{Message, TestApp, customers_body};

fn records(reply: &Value) -> &Vec<Value> {
    reply["records"].as_array().expect("records is an array")
}

#[tokio::test]
async fn a_10000_customer_message_creates_every_customer_with_an_event_each_and_one_reply() {
    let mut app = TestApp::spawn().await;
    let body = customers_body("K", 10_000, "Customer");
    app.publish(Message::upsert(&body, "acme", "batch-1")).await;

    let (reply, properties) = app.next_reply().await;
    assert_eq!(reply["status"], "completed");
    assert_eq!(reply["batch_id"], "batch-1");
    assert_eq!(reply["tenant"], "acme");
    assert_eq!(reply["dialect"], "upsert-by-customer-id");
    assert_eq!(
        reply["counts"],
        json!({"total": 10000, "created": 10000, "updated": 0, "unchanged": 0, "failed": 0})
    );
    assert_eq!(
        properties.correlation_id().as_ref().map(|c| c.as_str()),
        Some("batch-1")
    );
    assert_eq!(
        properties.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    let records = records(&reply);
    assert_eq!(records.len(), 10_000);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record["index"], i);
        assert_eq!(record["key"], format!("K-{i}"));
        assert_eq!(record["action"], "created");
        assert_eq!(record["version"], 1);
        assert!(record["id"].is_string());
    }
    let successful = reply["response"]["successful"].as_array().unwrap();
    assert_eq!(successful.len(), 10_000);
    assert_eq!(successful[0]["customerID"], "K-0");
    assert_eq!(successful[0]["id"], records[0]["id"]);
    assert_eq!(reply["response"]["failed"], json!([]));

    assert_eq!(app.customer_count("acme").await, 10_000);
    let (id, version, data) = app.customer("acme", "K-7").await.unwrap();
    assert_eq!(version, 1);
    assert_eq!(data["name"], "Customer 7");
    assert_eq!(data["address"]["city"], "Springfield");

    let events = app.events(10_000).await;
    let mut customers = HashSet::new();
    for (event, properties) in &events {
        assert_eq!(event["type"], "customer.created");
        assert_eq!(event["tenant"], "acme");
        assert_eq!(event["customerversion"], 1);
        assert_eq!(event["batchid"], "batch-1");
        assert_eq!(event["data"]["version"], 1);
        assert_eq!(
            properties.message_id().as_ref().unwrap().as_str(),
            event["id"].as_str().unwrap()
        );
        customers.insert(event["subject"].as_str().unwrap().to_owned());
    }
    assert_eq!(customers.len(), 10_000);
    let event_of_7 = events
        .iter()
        .find(|(e, _)| e["subject"] == json!(id))
        .expect("an event for K-7");
    assert_eq!(event_of_7.0["data"]["key"], "K-7");
    assert_eq!(event_of_7.0["data"]["name"], "Customer 7");
    app.stop().await;
}

#[tokio::test]
async fn the_same_customers_under_a_new_message_id_are_all_unchanged_and_publish_nothing() {
    let mut app = TestApp::spawn().await;
    let body = customers_body("K", 300, "Customer");
    app.publish(Message::upsert(&body, "acme", "first")).await;
    let (first, _) = app.next_reply().await;
    app.events(300).await;

    app.publish(Message::upsert(&body, "acme", "second")).await;
    let (second, _) = app.next_reply().await;
    assert_eq!(second["status"], "completed");
    assert_eq!(second["counts"]["unchanged"], 300);
    for (a, b) in records(&first).iter().zip(records(&second)) {
        assert_eq!(b["action"], "unchanged");
        assert_eq!(a["id"], b["id"], "the id of a key never changes");
        assert_eq!(b["version"], 1);
    }
    app.no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn one_changed_field_is_an_update_to_version_2_with_one_event() {
    let mut app = TestApp::spawn().await;
    let body = customers_body("K", 50, "Customer");
    app.publish(Message::upsert(&body, "acme", "first")).await;
    app.next_reply().await;
    app.events(50).await;

    let mut changed: Vec<Value> = serde_json::from_slice(&body).unwrap();
    changed[10]["customerName"] = json!("Renamed");
    let changed = serde_json::to_vec(&changed).unwrap();
    app.publish(Message::upsert(&changed, "acme", "second"))
        .await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["counts"]["updated"], 1);
    assert_eq!(reply["counts"]["unchanged"], 49);
    assert_eq!(records(&reply)[10]["action"], "updated");
    assert_eq!(records(&reply)[10]["version"], 2);

    let events = app.events(1).await;
    assert_eq!(events[0].0["type"], "customer.updated");
    assert_eq!(events[0].0["customerversion"], 2);
    assert_eq!(events[0].0["data"]["name"], "Renamed");
    let (_, version, data) = app.customer("acme", "K-10").await.unwrap();
    assert_eq!((version, data["name"].as_str()), (2, Some("Renamed")));
    app.stop().await;
}

#[tokio::test]
async fn one_bad_record_among_good_ones_fails_alone_and_the_rest_commits() {
    let mut app = TestApp::spawn().await;
    let body = br#"[
        {"customerID": "A", "customerName": "Good"},
        {"customerID": "B", "email": "not-an-email"},
        {"customerName": "no key"},
        {"customerID": "D", "priceZone": "high"},
        {"customerID": "E", "customerName": "Also good"}
    ]"#;
    app.publish(Message::upsert(body, "acme", "mixed")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "partial");
    assert_eq!(
        reply["counts"],
        json!({"total": 5, "created": 2, "updated": 0, "unchanged": 0, "failed": 3})
    );
    let records = records(&reply);
    assert_eq!(records[1]["action"], "failed");
    assert_eq!(records[1]["key"], "B");
    assert_eq!(records[1]["errors"][0]["field"], "email");
    assert_eq!(records[1]["errors"][0]["code"], "invalid_email");
    assert_eq!(records[2]["errors"][0]["field"], "customerID");
    assert_eq!(records[2]["errors"][0]["code"], "required");
    assert_eq!(records[3]["errors"][0]["field"], "priceZone");
    let failed = reply["response"]["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 3);
    assert_eq!(failed[0]["customerID"], "B");
    assert!(failed[0]["messages"][0].as_str().unwrap().contains("email"));

    assert_eq!(app.customer_count("acme").await, 2);
    assert!(app.customer("acme", "B").await.is_none());
    app.events(2).await;
    app.stop().await;
}

#[tokio::test]
async fn a_batch_where_every_record_fails_is_failed() {
    let mut app = TestApp::spawn().await;
    app.publish(Message::upsert(
        br#"[{"customerName": "no key"}]"#,
        "acme",
        "m",
    ))
    .await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "failed");
    assert_eq!(app.customer_count("acme").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_garbage_body_lands_in_the_dead_letter_queue_with_a_rejected_reply() {
    let mut app = TestApp::spawn().await;
    app.publish(Message::upsert(b"this is not json", "acme", "garbage"))
        .await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "rejected");
    assert_eq!(reply["error"]["code"], "invalid_json");
    assert_eq!(reply["records"], json!([]));
    assert_eq!(reply["counts"]["total"], 0);

    let dead = app.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].data, b"this is not json");
    let headers = dead[0].properties.headers();
    assert_eq!(
        customer_ingest::amqp::headers::header_str(headers, "error-code"),
        Some("invalid_json")
    );
    assert_eq!(
        dead[0].properties.message_id().as_ref().unwrap().as_str(),
        "garbage"
    );
    assert!(app.metrics().await.contains(
        "customer_ingest_messages_total{dialect=\"upsert-by-customer-id\",outcome=\"rejected\"} 1"
    ));
    app.stop().await;
}

#[tokio::test]
async fn messages_without_a_tenant_or_with_an_unknown_type_are_rejected() {
    let mut app = TestApp::spawn().await;
    let body = customers_body("K", 1, "C");
    app.publish(Message {
        tenant: None,
        ..Message::upsert(&body, "acme", "no-tenant")
    })
    .await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["error"]["code"], "missing_tenant");

    app.publish(Message {
        dialect: Some("upsert-by-fax"),
        ..Message::upsert(&body, "acme", "bad-type")
    })
    .await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "rejected");
    assert_eq!(reply["error"]["code"], "unknown_type");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upsert-by-customer-id")
    );
    assert_eq!(app.dead_letters().await.len(), 2);
    assert_eq!(app.customer_count("acme").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_redelivered_completed_batch_is_not_applied_twice_and_gets_the_same_reply() {
    let mut app = TestApp::spawn().await;
    let body = customers_body("K", 20, "Customer");
    app.publish(Message::upsert(&body, "acme", "once")).await;
    let (first, _) = app.next_reply().await;
    app.events(20).await;

    // The same message again: a producer's retry, or the broker redelivering after a lost ack.
    app.publish(Message {
        correlation_id: Some("retry"),
        ..Message::upsert(&body, "acme", "once")
    })
    .await;
    let (second, properties) = app.next_reply().await;
    assert_eq!(
        properties.correlation_id().as_ref().unwrap().as_str(),
        "retry"
    );
    assert_eq!(second["correlation_id"], "retry");
    let strip = |mut reply: Value| {
        reply.as_object_mut().unwrap().remove("correlation_id");
        reply
    };
    assert_eq!(
        strip(first),
        strip(second),
        "the stored reply is sent again"
    );
    app.no_more_events().await;
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM customers")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(versions.iter().all(|v| *v == 1));
    app.stop().await;
}

#[tokio::test]
async fn a_message_without_message_id_is_identified_by_the_hash_of_its_body() {
    let mut app = TestApp::spawn().await;
    let body = customers_body("K", 3, "C");
    let message = Message {
        message_id: None,
        ..Message::upsert(&body, "acme", "")
    };
    app.publish(message).await;
    let (reply, _) = app.next_reply().await;
    let batch_id = reply["batch_id"].as_str().unwrap();
    assert_eq!(batch_id.len(), 64);
    assert!(batch_id.chars().all(|c| c.is_ascii_hexdigit()));
    app.stop().await;
}

#[tokio::test]
async fn duplicate_keys_collapse_to_the_last_occurrence_and_each_gets_a_result() {
    let mut app = TestApp::spawn().await;
    let body = br#"[
        {"customerID": "A", "customerName": "first"},
        {"customerID": "B", "customerName": "other"},
        {"customerID": "A", "customerName": "last"}
    ]"#;
    app.publish(Message::upsert(body, "acme", "dups")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["counts"]["total"], 3);
    let records = records(&reply);
    assert_eq!(records[0]["id"], records[2]["id"]);
    assert_eq!(records[0]["action"], "created");
    assert_eq!(records[2]["action"], "created");
    let (_, version, data) = app.customer("acme", "A").await.unwrap();
    assert_eq!((version, data["name"].as_str()), (1, Some("last")));
    app.events(2).await;
    app.stop().await;
}

#[tokio::test]
async fn tenants_never_see_each_others_customers() {
    let mut app = TestApp::spawn().await;
    let body = customers_body("K", 5, "C");
    app.publish(Message::upsert(&body, "acme", "m")).await;
    let (a, _) = app.next_reply().await;
    app.publish(Message::upsert(&body, "globex", "m")).await;
    let (b, _) = app.next_reply().await;
    assert_eq!(a["counts"]["created"], 5);
    assert_eq!(
        b["counts"]["created"], 5,
        "the same batch id in another tenant is another batch"
    );
    assert_ne!(records(&a)[0]["id"], records(&b)[0]["id"]);
    assert_eq!(app.customer_count("acme").await, 5);
    assert_eq!(app.customer_count("globex").await, 5);
    app.events(10).await;
    app.stop().await;
}

#[tokio::test]
async fn the_reply_goes_to_reply_to_with_the_correlation_id() {
    let app = TestApp::spawn().await;
    let queue = format!("{}.mine", app.settings.amqp.results_queue);
    app.channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let conn = lapin::Connection::connect(
        &crate::helpers::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let body = customers_body("K", 2, "C");
    app.publish(Message {
        reply_to: Some(&queue),
        correlation_id: Some("corr-42"),
        ..Message::upsert(&body, "acme", "m")
    })
    .await;
    // An exclusive queue belongs to its connection: read it through the test app's channel.
    let message = loop {
        if let Some(message) = app
            .channel
            .basic_get(queue.as_str().into(), Default::default())
            .await
            .unwrap()
        {
            break message;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let reply: Value = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(reply["correlation_id"], "corr-42");
    assert_eq!(
        message
            .delivery
            .properties
            .correlation_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "corr-42"
    );
    drop(conn);
    app.stop().await;
}

#[tokio::test]
async fn a_reply_too_large_for_one_message_comes_in_numbered_parts_covering_every_record() {
    let mut app = TestApp::spawn_with(|s| s.pipeline.reply_records_per_message = 40).await;
    let body = customers_body("K", 100, "C");
    app.publish(Message::upsert(&body, "acme", "big")).await;
    let mut indexes = Vec::new();
    for expected in 1..=3 {
        let (part, properties) = app.next_reply().await;
        assert_eq!(part["part"], json!({"index": expected, "count": 3}));
        assert_eq!(part["counts"]["total"], 100);
        let headers = properties.headers();
        assert_eq!(
            customer_ingest::amqp::headers::header_i64(headers, "part"),
            Some(expected)
        );
        assert_eq!(
            customer_ingest::amqp::headers::header_i64(headers, "parts"),
            Some(3)
        );
        let n = records(&part).len();
        assert_eq!(part["response"]["successful"].as_array().unwrap().len(), n);
        indexes.extend(records(&part).iter().map(|r| r["index"].as_u64().unwrap()));
    }
    assert_eq!(indexes, (0..100).collect::<Vec<u64>>());
    app.stop().await;
}

#[tokio::test]
async fn a_key_repeated_across_windows_is_stored_once_and_the_stored_reply_is_the_one_sent() {
    // Windows and chunks of two records: "A" recurs three windows on, "B" last occurs invalid, so
    // its earlier valid occurrence is the one stored.
    let mut app = TestApp::spawn_with(|s| s.pipeline.chunk_size = 2).await;
    let body = br#"[
        {"customerID": "A", "customerName": "first"},
        {"customerID": "B", "customerName": "kept"},
        {"customerID": "C", "customerName": "c"},
        {"customerID": "D", "customerName": "d"},
        {"customerID": "B", "email": "not-an-email"},
        {"customerID": "E", "customerName": "e"},
        {"customerID": "A", "customerName": "last"}
    ]"#;
    app.publish(Message::upsert(body, "acme", "windows")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(
        reply["counts"],
        json!({"total": 7, "created": 6, "updated": 0, "unchanged": 0, "failed": 1})
    );
    let records = records(&reply);
    let indexes: Vec<u64> = records
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, (0..7).collect::<Vec<u64>>());
    assert_eq!(records[0]["id"], records[6]["id"]);
    assert_eq!(records[0]["key"], "A");
    assert_eq!(records[1]["action"], "created");
    assert_eq!(records[4]["action"], "failed");
    let (_, version, data) = app.customer("acme", "A").await.unwrap();
    assert_eq!((version, data["name"].as_str()), (1, Some("last")));
    let (_, version, data) = app.customer("acme", "B").await.unwrap();
    assert_eq!((version, data["name"].as_str()), (1, Some("kept")));
    app.events(5).await;

    // The same message again is answered from the stored reply: the very reply sent first.
    app.publish(Message::upsert(body, "acme", "windows")).await;
    let (again, _) = app.next_reply().await;
    let without_correlation = |mut reply: serde_json::Value| {
        reply["correlation_id"] = serde_json::Value::Null;
        reply
    };
    assert_eq!(without_correlation(again), without_correlation(reply));
    app.stop().await;
}

#[tokio::test]
async fn small_chunks_give_the_same_result_as_one_chunk() {
    let mut app = TestApp::spawn_with(|s| s.pipeline.chunk_size = 7).await;
    let body = customers_body("K", 100, "C");
    app.publish(Message::upsert(&body, "acme", "chunky")).await;
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["counts"]["created"], 100);
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM batch_chunks")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(chunks, 0, "a completed batch keeps only its reply");
    app.events(100).await;
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_messages_records_and_events() {
    let mut app = TestApp::spawn().await;
    let body = customers_body("K", 4, "C");
    app.publish(Message::upsert(&body, "acme", "m")).await;
    app.next_reply().await;
    app.events(4).await;
    let text = app.metrics().await;
    for line in [
        "customer_ingest_messages_total{dialect=\"upsert-by-customer-id\",outcome=\"completed\"} 1",
        "customer_ingest_records_total{action=\"created\",dialect=\"upsert-by-customer-id\"} 4",
        "customer_ingest_events_published_total 4",
        "customer_ingest_replies_published_total 1",
        "customer_ingest_messages_in_flight 0",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    assert!(text.contains("customer_ingest_batch_duration_seconds_bucket"));
    assert!(text.contains("customer_ingest_chunk_duration_seconds_bucket"));
    let health = reqwest::get(format!("http://{}/healthz", app.http))
        .await
        .unwrap();
    assert!(health.status().is_success());
    app.stop().await;
}
