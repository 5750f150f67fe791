//! `match-by-contact`: the body of `POST api/customers`, "add or update customer(s)".
//!
//! `{"RequireCountry", "RequireState", "RequireDob", "RequireNote", "RequireGender",
//! "IgnoreSharedCustomers", "Customers": [...]}`. A record carries no key of its own: it is matched to
//! a stored customer by its contact details and updates it, or else adds a new customer. The response
//! is one row per record, `{"LocationId", "FirstName", "LastName", "Email", "CustomerCode",
//! "CellPhone", "Dob", "Status", "Message"}`, with `Status` `Added`, `Updated` or `Error`.
//!
//! How the API's page is read where it leaves room:
//!
//! - **Matching.** By `Email`, else by `CustomerCode`, else by `CellPhone`: the first of them that the
//!   record has and that finds anyone decides. Emails and customer codes are compared trimmed and
//!   case-folded (the API's own database compares them without regard to case); phone numbers are
//!   compared in E.164, so `+1 (555) 010-0000` and `15550100000` are one number. Two or more customers
//!   found by that contact fail the record (`ambiguous_match`, naming them): it is never applied to one
//!   of them by guess. Only customers this API wrote are found (they carry the normalized values in
//!   `extra`); customers of the other dialects are keyed by their producers and are left alone.
//! - **Phone numbers** without a country calling code are read in the record's `Country`, or in the
//!   United States when it has none. A number that cannot be read as a complete number of that
//!   country (a 7-digit local number, letters) fails the record: it is a contact to match by, and
//!   dropping it would change what the record matches.
//! - **Locations.** A record's `LocationId` places a customer it adds in that location. A customer
//!   stored without one (added by a record without `LocationId`) is shared by all the tenant's
//!   locations. A record with a location matches the customers of that location and the shared ones,
//!   or only those of its location when `IgnoreSharedCustomers` is true; a record without a location
//!   matches shared customers only. An update never moves a customer: it stays where it was added.
//! - **Updates merge.** A record updates the fields it carries; the ones it leaves out keep their
//!   stored value. A value that cannot be resolved (an unknown country, note type or gender, a `Dob`
//!   that is not a date) is treated as not given, so it never overwrites a stored value. Two records
//!   of one batch that match the same customer are applied in order: the second updates the first.
//! - **Gender** is the API's integer enum, [`Gender`]: 0 Unknown, 1 Male, 2 Female, or those names.
//!   A customer added without a gender that resolves is Unknown, unless `RequireGender` refuses it.
//! - **Country and State** by ISO 3166 code or by name (`US`, `USA`, `840`, `United States`; `IL`,
//!   `Illinois`, `US-IL`), stored as the ISO 3166-1 alpha-2 and the ISO 3166-2 subdivision codes. A
//!   state is read within the record's country, or the United States when it gives none.
//! - **Dob** is `yyyy-mm-dd`; a full timestamp (the page's own sample) is accepted and its date, as
//!   written, kept. .NET's `0001-01-01` and dates in the future are not dates of birth.
//! - **Note types** are [`NoteType`]: General, Medical, Billing and Marketing, by name.
//! - **The Require\* flags** apply to adding only: a record that would add a customer and lacks the
//!   field, or whose value cannot be resolved, is refused (`required_for_add`, naming the field). A
//!   record that updates a customer is never refused by them.
//!
//! Matching needs the stored customers, so it runs in [`crate::store::contacts`], before the records
//! are applied, by the engine in [`crate::matching`]. This module reads the records (writing their
//! normalized contact values where the engine reads them, [`crate::matching::extra`]) and the body's
//! Require\* rules ([`Dialect::matching_rules`]); it never touches SQL.
//!
//! `body` reads the body and its records, `normalize` resolves the values records are matched
//! and refused by, and `response` renders the API's response.

mod body;
mod normalize;
mod response;

use serde_json::Value;

use super::{Dialect, Keying, Limits, Merge, Rejection};
use crate::matching::{self, Rules};
use crate::model::{Customer, ParsedRecord, RecordResult};

pub use normalize::{Gender, NoteType};

pub struct MatchByContact;

/// Names of the fields this dialect keeps in [`Customer::extra`]: the ones the matching engine
/// reads (the location, the note type and the normalized `match*` contact values, named by
/// [`crate::matching::extra`]) and the API's fields the common model has no place for.
pub mod extra {
    pub use crate::matching::extra::{
        LOCATION_ID, MATCH_CELL_PHONE, MATCH_CUSTOMER_CODE, MATCH_EMAIL, NOTE_TYPE,
    };

