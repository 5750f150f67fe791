//! `add-with-accounts`: the body of the Customer API's `POST /customers` (Add Customers).
//!
//! A JSON array; every element adds a new customer (the API has no match key) and creates its billing
//! account. The batch's message id keys the added customers, so a redelivered batch finds them instead
//! of adding them twice. That API leaves publishing to a separate step; here the outbox is that step.
//! The response is `{"data": [{"customer": {...}, "account": {...}}]}`, one element per input record.
//!
//! An account belongs to exactly one customer, so it carries that customer's id.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::text::{Checker, MAX_TEXT_CHARS, decode_record};
use super::{Dialect, Keying, Limits, Rejection, raw_records};
use crate::codes::FieldCode;
use crate::model::{
    Action, Address, Customer, FieldError, ParsedRecord, RecordResult, Reference, ReferenceTarget,
};

pub struct AddWithAccounts;

/// The payment types an account may accept.
pub const PAY_TYPES: &[&str] = &[
    "CASH",
    "CHECK",
    "CREDIT_CARD",
    "DEBIT_CARD",
    "ACCOUNT",
    "EFT",
];
/// The states an account may be in; new accounts are ACTIVE unless the record says otherwise.
pub const ACCOUNT_STATUSES: &[&str] = &["ACTIVE", "INACTIVE", "SUSPENDED", "CLOSED"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Record {
    name: Option<String>,
    address: Option<RawAddress>,
    bill_to_address: Option<RawAddress>,
    bill_to_customer_id: Option<Value>,
    phone: Option<String>,
    email: Option<String>,
    ship_to: Option<RawShipTo>,
    signature_required: Option<bool>,
    balance_due: Option<f64>,
    credit_limit: Option<f64>,
    cash_over_days: Option<bool>,
    cash_over_limit: Option<bool>,
    max_days: Option<i64>,
    default_pay_type: Option<String>,
    pay_types: Option<Vec<String>>,
    price_code: Option<i64>,
    tax_code: Option<Value>,
    status: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAddress {
    street1: Option<String>,
    street2: Option<String>,
    city: Option<String>,
    state: Option<String>,
    country_code: Option<String>,
    zip_code: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShipTo {
    name: Option<String>,
    address: Option<RawAddress>,
    phone: Option<String>,
    email: Option<String>,
}

impl Dialect for AddWithAccounts {
    fn name(&self) -> &'static str {
        "add-with-accounts"
    }

    fn parse(&self, body: &str, limits: Limits) -> Result<Vec<ParsedRecord>, Rejection> {
        Ok(raw_records(body, limits)?
            .into_iter()
            .enumerate()
            .map(|(index, raw)| parse_record(index, raw.get()))
            .collect())
    }

    fn keying(&self) -> Keying {
        Keying::BatchPosition
    }

    /// A customer billed to another one's account carries a copy of that account, as the API's
    /// response shows it.
    fn complete(
        &self,
        tenant: &str,
        customer: &mut Customer,
        referenced: &HashMap<Uuid, Customer>,
    ) {
        customer
            .extra
            .insert("franchiseId".to_owned(), tenant.to_owned());
        let Some(payer_id) = customer.bill_to_customer_id else {
            return;
        };
        if let (Some(Value::Object(account)), Some(payer)) =
            (customer.account.as_mut(), referenced.get(&payer_id))
        {
            let mut bill_to = payer.account.clone().unwrap_or(json!({}));
            if let Some(bill_to) = bill_to.as_object_mut() {
                bill_to.remove("billToAccount");
                bill_to.insert("id".into(), json!(payer_id));
            }
            account.insert("billToAccount".into(), bill_to);
        }
    }

    fn renders_customers(&self) -> bool {
        true
    }

    fn render_response(&self, records: &[RecordResult], customers: &[Option<&Customer>]) -> Value {
        let data: Vec<Value> = records
            .iter()
            .enumerate()
            .map(|(i, record)| {
                let customer = customers.get(i).copied().flatten();
                match (record.action, customer) {
                    (Action::Failed, _) | (_, None) => json!({
                        "error": {
                            "index": record.index,
                            "messages": record.errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
                        }
                    }),
                    (_, Some(customer)) => render_added(record, customer),
                }
            })
            .collect();
        json!({ "data": data })
    }

    /// The response lists one element per record, in order: a part's slice is cut from it.
    fn slice_response(
        &self,
        response: &Value,
        _records: &[RecordResult],
        range: std::ops::Range<usize>,
    ) -> Value {
        let data = response["data"].as_array().map_or(&[][..], Vec::as_slice);
        json!({ "data": data.get(range).unwrap_or_default() })
    }

    /// Cut from the whole response, like a part: rendered again, the others would lose their
    /// customers' fields.
    fn response_without(
        &self,
        response: &Value,
        records: &[RecordResult],
        erased: &[usize],
    ) -> Value {
        match response["data"].as_array() {
            Some(data) if data.len() == records.len() => {
                json!({ "data": super::without_positions(data, erased) })
            }
            _ => self.render_response(&super::without_positions(records, erased), &[]),
        }
    }
}

fn render_added(record: &RecordResult, customer: &Customer) -> Value {
    let mut account = customer.account.clone().unwrap_or(json!({}));
    let bill_to = account
        .as_object_mut()
        .and_then(|a| a.remove("billToAccount"));
    account["id"] = json!(record.id);
    let bill_to_account = bill_to.unwrap_or_else(|| account.clone());
    json!({
        "customer": {
            "id": record.id,
            "franchiseId": customer.extra.get("franchiseId"),
            "name": customer.name,
            "address": customer.address.as_ref().map(api_address),
            "phone": customer.phone,
            "email": customer.email,
            "billToAccount": bill_to_account,
            "shipTo": customer.ship_to,
            "version": record.version,
        },
        "account": account,
    })
}

/// An address in the API's own field names.
fn api_address(address: &Address) -> Value {
    json!({
        "street1": address.street1,
        "street2": address.street2,
        "city": address.city,
        "state": address.state,
        "countryCode": address.country,
        "zipCode": address.postal_code,
    })
}

fn address(check: &mut Checker, field: &str, raw: Option<RawAddress>) -> Option<Address> {
    let raw = raw?;
    let country = check
        .text(&format!("{field}.countryCode"), raw.country_code, 2)
        .map(|c| c.to_ascii_uppercase());
    if let Some(code) = &country
        && celes::Country::from_alpha2(code).is_err()
    {
        check.errors.push(FieldError::new(
            format!("{field}.countryCode"),
            FieldCode::InvalidCountry,
            "countryCode must be an ISO 3166-1 alpha-2 code",
        ));
    }
    Some(Address {
        street1: check.text(&format!("{field}.street1"), raw.street1, MAX_TEXT_CHARS),
        street2: check.text(&format!("{field}.street2"), raw.street2, MAX_TEXT_CHARS),
        city: check.text(&format!("{field}.city"), raw.city, MAX_TEXT_CHARS),
        state: check.text(&format!("{field}.state"), raw.state, MAX_TEXT_CHARS),
        postal_code: check.text(&format!("{field}.zipCode"), raw.zip_code, 20),
        country,
    })
    .filter(|a| !a.is_empty())
}

fn one_of(check: &mut Checker, field: &str, value: String, allowed: &[&str]) -> Option<String> {
    let upper = value.to_ascii_uppercase();
    if allowed.contains(&upper.as_str()) {
        Some(upper)
    } else {
        check.errors.push(FieldError::new(
            field,
            FieldCode::InvalidValue,
            format!("{field} must be one of {}", allowed.join(", ")),
        ));
        None
    }
}

fn parse_record(index: usize, raw: &str) -> ParsedRecord {
    let record: Record = match decode_record(raw) {
        Ok(record) => record,
        Err(error) => return ParsedRecord::new(index, None, Err(vec![error])),
    };
    let mut check = Checker::default();
    let name = check.required_text("name", record.name, MAX_TEXT_CHARS);

    // `0` (the API's placeholder) and null mean "billed to its own account".
    let mut reference = None;
    let bill_to_customer_id = match record.bill_to_customer_id {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_i64() == Some(0) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(value) => {
            match value.as_str().map(str::trim).map(Uuid::parse_str) {
                Some(Ok(id)) => {
                    reference = Some(Reference {
                        field: "billToCustomerId".into(),
                        target: ReferenceTarget::Id(id),
                    });
                    Some(id)
                }
                _ => {
                    check.errors.push(FieldError::new(
                    "billToCustomerId",
                    FieldCode::UnknownReference,
                    format!("billToCustomerId names customer {value}, which this tenant does not have"),
                ));
                    None
                }
            }
        }
    };

    let pay_types: Vec<String> = record
        .pay_types
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, t)| one_of(&mut check, &format!("payTypes[{i}]"), t, PAY_TYPES))
        .collect();
    let default_pay_type = record
        .default_pay_type
        .and_then(|t| one_of(&mut check, "defaultPayType", t, PAY_TYPES));
    if let Some(default) = &default_pay_type
        && !pay_types.is_empty()
        && !pay_types.contains(default)
    {
        check.errors.push(FieldError::new(
            "defaultPayType",
            FieldCode::InvalidValue,
            "defaultPayType must be one of the account's payTypes",
        ));
    }
    let status = match check.text("status", record.status, 20) {
        Some(status) => one_of(&mut check, "status", status, ACCOUNT_STATUSES),
        None => Some("ACTIVE".to_owned()),
    };
    let tax_code = match record.tax_code {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) => check.text("taxCode", Some(s), 20),
        Some(_) => {
            check.errors.push(FieldError::new(
                "taxCode",
                FieldCode::InvalidType,
                "taxCode must be a number or a string",
            ));
            None
        }
    };
    for (field, value) in [
        ("balanceDue", record.balance_due),
        ("creditLimit", record.credit_limit),
    ] {
        if value.is_some_and(|v| !v.is_finite() || v.abs() > 1e15) {
            check.errors.push(FieldError::new(
                field,
                FieldCode::OutOfRange,
                format!("{field} is out of range"),
            ));
        }
    }
    let bill_to_address = address(&mut check, "billToAddress", record.bill_to_address);
    let account = json!({
        "status": status,
        "billToAddress": bill_to_address.as_ref().map(api_address),
        "balance": record.balance_due.unwrap_or(0.0),
        "creditLimit": record.credit_limit.unwrap_or(0.0),
        "cashOverLimit": record.cash_over_limit.unwrap_or(false),
        "cashOverDays": record.cash_over_days.unwrap_or(false),
        "ageInDays": 0,
        "defaultPayType": default_pay_type,
        "payTypes": pay_types,
        "priceCode": record.price_code,
        "taxCode": tax_code,
        "maxDays": record.max_days,
        "signatureRequired": record.signature_required.unwrap_or(false),
        "version": 1,
    });
    let ship_to = record.ship_to.map(|ship_to| {
        json!({
            "name": check.text("shipTo.name", ship_to.name, MAX_TEXT_CHARS),
            "address": address(&mut check, "shipTo.address", ship_to.address).as_ref().map(api_address),
            "phone": check.text("shipTo.phone", ship_to.phone, 50),
            "email": check.email("shipTo.email", ship_to.email),
        })
    });
    let customer = Customer {
        name,
        address: address(&mut check, "address", record.address),
        phone: check.text("phone", record.phone, 50),
        email: check.email("email", record.email),
        ship_to,
        bill_to_customer_id,
        account: Some(account),
        ..Customer::default()
    };
    let customer = if check.errors.is_empty() {
        Ok(customer)
    } else {
        Err(check.errors)
    };
    let mut parsed = ParsedRecord::new(index, None, customer);
    parsed.references.extend(reference);
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Vec<ParsedRecord> {
        AddWithAccounts
            .parse(body, Limits { max_records: 100 })
            .expect("body parses")
    }

    #[test]
    fn a_record_builds_its_customer_and_account() {
        let records = parse(
            r#"[{"name": "Corner Store", "address": {"street1": "1 Main", "city": "Springfield",
                 "state": "IL", "countryCode": "us", "zipCode": "62701"},
                 "phone": "555-0100", "email": "shop@example.com", "balanceDue": 12.5,
                 "creditLimit": 100, "defaultPayType": "cash", "payTypes": ["CASH", "CHECK"],
                 "priceCode": 2, "taxCode": 7, "maxDays": 30, "billToCustomerId": 0}]"#,
        );
        let customer = records[0].customer.as_ref().unwrap();
        assert_eq!(records[0].key, None, "the pipeline keys added customers");
        assert!(records[0].references.is_empty(), "0 means its own account");
        let account = customer.account.as_ref().unwrap();
        assert_eq!(account["status"], "ACTIVE");
        assert_eq!(account["balance"], 12.5);
        assert_eq!(account["defaultPayType"], "CASH");
        assert_eq!(account["taxCode"], "7");
        assert_eq!(
            customer.address.as_ref().unwrap().country.as_deref(),
            Some("US")
        );
    }

    #[test]
    fn an_unknown_pay_type_fails_the_record() {
        let records = parse(r#"[{"name": "A", "payTypes": ["CASH", "BARTER"]}]"#);
        let errors = records[0].customer.as_ref().unwrap_err();
        assert_eq!(errors[0].field, "payTypes[1]");
        assert!(errors[0].message.contains("CREDIT_CARD"));
    }

    #[test]
    fn a_bill_to_customer_is_a_reference_by_id() {
        let id = Uuid::now_v7();
        let records = parse(&format!(r#"[{{"name": "A", "billToCustomerId": "{id}"}}]"#));
        assert_eq!(records[0].references[0].target, ReferenceTarget::Id(id));
        let records = parse(r#"[{"name": "A", "billToCustomerId": 17}]"#);
        assert_eq!(
            records[0].customer.as_ref().unwrap_err()[0].code,
            FieldCode::UnknownReference
        );
    }
}
