//! `upsert-by-customer-id`: the body of Trade Show V2's `POST /v2/customers/bulk`.
//!
//! A JSON array of customers keyed by `customerID`: an existing customer with that key is updated
//! (its stored state replaced by the record), otherwise one is created. The response is
//! `{"successful": [{"id", "customerID"}], "failed": [{"customerID", "messages"}]}`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::text::{Checker, MAX_KEY_CHARS, MAX_TEXT_CHARS, decode_record};
use super::{Dialect, Keying, Limits, Rejection, Split, raw_records};
use crate::model::{Action, Address, Customer, OrderingGroup, ParsedRecord, RecordResult};

pub struct UpsertByCustomerId;

/// One element of the body, every field of the API's example. Unknown keys are refused rather than
/// dropped, so nothing a producer sends is silently lost.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Record {
    #[serde(rename = "customerID")]
    customer_id: Option<String>,
    customer_name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    fax: Option<String>,
    price_zone: Option<i64>,
    test: Option<bool>,
    placeholder: Option<bool>,
    street1: Option<String>,
    street2: Option<String>,
    city: Option<String>,
    state: Option<String>,
    zip_code: Option<String>,
    allowance_group: Option<String>,
    delivery_group: Option<String>,
    #[serde(rename = "warehouseID")]
    warehouse_id: Option<String>,
    #[serde(rename = "customerClassID")]
    customer_class_id: Option<String>,
    order_permission_key: Option<i64>,
    primary_sales_rep: Option<String>,
    sales_reps: Option<Vec<String>>,
    ordering_groups: Option<Vec<RawOrderingGroup>>,
    extra1: Option<String>,
    extra2: Option<String>,
    extra3: Option<String>,
    extra4: Option<String>,
    extra5: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawOrderingGroup {
    #[serde(rename = "orderingGroupID")]
    ordering_group_id: Option<String>,
    ordering_group_name: Option<String>,
    ordering_sub_groups: Option<Vec<RawOrderingGroup>>,
    customers: Option<Vec<String>>,
}

/// Reads only the key, so that a record that fails to decode is still reported under its key.
#[derive(Deserialize)]
struct KeyOnly<'a> {
    #[serde(rename = "customerID", borrow)]
    customer_id: Option<std::borrow::Cow<'a, str>>,
}

impl Dialect for UpsertByCustomerId {
    fn keying(&self) -> Keying {
        Keying::Producer
    }

    fn name(&self) -> &'static str {
        "upsert-by-customer-id"
    }

    fn split<'b>(&self, body: &'b str, limits: Limits) -> Option<Result<Split<'b>, Rejection>> {
        Some(raw_records(body, limits).map(|records| Split {
            records,
            parse: parse_record,
        }))
    }

    fn parse(&self, body: &str, limits: Limits) -> Result<Vec<ParsedRecord>, Rejection> {
        let records = raw_records(body, limits)?;
        Ok(records
            .into_iter()
            .enumerate()
            .map(|(index, raw)| parse_record(index, raw.get()))
            .collect())
    }

    fn render_response(&self, records: &[RecordResult], _customers: &[Option<&Customer>]) -> Value {
        let mut successful = Vec::new();
        let mut failed = Vec::new();
        for record in records {
            if record.action == Action::Failed {
                let messages: Vec<&str> =
                    record.errors.iter().map(|e| e.message.as_str()).collect();
                failed.push(json!({"customerID": record.key, "messages": messages}));
            } else {
                successful.push(json!({"id": record.id, "customerID": record.key}));
            }
        }
        json!({"successful": successful, "failed": failed})
    }
}

