//! `match-by-contact` against the real RabbitMQ and Postgres: records matched by email, customer code
//! or cell phone, updated when found and added otherwise.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;

use serde_json::{Value, json};

use crate::helpers::{Message, PATIENCE, TestApp, spawn_worker_process, terminate};

const TENANT: &str = "acme";

/// Publishes a `match-by-contact` body and returns its reply.
async fn send(app: &mut TestApp, body: &Value, message_id: &str) -> Value {
    let bytes = serde_json::to_vec(body).unwrap();
    app.publish(Message {
        dialect: Some("match-by-contact"),
        ..Message::upsert(&bytes, TENANT, message_id)
    })
    .await;
    app.next_reply().await.0
}

fn rows(reply: &Value) -> &Vec<Value> {
    reply["response"]
        .as_array()
        .expect("the response is a list of rows")
}

fn records(reply: &Value) -> &Vec<Value> {
    reply["records"].as_array().expect("records is an array")
}

fn statuses(reply: &Value) -> Vec<&str> {
    rows(reply)
        .iter()
        .map(|row| row["Status"].as_str().unwrap())
        .collect()
}

/// The stored document of the customer with this id.
async fn stored(app: &TestApp, id: &Value) -> Value {
    sqlx::query_scalar("SELECT data FROM customers WHERE id = $1::uuid")
        .bind(id.as_str().expect("an id"))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// The page's own sample, its placeholders replaced by values that resolve.
fn seed_sample() -> Value {
    let customer = json!({
        "LocationId": 1,
        "CustomerId": 2,
        "FirstName": "Ada",
        "LastName": "Lovelace",
        "Email": "ada.lovelace@example.com",
        "CellPhone": "+1 (312) 555-0142",
        "WorkPhone": "312-555-0199",
        "Dob": "2024-10-18T01:16:57.8984692-04:00",
        "Gender": 1,
        "CustomerCode": "CUST-0008",
        "Address": "1 Main St",
        "Address2": "Suite 10",
        "City": "Springfield",
        "Zip": "62701",
        "Country": "United States",
        "State": "Illinois",
        "NoteType": "General",
        "Notes": "Prefers mornings",
        "Balance": 1.0,
        "RewardPoints": 1.0,
        "Image": "https://example.com/ada.png",
        "NopExternalId": "nop-18",
        "LeadSourceId": 1
    });
    json!({
        "RequireCountry": true,
        "RequireState": true,
        "RequireDob": true,
        "RequireNote": true,
        "RequireGender": true,
        "IgnoreSharedCustomers": true,
        "Customers": [customer.clone(), customer]
    })
}

#[tokio::test]
async fn the_seed_sample_body_is_applied_and_answered_with_one_row_per_customer() {
    let mut app = TestApp::spawn().await;
    let reply = send(&mut app, &seed_sample(), "seed").await;

    assert_eq!(reply["status"], "completed");
    assert_eq!(reply["dialect"], "match-by-contact");
    let expected_row = |status: &str| {
        json!({
            "LocationId": 1,
            "FirstName": "Ada",
            "LastName": "Lovelace",
            "Email": "ada.lovelace@example.com",
            "CustomerCode": "CUST-0008",
            "CellPhone": "+13125550142",
            "Dob": "2024-10-18",
            "Status": status,
            "Message": null
        })
    };
    // The sample's two customers are the same person: the second record updates the first.
    assert_eq!(
        reply["response"],
        json!([expected_row("Added"), expected_row("Updated")])
    );
    let records = records(&reply);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["id"], records[1]["id"]);
    assert_eq!(records[0]["action"], "created");
    assert!(records[0]["key"].as_str().unwrap().starts_with("contact:"));
    assert_eq!(app.customer_count(TENANT).await, 1);

    let data = stored(&app, &records[0]["id"]).await;
    assert_eq!(
        data,
        json!({
            "firstName": "Ada",
            "lastName": "Lovelace",
            "email": "ada.lovelace@example.com",
            "phone": "+13125550142",
            "dateOfBirth": "2024-10-18",
            "gender": "M",
            "address": {"street1": "1 Main St", "street2": "Suite 10", "city": "Springfield",
                        "state": "IL", "postalCode": "62701", "country": "US"},
            "extra": {
                "locationId": "1", "customerId": "2", "customerCode": "CUST-0008",
                "workPhone": "312-555-0199", "noteType": "General", "notes": "Prefers mornings",
                "balance": "1.0", "rewardPoints": "1.0", "image": "https://example.com/ada.png",
                "nopExternalId": "nop-18", "leadSourceId": "1",
                "matchEmail": "ada.lovelace@example.com", "matchCustomerCode": "cust-0008",
                "matchCellPhone": "+13125550142"
            }
        })
    );
    let events = app.events(1).await;
    let (event, _) = &events[0];
    assert_eq!(event["type"], "customer.created");
    assert_eq!(event["subject"], records[0]["id"]);
    assert_eq!(event["data"]["email"], "ada.lovelace@example.com");
    assert_eq!(event["data"]["address"]["state"], "IL");
    app.stop().await;
}