    pub const CUSTOMER_ID: &str = "customerId";
    pub const CUSTOMER_CODE: &str = "customerCode";
    pub const WORK_PHONE: &str = "workPhone";
    pub const NOTES: &str = "notes";
    pub const BALANCE: &str = "balance";
    pub const REWARD_POINTS: &str = "rewardPoints";
    pub const IMAGE: &str = "image";
    pub const NOP_EXTERNAL_ID: &str = "nopExternalId";
    pub const LEAD_SOURCE_ID: &str = "leadSourceId";
}

impl Dialect for MatchByContact {
    fn name(&self) -> &'static str {
        "match-by-contact"
    }

    fn parse(&self, body: &str, limits: Limits) -> Result<Vec<ParsedRecord>, Rejection> {
        body::read(body, limits)
    }

    fn renders_customers(&self) -> bool {
        true
    }

    fn render_response(&self, records: &[RecordResult], customers: &[Option<&Customer>]) -> Value {
        response::render(records, customers)
    }

    /// Rows are cut from the whole response: re-rendered from the results alone they would lose the
    /// customers' fields.
    fn slice_response(
        &self,
        response: &Value,
        records: &[RecordResult],
        range: std::ops::Range<usize>,
    ) -> Value {
        response::slice(response, records, range)
    }

    /// Cut from the whole response, like a part.
    fn response_without(
        &self,
        response: &Value,
        records: &[RecordResult],
        erased: &[usize],
    ) -> Value {
        response::without(response, records, erased)
    }

    fn keying(&self) -> Keying {
        Keying::ByContact
    }

    fn merge(&self) -> Option<Merge> {
        Some(matching::merge)
    }

    /// The body's options. `None` for a body [`MatchByContact::parse`] rejects; the records are
    /// skipped over, not decoded.
    fn matching_rules(&self, body: &str) -> Option<Rules> {
        body::rules(body)
    }
}

/// Parsing helpers for the tests of this dialect's modules.
#[cfg(test)]
mod testing {
    use serde_json::{Value, json};

    use super::{Dialect, Limits, MatchByContact};
    use crate::model::{Customer, ParsedRecord};

    pub(super) fn parse(body: &str) -> Vec<ParsedRecord> {
        MatchByContact
            .parse(body, Limits { max_records: 100 })
            .expect("body parses")
    }

    pub(super) fn one(record: Value) -> Customer {
        let body = json!({"Customers": [record]}).to_string();
        let mut records = parse(&body);
        records.remove(0).customer.expect("a valid record")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::testing::one;
    use super::*;
    use crate::matching::{Candidate, Contacts, Decision, Resolver};

    #[test]
    fn records_are_matched_by_their_normalized_contacts() {
        let stored = |key: &str, values: [Option<&str>; 3]| Candidate {
            id: None,
            key: key.to_owned(),
            contacts: Contacts {
                location: None,
                values: values.map(|v| v.map(str::to_owned)),
            },
        };
        let mut resolver = Resolver::new(Rules::default());
        resolver.set_candidates(vec![
            stored("by-email", [Some("a@example.com"), None, None]),
            stored("by-code", [None, Some("c-1"), None]),
            stored("by-phone", [None, None, Some("+15550100000")]),
        ]);
        let decide = |record: Value| match resolver.decide(&one(record), || "new".into()) {
            Decision::Add { key, .. } | Decision::Update { key, .. } => key,
            Decision::Refused(errors) => panic!("refused: {errors:?}"),
        };
        let both = json!({"Email": " A@Example.com ", "CustomerCode": "C-1"});
        assert_eq!(decide(both), "by-email");
        let code = json!({"Email": "z@example.com", "CustomerCode": " c-1 "});
        assert_eq!(decide(code), "by-code");
        assert_eq!(
            decide(json!({"CellPhone": "+1 (555) 010-0000"})),
            "by-phone"
        );
        let local = json!({"CellPhone": "555.010.0000", "Country": "USA"});
        assert_eq!(decide(local), "by-phone");
        let located = json!({"LocationId": 4, "Email": "a@example.com"});
        assert_eq!(decide(located), "by-email", "a shared customer is found");
        assert_eq!(decide(json!({"Email": "b@example.com"})), "new");
    }
}