fn parse_record(index: usize, raw: &str) -> ParsedRecord {
    let record: Record = match decode_record(raw) {
        Ok(record) => record,
        Err(error) => {
            let key = serde_json::from_str::<KeyOnly>(raw)
                .ok()
                .and_then(|k| k.customer_id)
                .map(|k| k.trim().to_owned());
            return ParsedRecord::new(index, key, Err(vec![error]));
        }
    };
    let mut check = Checker::default();
    let key = check.required_text("customerID", record.customer_id, MAX_KEY_CHARS);
    let customer = Customer {
        name: check.text("customerName", record.customer_name, MAX_TEXT_CHARS),
        email: check.email("email", record.email),
        phone: check.text("phone", record.phone, 50),
        fax: check.text("fax", record.fax, 50),
        address: Some(Address {
            street1: check.text("street1", record.street1, MAX_TEXT_CHARS),
            street2: check.text("street2", record.street2, MAX_TEXT_CHARS),
            city: check.text("city", record.city, MAX_TEXT_CHARS),
            state: check.text("state", record.state, MAX_TEXT_CHARS),
            postal_code: check.text("zipCode", record.zip_code, 20),
            country: None,
        })
        .filter(|address| !address.is_empty()),
        price_zone: record.price_zone,
        test: record.test,
        placeholder: record.placeholder,
        allowance_group: check.text("allowanceGroup", record.allowance_group, MAX_TEXT_CHARS),
        delivery_group: check.text("deliveryGroup", record.delivery_group, MAX_TEXT_CHARS),
        warehouse_id: check.text("warehouseID", record.warehouse_id, MAX_KEY_CHARS),
        customer_class_id: check.text("customerClassID", record.customer_class_id, MAX_KEY_CHARS),
        order_permission_key: record.order_permission_key,
        primary_sales_rep: check.text("primarySalesRep", record.primary_sales_rep, MAX_KEY_CHARS),
        sales_reps: check.texts(
            "salesReps",
            record.sales_reps.unwrap_or_default(),
            MAX_KEY_CHARS,
        ),
        ordering_groups: ordering_groups(
            &mut check,
            "orderingGroups",
            record.ordering_groups.unwrap_or_default(),
        ),
        extra: [
            ("extra1", record.extra1),
            ("extra2", record.extra2),
            ("extra3", record.extra3),
            ("extra4", record.extra4),
            ("extra5", record.extra5),
        ]
        .into_iter()
        .filter_map(|(name, value)| {
            check
                .text(name, value, MAX_TEXT_CHARS)
                .map(|v| (name.to_owned(), v))
        })
        .collect(),
        ..Customer::default()
    };
    let customer = if check.errors.is_empty() && key.is_some() {
        Ok(customer)
    } else {
        Err(check.errors)
    };
    ParsedRecord::new(index, key, customer)
}