/// `n` customers as a producer's CRM would send them: names, emails, codes and cell phones in
/// several formats, three locations and some shared customers, countries and states by code or name.
fn realistic_body(n: usize) -> Value {
    let first = [
        "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
    ];
    let last = [
        "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
    ];
    let countries = ["US", "USA", "United States", "united states of america"];
    let states = ["IL", "Illinois", "NY", "New York", "CA", "California"];
    let notes = ["General", "Medical", "Billing", "Marketing"];
    let customers: Vec<Value> = (0..n)
        .map(|i| {
            let digits = format!("{:07}", 2_000_000 + i);
            let phone = match i % 3 {
                0 => format!("+1 (312) {}-{}", &digits[..3], &digits[3..]),
                1 => format!("1312{digits}"),
                _ => format!("312.{}.{}", &digits[..3], &digits[3..]),
            };
            let mut customer = json!({
                "FirstName": first[i % first.len()],
                "LastName": format!("{} {i}", last[i % last.len()]),
                "Email": format!("{}.{}{i}@example.com", first[i % 8], last[i % 8]).to_lowercase(),
                "CellPhone": phone,
                "CustomerCode": format!("C{i:05}"),
                "Dob": format!("19{:02}-{:02}-{:02}", 50 + i % 50, 1 + i % 12, 1 + i % 28),
                "Gender": i % 3,
                "Address": format!("{} Main St", i + 1),
                "City": "Springfield",
                "Zip": format!("{:05}", 10_000 + i),
                "Country": countries[i % countries.len()],
                "State": states[i % states.len()],
                "NoteType": notes[i % notes.len()],
                "Notes": "Imported from the CRM",
                "Balance": (i % 100) as f64 * 1.25,
                "RewardPoints": (i % 7) as f64,
                "LeadSourceId": 1 + i % 4
            });
            if i % 10 != 0 {
                customer["LocationId"] = json!(1 + i % 3);
            }
            customer
        })
        .collect();
    json!({"RequireCountry": true, "RequireState": true, "Customers": customers})
}

