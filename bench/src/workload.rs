//! What the bench sends: generated customer bodies in the `upsert-by-customer-id` dialect.

use serde_json::json;

/// The dialect every generated body is written in.
pub const DIALECT: &str = "upsert-by-customer-id";
pub const TENANT: &str = "bench";
pub const SMALL_TENANT: &str = "bench-small";
pub const SMALL_MESSAGES: usize = 200;
pub const SMALL_CUSTOMERS: usize = 10;
pub const LARGE_CUSTOMERS: usize = 100_000;

/// Message `m` of a throughput phase: `k` customers in the `upsert-by-customer-id` dialect, with the
/// fields a typical producer sends. `revision` changes every customer's name, so a later revision
/// updates every record of an earlier one.
pub fn bulk_body(m: usize, k: usize, revision: u32) -> Vec<u8> {
    let records: Vec<serde_json::Value> = (0..k)
        .map(|i| {
            let name = match revision {
                0 => format!("Customer {m}-{i}"),
                r => format!("Customer {m}-{i} rev {r}"),
            };
            json!({
                "customerID": format!("B{m:05}-{i:05}"),
                "customerName": name,
                "email": format!("c{m}.{i}@example.com"),
                "phone": format!("555-{:04}", (m * k + i) % 10_000),
                "street1": format!("{} Main Street", i + 1),
                "city": "Springfield",
                "state": "IL",
                "zipCode": "62701",
                "priceZone": (i % 5) as i64,
                "warehouseID": "W1",
                "customerClassID": "RETAIL",
                "primarySalesRep": "R1",
                "salesReps": ["R1", "R2"],
                "extra1": "bench"
            })
        })
        .collect();
    serde_json::to_vec(&records).expect("JSON values always serialize")
}

/// The large message: as many customers as a batch may hold, each with only a few fields, so that the
/// body stays under the 16 MiB a message may have and the test is of the record count.
pub fn large_body(n: usize) -> Vec<u8> {
    let records: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            json!({
                "customerID": format!("L{i:06}"),
                "customerName": format!("Customer {i}"),
                "email": format!("l{i}@example.com"),
                "city": "Springfield",
                "priceZone": (i % 5) as i64
            })
        })
        .collect();
    serde_json::to_vec(&records).expect("JSON values always serialize")
}

/// Message `m` of the small-message phase: a few new customers.
pub fn small_body(m: usize) -> Vec<u8> {
    let records: Vec<serde_json::Value> = (0..SMALL_CUSTOMERS)
        .map(|i| {
            json!({
                "customerID": format!("S{m:04}-{i:02}"),
                "customerName": format!("Small customer {m}-{i}"),
                "email": format!("s{m}.{i}@example.com"),
                "city": "Springfield",
                "salesReps": ["R1"]
            })
        })
        .collect();
    serde_json::to_vec(&records).expect("JSON values always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_batch_fits_in_one_message() {
        assert!(large_body(LARGE_CUSTOMERS).len() < 16 * 1024 * 1024);
    }
}