fn ordering_groups(
    check: &mut Checker,
    field: &str,
    groups: Vec<RawOrderingGroup>,
) -> Vec<OrderingGroup> {
    groups
        .into_iter()
        .enumerate()
        .filter_map(|(i, group)| {
            let path = format!("{field}[{i}]");
            let id = check.required_text(
                &format!("{path}.orderingGroupID"),
                group.ordering_group_id,
                MAX_KEY_CHARS,
            )?;
            Some(OrderingGroup {
                id,
                name: check.text(
                    &format!("{path}.orderingGroupName"),
                    group.ordering_group_name,
                    MAX_TEXT_CHARS,
                ),
                sub_groups: ordering_groups(
                    check,
                    &format!("{path}.orderingSubGroups"),
                    group.ordering_sub_groups.unwrap_or_default(),
                ),
                customers: check.texts(
                    &format!("{path}.customers"),
                    group.customers.unwrap_or_default(),
                    MAX_KEY_CHARS,
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::FieldCode;
    use uuid::Uuid;

    fn parse(body: &str) -> Vec<ParsedRecord> {
        UpsertByCustomerId
            .parse(body, Limits { max_records: 100 })
            .expect("body parses")
    }

    #[test]
    fn every_field_of_the_api_example_is_kept() {
        let body = r#"[{
            "customerID": "CUST0719", "customerName": "Corner Store", "email": "shop@example.com",
            "phone": "555-0100", "fax": "555-0101", "priceZone": 3, "test": false, "placeholder": true,
            "street1": "1 Main St", "street2": "Unit 2", "city": "Springfield", "state": "IL",
            "zipCode": "62701", "allowanceGroup": "AG1", "deliveryGroup": "DG1", "warehouseID": "W1",
            "customerClassID": "C1", "orderPermissionKey": 7, "primarySalesRep": "R1",
            "salesReps": ["R1", "R2"],
            "orderingGroups": [{"orderingGroupID": "G1", "orderingGroupName": "Group",
                "orderingSubGroups": [{"orderingGroupID": "G1a", "orderingGroupName": "Sub",
                    "customers": ["CUST0719"]}]}],
            "extra1": "a", "extra2": "b", "extra3": "c", "extra4": "d", "extra5": "e"
        }]"#;
        let records = parse(body);
        assert_eq!(records[0].key.as_deref(), Some("CUST0719"));
        let customer = records[0].customer.as_ref().expect("valid record");
        let stored = serde_json::to_value(customer).unwrap();
        assert_eq!(stored["priceZone"], 3);
        assert_eq!(stored["placeholder"], true);
        assert_eq!(stored["address"]["postalCode"], "62701");
        assert_eq!(stored["orderPermissionKey"], 7);
        assert_eq!(stored["salesReps"], json!(["R1", "R2"]));
        assert_eq!(
            stored["orderingGroups"][0]["subGroups"][0]["customers"],
            json!(["CUST0719"])
        );
        assert_eq!(stored["extra"]["extra5"], "e");
        assert_eq!(stored["warehouseId"], "W1");
    }

    #[test]
    fn a_bad_record_fails_alone_and_keeps_its_key() {
        let records = parse(
            r#"[{"customerID": "A"}, {"customerID": "B", "priceZone": "high"},
               {"customerID": "C", "email": "nope"}, {"customerName": "no key"},
               {"customerID": "D", "surprise": 1}]"#,
        );
        assert!(records[0].customer.is_ok());
        let errors = |i: usize| records[i].customer.as_ref().unwrap_err().clone();
        assert_eq!(records[1].key.as_deref(), Some("B"));
        assert_eq!(errors(1)[0].field, "priceZone");
        assert_eq!(errors(1)[0].code, FieldCode::InvalidType);
        assert_eq!(errors(2)[0].code, FieldCode::InvalidEmail);
        assert_eq!(records[3].key, None);
        assert_eq!(errors(3)[0].field, "customerID");
        assert_eq!(errors(3)[0].code, FieldCode::Required);
        assert_eq!(errors(4)[0].code, FieldCode::UnknownField);
        assert!(errors(4)[0].message.contains("surprise"));
    }

    #[test]
    fn numbers_out_of_range_fail_the_record() {
        for number in ["1e400", "99999999999999999999", "1.5"] {
            let records = parse(&format!(
                r#"[{{"customerID": "A", "priceZone": {number}}}]"#
            ));
            let errors = records[0].customer.as_ref().unwrap_err();
            assert_eq!(errors[0].field, "priceZone", "{number}");
        }
    }

    #[test]
    fn the_response_has_the_api_shape() {
        let id = Uuid::nil();
        let records = [
            RecordResult {
                index: 0,
                key: Some("A".into()),
                id: Some(id),
                action: Action::Created,
                version: Some(1),
                errors: vec![],
            },
            RecordResult::failed(
                1,
                Some("B".into()),
                vec![crate::model::FieldError::new(
                    "email",
                    FieldCode::InvalidEmail,
                    "bad email",
                )],
            ),
        ];
        let response = UpsertByCustomerId.render_response(&records, &[]);
        assert_eq!(
            response,
            json!({"successful": [{"id": id, "customerID": "A"}],
                   "failed": [{"customerID": "B", "messages": ["bad email"]}]})
        );
    }
}
