//! The API's response: one row per record, with the customer as the batch wrote it.

use std::collections::HashSet;

use serde_json::{Value, json};
use uuid::Uuid;

use super::extra;
use crate::model::{Action, Customer, RecordResult};

/// One row per record, in input order. `customers` holds, aligned with `records`, the customer each
/// valid record carried.
pub(super) fn render(records: &[RecordResult], customers: &[Option<&Customer>]) -> Value {
    // Records of one batch that matched the same customer share its result; the first of them
    // added it and the later ones updated it.
    let mut seen: HashSet<Uuid> = HashSet::new();
    let rows = records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let status = match (record.action, record.id) {
                (Action::Failed, _) => "Error",
                (Action::Created, Some(id)) if seen.insert(id) => "Added",
                (Action::Created, None) => "Added",
                (_, id) => {
                    seen.extend(id);
                    "Updated"
                }
            };
            let message = (!record.errors.is_empty()).then(|| {
                record
                    .errors
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            });
            row(customers.get(i).copied().flatten(), status, message)
        })
        .collect();
    Value::Array(rows)
}

/// The rows of `range`, cut from the whole `response`; rendered from the results alone (without
/// the customers' fields) only if the response is not one row per record.
pub(super) fn slice(
    response: &Value,
    records: &[RecordResult],
    range: std::ops::Range<usize>,
) -> Value {
    match response.as_array() {
        Some(rows) if rows.len() == records.len() => Value::Array(rows[range].to_vec()),
        _ => render(&records[range], &[]),
    }
}

/// The rows of every record but those at `erased`, cut from the whole `response`; rendered from
/// the other results alone only if the response is not one row per record.
pub(super) fn without(response: &Value, records: &[RecordResult], erased: &[usize]) -> Value {
    match response.as_array() {
        Some(rows) if rows.len() == records.len() => {
            Value::Array(crate::dialect::without_positions(rows, erased))
        }
        _ => render(&crate::dialect::without_positions(records, erased), &[]),
    }
}

/// One response row: the customer as this batch wrote it (for a failed record, only its status and
/// why).
fn row(customer: Option<&Customer>, status: &str, message: Option<String>) -> Value {
    let kept = |name: &str| customer.and_then(|c| c.extra.get(name));
    let location = kept(extra::LOCATION_ID).map(|id| match id.parse::<i64>() {
        Ok(number) => json!(number),
        Err(_) => json!(id),
    });
    json!({
        "LocationId": location,
        "FirstName": customer.and_then(|c| c.first_name.as_deref()),
        "LastName": customer.and_then(|c| c.last_name.as_deref()),
        "Email": customer.and_then(|c| c.email.as_deref()),
        "CustomerCode": kept(extra::CUSTOMER_CODE),
        "CellPhone": customer.and_then(|c| c.phone.as_deref()),
        "Dob": customer.and_then(|c| c.date_of_birth.as_deref()),
        "Status": status,
        "Message": message,
    })
}
#[cfg(test)]
mod tests {
    use super::super::testing::one;
    use super::super::{Dialect, MatchByContact};
    use super::*;
    use crate::codes::FieldCode;
    use crate::model::FieldError;

    fn result(
        index: usize,
        id: Option<u128>,
        action: Action,
        errors: Vec<FieldError>,
    ) -> RecordResult {
        RecordResult {
            index,
            key: None,
            id: id.map(Uuid::from_u128),
            action,
            version: id.map(|_| 1),
            errors,
        }
    }

    #[test]
    fn the_response_is_one_row_per_record_with_the_api_shape() {
        let ada = one(json!({"LocationId": 3, "FirstName": "Ada", "LastName": "L",
            "Email": "a@example.com", "CustomerCode": "C1", "CellPhone": "15550100000",
            "Dob": "1990-01-01"}));
        let records = [
            result(0, Some(1), Action::Created, vec![]),
            result(1, Some(1), Action::Created, vec![]),
            result(2, Some(2), Action::Unchanged, vec![]),
            result(
                3,
                None,
                Action::Failed,
                vec![
                    FieldError::new("Email", FieldCode::InvalidEmail, "bad email"),
                    FieldError::new("Zip", FieldCode::TooLong, "long zip"),
                ],
            ),
        ];
        let customers = [Some(&ada), Some(&ada), Some(&ada), None];
        let response = MatchByContact.render_response(&records, &customers);
        assert_eq!(
            response[0],
            json!({"LocationId": 3, "FirstName": "Ada", "LastName": "L", "Email": "a@example.com",
                   "CustomerCode": "C1", "CellPhone": "+15550100000", "Dob": "1990-01-01",
                   "Status": "Added", "Message": null})
        );
        assert_eq!(
            response[1]["Status"], "Updated",
            "the second record updated the first"
        );
        assert_eq!(response[2]["Status"], "Updated", "unchanged is Updated");
        assert_eq!(response[3]["Status"], "Error");
        assert_eq!(response[3]["Message"], "bad email; long zip");
        assert_eq!(response[3]["Email"], Value::Null);
        let part = MatchByContact.slice_response(&response, &records, 1..3);
        assert_eq!(part, json!([response[1], response[2]]));
    }
}