#[tokio::test]
async fn a_realistic_1000_customer_body_adds_everyone_and_the_same_body_again_finds_everyone() {
    let mut app = TestApp::spawn().await;
    let body = realistic_body(1_000);
    let first = send(&mut app, &body, "crm-1").await;
    assert_eq!(first["status"], "completed");
    assert_eq!(
        first["counts"],
        json!({"total": 1000, "created": 1000, "updated": 0, "unchanged": 0, "failed": 0})
    );
    assert!(statuses(&first).iter().all(|s| *s == "Added"));
    let ids: HashSet<&str> = records(&first)
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1_000);
    assert_eq!(app.customer_count(TENANT).await, 1_000);
    let row = &rows(&first)[7];
    assert_eq!(row["LocationId"], 2);
    assert_eq!(row["CellPhone"], "+13122000007");
    let data = stored(&app, &records(&first)[7]["id"]).await;
    assert_eq!(data["address"]["country"], "US");
    assert_eq!(data["address"]["state"], "IL");
    assert_eq!(data["extra"]["noteType"], "Marketing");
    app.events(1_000).await;

    // Sent again under another batch id: every record finds the customer it added.
    let second = send(&mut app, &body, "crm-2").await;
    assert_eq!(second["counts"]["unchanged"], 1_000);
    assert!(statuses(&second).iter().all(|s| *s == "Updated"));
    for (a, b) in records(&first).iter().zip(records(&second)) {
        assert_eq!(a["id"], b["id"]);
    }
    assert_eq!(app.customer_count(TENANT).await, 1_000);
    app.no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn a_record_that_finds_two_customers_fails_as_ambiguous_naming_both() {
    let mut app = TestApp::spawn().await;
    let added = send(
        &mut app,
        &json!({"Customers": [
            {"Email": "a@example.com", "CustomerCode": "X1", "FirstName": "A"},
            {"Email": "b@example.com", "CustomerCode": "X2", "FirstName": "B"}
        ]}),
        "add",
    )
    .await;
    let (a, b) = (&records(&added)[0]["id"], &records(&added)[1]["id"]);
    // Found by its email, B takes A's customer code too.
    let moved = send(
        &mut app,
        &json!({"Customers": [{"Email": "b@example.com", "CustomerCode": "x1"}]}),
        "move",
    )
    .await;
    assert_eq!(statuses(&moved), ["Updated"]);
    app.events(3).await;

    let reply = send(
        &mut app,
        &json!({"Customers": [{"CustomerCode": "X1", "FirstName": "Who"}]}),
        "ambiguous",
    )
    .await;
    assert_eq!(reply["status"], "failed");
    let error = &records(&reply)[0]["errors"][0];
    assert_eq!(error["code"], "ambiguous_match");
    assert_eq!(error["field"], "CustomerCode");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains(a.as_str().unwrap()), "{message}");
    assert!(message.contains(b.as_str().unwrap()), "{message}");
    let row = &rows(&reply)[0];
    assert_eq!(row["Status"], "Error");
    assert_eq!(row["Message"], message);
    assert_eq!(app.customer_count(TENANT).await, 2);
    assert_eq!(stored(&app, a).await["firstName"], "A");
    app.no_more_events().await;
    app.stop().await;
}

#[tokio::test]
async fn each_require_flag_refuses_an_add_without_its_field_but_not_an_update() {
    let mut app = TestApp::spawn().await;
    let complete = |email: &str| {
        json!({"Email": email, "Country": "US", "State": "IL", "Dob": "1990-01-01",
               "NoteType": "Medical", "Gender": 2})
    };
    let known = send(
        &mut app,
        &json!({"Customers": [{"Email": "known@example.com"}]}),
        "known",
    )
    .await;
    let known_id = &records(&known)[0]["id"];

    for (flag, field, unresolvable) in [
        ("RequireCountry", "Country", json!("Narnia")),
        ("RequireState", "State", json!("Atlantis")),
        ("RequireDob", "Dob", json!("31/12/1990")),
        ("RequireNote", "NoteType", json!("Gossip")),
        ("RequireGender", "Gender", json!(9)),
    ] {
        let mut missing = complete(&format!("missing-{field}@example.com"));
        missing.as_object_mut().unwrap().remove(field);
        let mut unresolved = complete(&format!("unresolved-{field}@example.com"));
        unresolved[field] = unresolvable;
        let body = json!({
            flag: true,
            "Customers": [missing, unresolved, complete(&format!("ok-{field}@example.com")),
                          {"Email": "KNOWN@example.com", "FirstName": field}]
        });
        let reply = send(&mut app, &body, flag).await;
        assert_eq!(
            statuses(&reply),
            ["Error", "Error", "Added", "Updated"],
            "{flag}"
        );
        for refused in &records(&reply)[..2] {
            let error = &refused["errors"][0];
            assert_eq!(error["field"], field, "{flag}");
            assert_eq!(error["code"], "required_for_add", "{flag}");
            assert!(error["message"].as_str().unwrap().contains(flag), "{flag}");
        }
        assert_eq!(records(&reply)[3]["id"], *known_id, "{flag}");
        assert_eq!(stored(&app, known_id).await["firstName"], field);
    }
    // The known customer and one complete customer per flag; nothing of the refused ones.
    assert_eq!(app.customer_count(TENANT).await, 6);
    app.stop().await;
}

#[tokio::test]
async fn countries_and_states_given_by_name_or_by_code_are_stored_by_code() {
    let mut app = TestApp::spawn().await;
    let places = [
        ("United States", "Illinois", "US", "IL"),
        ("USA", "IL", "US", "IL"),
        ("us", "illinois", "US", "IL"),
        ("840", "US-IL", "US", "IL"),
        ("Canada", "Ontario", "CA", "ON"),
        ("CA", "QC", "CA", "QC"),
        ("United Kingdom", "Scotland", "GB", "SCT"),
    ];
    let customers: Vec<Value> = places
        .iter()
        .enumerate()
        .map(|(i, (country, state, _, _))| {
            json!({"Email": format!("p{i}@example.com"), "Country": country, "State": state})
        })
        .collect();
    let reply = send(
        &mut app,
        &json!({"RequireCountry": true, "RequireState": true, "Customers": customers}),
        "places",
    )
    .await;
    assert_eq!(reply["status"], "completed");
    for (record, (country, state, alpha2, subdivision)) in records(&reply).iter().zip(places) {
        let data = stored(&app, &record["id"]).await;
        assert_eq!(
            (&data["address"]["country"], &data["address"]["state"]),
            (&json!(alpha2), &json!(subdivision)),
            "{country} / {state}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_cell_phone_written_another_way_updates_the_customer_stored_with_it() {
    let mut app = TestApp::spawn().await;
    let added = send(
        &mut app,
        &json!({"Customers": [{"CellPhone": "15550100000", "FirstName": "Ada"}]}),
        "add",
    )
    .await;
    let updated = send(
        &mut app,
        &json!({"Customers": [{"CellPhone": "+1 (555) 010-0000", "LastName": "Lovelace"}]}),
        "update",
    )
    .await;
    assert_eq!(statuses(&updated), ["Updated"]);
    assert_eq!(records(&updated)[0]["id"], records(&added)[0]["id"]);
    assert_eq!(records(&updated)[0]["version"], 2);
    assert_eq!(app.customer_count(TENANT).await, 1);
    let data = stored(&app, &records(&added)[0]["id"]).await;
    // What the update left out keeps its stored value.
    assert_eq!(data["firstName"], "Ada");
    assert_eq!(data["lastName"], "Lovelace");
    assert_eq!(data["phone"], "+15550100000");
    app.events(2).await;
    app.stop().await;
}

#[tokio::test]
async fn an_email_is_matched_regardless_of_case_and_surrounding_spaces() {
    let mut app = TestApp::spawn().await;
    let added = send(
        &mut app,
        &json!({"Customers": [{"Email": "ada@example.com", "FirstName": "Ada"}]}),
        "add",
    )
    .await;
    let updated = send(
        &mut app,
        &json!({"Customers": [{"Email": "  ADA@Example.COM ", "FirstName": "Augusta"}]}),
        "update",
    )
    .await;
    assert_eq!(statuses(&updated), ["Updated"]);
    assert_eq!(records(&updated)[0]["id"], records(&added)[0]["id"]);
    assert_eq!(app.customer_count(TENANT).await, 1);
    let data = stored(&app, &records(&added)[0]["id"]).await;
    assert_eq!(data["firstName"], "Augusta");
    assert_eq!(
        data["email"], "ADA@Example.COM",
        "kept as the producer last wrote it"
    );
    app.stop().await;
}

#[tokio::test]
async fn matching_stays_in_the_location_and_ignore_shared_customers_leaves_shared_ones_out() {
    let mut app = TestApp::spawn().await;
    let first = send(
        &mut app,
        &json!({"Customers": [
            {"Email": "shared@example.com", "FirstName": "Shared"},
            {"Email": "north@example.com", "LocationId": 1, "FirstName": "North"}
        ]}),
        "first",
    )
    .await;
    let (shared, north) = (&records(&first)[0]["id"], &records(&first)[1]["id"]);

    let second = send(
        &mut app,
        &json!({"Customers": [
            {"Email": "north@example.com", "LocationId": 2, "FirstName": "South"},
            {"Email": "shared@example.com", "LocationId": 2, "LastName": "Everywhere"},
            {"Email": "north@example.com", "LocationId": 1, "LastName": "Pole"}
        ]}),
        "second",
    )
    .await;
    assert_eq!(statuses(&second), ["Added", "Updated", "Updated"]);
    assert_ne!(
        records(&second)[0]["id"],
        *north,
        "another location's customer"
    );
    assert_eq!(records(&second)[1]["id"], *shared);
    assert_eq!(records(&second)[2]["id"], *north);
    let data = stored(&app, shared).await;
    assert_eq!(data["lastName"], "Everywhere");
    assert!(
        data["extra"].get("locationId").is_none(),
        "an update from a location leaves a shared customer shared"
    );
    assert_eq!(rows(&second)[1]["LocationId"], Value::Null);

    let third = send(
        &mut app,
        &json!({"IgnoreSharedCustomers": true, "Customers": [
            {"Email": "shared@example.com", "LocationId": 3, "FirstName": "Local"},
            {"Email": "north@example.com", "LocationId": 1, "FirstName": "Still North"}
        ]}),
        "third",
    )
    .await;
    assert_eq!(statuses(&third), ["Added", "Updated"]);
    assert_ne!(records(&third)[0]["id"], *shared);
    assert_eq!(records(&third)[1]["id"], *north);
    assert_eq!(stored(&app, shared).await["firstName"], "Shared");
    assert_eq!(app.customer_count(TENANT).await, 4);
    app.stop().await;
}

#[tokio::test]
async fn two_batches_adding_the_same_new_emails_at_once_end_with_one_customer_each() {
    let mut app = TestApp::spawn().await;
    app.add_worker().await;
    let body = |who: &str| {
        let customers: Vec<Value> = (0..300)
            .map(|i| json!({"Email": format!("new{i}@example.com"), "Gender": 0, "Notes": who}))
            .collect();
        json!({"Customers": customers})
    };
    let (a, b) = (
        serde_json::to_vec(&body("a")).unwrap(),
        serde_json::to_vec(&body("b")).unwrap(),
    );
    for (bytes, id) in [(&a, "batch-a"), (&b, "batch-b")] {
        app.publish(Message {
            dialect: Some("match-by-contact"),
            ..Message::upsert(bytes, TENANT, id)
        })
        .await;
    }
    let (first, _) = app.next_reply().await;
    let (second, _) = app.next_reply().await;

    assert_eq!(app.customer_count(TENANT).await, 300);
    for (x, y) in records(&first).iter().zip(records(&second)) {
        assert_eq!(x["id"], y["id"], "both batches found the same customer");
    }
    let mut added = statuses(&first);
    added.extend(statuses(&second));
    assert_eq!(added.iter().filter(|s| **s == "Added").count(), 300);
    assert_eq!(added.iter().filter(|s| **s == "Updated").count(), 300);
    app.stop().await;
}

#[tokio::test]
async fn the_same_body_twice_under_one_message_id_is_applied_once() {
    let mut app = TestApp::spawn().await;
    let body = realistic_body(20);
    let first = send(&mut app, &body, "once").await;
    app.events(20).await;
    let second = send(&mut app, &body, "once").await;
    let strip = |mut reply: Value| {
        reply.as_object_mut().unwrap().remove("correlation_id");
        reply
    };
    assert_eq!(
        strip(first),
        strip(second),
        "the stored reply is sent again"
    );
    assert_eq!(app.customer_count(TENANT).await, 20);
    app.no_more_events().await;
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM customers")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(versions.iter().all(|v| *v == 1));
    app.stop().await;
}

#[tokio::test]
async fn a_bad_record_fails_alone_and_a_key_the_api_does_not_define_rejects_the_body() {
    let mut app = TestApp::spawn().await;
    let reply = send(
        &mut app,
        &json!({"Customers": [
            {"Email": "good@example.com"},
            {"Email": "not-an-email"},
            {"Email": "x@example.com", "Fax": "555"},
            {"CellPhone": "555-0100"}
        ]}),
        "mixed",
    )
    .await;
    assert_eq!(reply["status"], "partial");
    assert_eq!(statuses(&reply), ["Added", "Error", "Error", "Error"]);
    let error = |i: usize| &records(&reply)[i]["errors"][0];
    assert_eq!(
        (&error(1)["field"], &error(1)["code"]),
        (&json!("Email"), &json!("invalid_email"))
    );
    assert_eq!(error(2)["code"], "unknown_field");
    assert_eq!(
        (&error(3)["field"], &error(3)["code"]),
        (&json!("CellPhone"), &json!("invalid_phone"))
    );
    assert_eq!(app.customer_count(TENANT).await, 1);

    let rejected = send(
        &mut app,
        &json!({"RequireCounty": true, "Customers": [{"Email": "y@example.com"}]}),
        "typo",
    )
    .await;
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["error"]["code"], "invalid_body");
    assert!(
        rejected["error"]["message"]
            .as_str()
            .unwrap()
            .contains("RequireCounty")
    );
    assert_eq!(app.dead_letters().await.len(), 1);
    assert_eq!(app.customer_count(TENANT).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_worker_killed_after_a_chunk_commits_resumes_the_batch_with_the_customers_it_matched() {
    crate::helpers::failpoints_compiled_in();
    let mut app = TestApp::without_worker(|s| s.pipeline.chunk_size = 50).await;
    // 100 new customers; the last 50 records come back to the first 50 by cell phone.
    let customers: Vec<Value> = (0..150)
        .map(|i| {
            let n = i % 100;
            json!({"CellPhone": format!("+1 312 200 {n:04}"), "FirstName": format!("C{n}"),
                   "Notes": if i < 100 { "first" } else { "again" }})
        })
        .collect();
    let body = serde_json::to_vec(&json!({"Customers": customers})).unwrap();
    app.publish(Message {
        dialect: Some("match-by-contact"),
        ..Message::upsert(&body, TENANT, "crash")
    })
    .await;
    let mut crashing = spawn_worker_process(&app.settings, Some("chunk-after-commit=return"));
    let status = tokio::time::timeout(PATIENCE, crashing.wait())
        .await
        .expect("the worker stops after its first chunk")
        .unwrap();
    assert_eq!(status.signal(), Some(6));

    let mut worker = spawn_worker_process(&app.settings, None);
    let (reply, _) = app.next_reply().await;
    assert_eq!(reply["status"], "completed");
    assert_eq!(reply["counts"]["created"], 150, "{}", reply["counts"]);
    let statuses = statuses(&reply);
    assert!(statuses[..100].iter().all(|s| *s == "Added"));
    assert!(statuses[100..].iter().all(|s| *s == "Updated"));
    for i in 0..50 {
        assert_eq!(records(&reply)[i]["id"], records(&reply)[i + 100]["id"]);
    }
    let rows: Vec<(i64, Value)> =
        sqlx::query_as("SELECT version, data FROM customers WHERE tenant = $1")
            .bind(TENANT)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 100, "every customer stored once");
    assert!(rows.iter().all(|(version, _)| *version == 1));
    let again = rows
        .iter()
        .filter(|(_, data)| data["extra"]["notes"] == "again")
        .count();
    assert_eq!(
        again, 50,
        "the later records were merged into the earlier ones"
    );
    assert_eq!(app.distinct_events().await.len(), 100);
    assert!(terminate(&mut worker).await.success());
    app.stop().await;
}
