//! Contact matching: which customer a record that carries no key of its own updates, or whether it
//! adds one. Used by the `match-by-contact` dialect, which reads the records and their rules, and by
//! [`crate::store::contacts`], which finds the candidates and records the decisions.
//!
//! A record is matched by its normalized contact values ([`Contact`]), in order: the first that
//! finds anyone decides. One customer found is updated; two or more refuse the record
//! (`ambiguous_match`); none adds a customer, unless a Require\* rule refuses it. A record sees the
//! customers of its location and the shared ones (those stored without a location), and an update
//! never moves a customer.
//!
//! The engine reads a record from the common [`Customer`]: its contact values and location are kept
//! in [`Customer::extra`] under the names in [`extra`]. It knows nothing of the wire body or of SQL.

mod resolver;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model::{Address, Customer, FieldError};

pub use resolver::Resolver;

/// The names under which a matched customer keeps, in [`Customer::extra`], what the engine reads.
/// The `match*` values are normalized (emails and customer codes trimmed and case-folded, phone
/// numbers in E.164) by the dialect that writes them. Migration
/// `20261123000002_contact_matching.sql` indexes the `match*` ones, and [`crate::store::contacts`]
/// finds customers by them: renaming one strands the customers stored under the old name.
pub mod extra {
    /// The customer's location; absent for a customer shared by all the tenant's locations.
    pub const LOCATION_ID: &str = "locationId";
    /// The type of the customer's note: what [`super::Rules::require_note`] asks for.
    pub const NOTE_TYPE: &str = "noteType";
    pub const MATCH_EMAIL: &str = "matchEmail";
    pub const MATCH_CUSTOMER_CODE: &str = "matchCustomerCode";
    pub const MATCH_CELL_PHONE: &str = "matchCellPhone";
}

/// The common model's gender of a customer added without one.
const UNKNOWN_GENDER: &str = "U";

/// Options that hold for every record of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// Refuse to add a customer without a country.
    pub require_country: bool,
    /// Refuse to add a customer without a state.
    pub require_state: bool,
    /// Refuse to add a customer without a date of birth.
    pub require_dob: bool,
    /// Refuse to add a customer without a note type.
    pub require_note: bool,
    /// Refuse to add a customer without a gender.
    pub require_gender: bool,
    /// A record with a location matches the customers of its location only, not the shared ones.
    pub ignore_shared_customers: bool,
}

/// A contact a record is matched by, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contact {
    Email = 0,
    CustomerCode = 1,
    CellPhone = 2,
}

impl Contact {
    pub const ALL: [Contact; 3] = [Contact::Email, Contact::CustomerCode, Contact::CellPhone];

    /// The API's field name.
    pub fn field(self) -> &'static str {
        match self {
            Contact::Email => "Email",
            Contact::CustomerCode => "CustomerCode",
            Contact::CellPhone => "CellPhone",
        }
    }

    /// The name of the normalized value in [`Customer::extra`].
    pub fn extra_key(self) -> &'static str {
        match self {
            Contact::Email => extra::MATCH_EMAIL,
            Contact::CustomerCode => extra::MATCH_CUSTOMER_CODE,
            Contact::CellPhone => extra::MATCH_CELL_PHONE,
        }
    }
}

/// Where a customer lives and the normalized contact values it is found by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contacts {
    /// `None`: shared by all the tenant's locations.
    pub location: Option<String>,
    /// By [`Contact`].
    pub values: [Option<String>; 3],
}

impl Contacts {
    pub fn of(customer: &Customer) -> Contacts {
        Contacts {
            location: customer.extra.get(extra::LOCATION_ID).cloned(),
            values: Contact::ALL.map(|contact| customer.extra.get(contact.extra_key()).cloned()),
        }
    }

    pub fn get(&self, contact: Contact) -> Option<&str> {
        self.values[contact as usize].as_deref()
    }
}

/// A customer that shares a contact value with records being resolved: stored, or about to be
/// written by another batch that resolved it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `None` while the customer is not stored yet.
    pub id: Option<Uuid>,
    pub key: String,
    pub contacts: Contacts,
}

/// What becomes of one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A new customer under a new key, in `location`.
    Add {
        key: String,
        location: Option<String>,
    },
    /// The customer with this key, which lives in `location`.
    Update {
        key: String,
        location: Option<String>,
    },
    /// The record fails.
    Refused(Vec<FieldError>),
}

/// The key of the customer that record `index` of a batch adds. Derived from the batch, so that a
/// batch resolved again after a crash adds under the same keys.
pub fn new_key(tenant: &str, batch_id: &str, index: usize) -> String {
    let digest = Sha256::new()
        .chain_update(tenant)
        .chain_update([0x1f])
        .chain_update(batch_id)
        .chain_update([0x1f])
        .chain_update(index.to_le_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    format!(
        "contact:{}",
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    )
}

/// `incoming`'s fields over `stored`'s: what a record leaves out keeps its stored value. The
/// location is the stored one, whatever the record says: an update never moves a customer.
pub fn merge(stored: Customer, incoming: Customer) -> Customer {
    let mut merged = stored;
    let location = merged.extra.get(extra::LOCATION_ID).cloned();
    merged.first_name = incoming.first_name.or(merged.first_name);
    merged.last_name = incoming.last_name.or(merged.last_name);
    merged.email = incoming.email.or(merged.email);
    merged.phone = incoming.phone.or(merged.phone);
    merged.date_of_birth = incoming.date_of_birth.or(merged.date_of_birth);
    merged.gender = incoming.gender.or(merged.gender);
    merged.address = match (merged.address.take(), incoming.address) {
        (Some(stored), Some(incoming)) => Some(Address {
            street1: incoming.street1.or(stored.street1),
            street2: incoming.street2.or(stored.street2),
            city: incoming.city.or(stored.city),
            state: incoming.state.or(stored.state),
            postal_code: incoming.postal_code.or(stored.postal_code),
            country: incoming.country.or(stored.country),
        }),
        (stored, incoming) => incoming.or(stored),
    };
    merged.extra.extend(incoming.extra);
    set_location(&mut merged, location.as_deref());
    merged
}

fn set_location(customer: &mut Customer, location: Option<&str>) {
    match location {
        Some(location) => customer
            .extra
            .insert(extra::LOCATION_ID.to_owned(), location.to_owned()),
        None => customer.extra.remove(extra::LOCATION_ID),
    };
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn an_update_keeps_stored_fields_and_never_moves_the_customer() {
        let stored = Customer {
            first_name: Some("Ada".into()),
            address: Some(Address {
                city: Some("Paris".into()),
                postal_code: Some("75001".into()),
                ..Address::default()
            }),
            extra: BTreeMap::from([
                (extra::LOCATION_ID.into(), "1".into()),
                (extra::MATCH_EMAIL.into(), "a@example.com".into()),
                ("notes".into(), "old".into()),
            ]),
            ..Customer::default()
        };
        let incoming = Customer {
            address: Some(Address {
                city: Some("Rome".into()),
                ..Address::default()
            }),
            extra: BTreeMap::from([
                (extra::LOCATION_ID.into(), "2".into()),
                (extra::MATCH_EMAIL.into(), "a@example.com".into()),
                ("notes".into(), "new".into()),
            ]),
            ..Customer::default()
        };
        let merged = merge(stored, incoming);
        assert_eq!(merged.first_name.as_deref(), Some("Ada"));
        let address = merged.address.as_ref().unwrap();
        assert_eq!(address.city.as_deref(), Some("Rome"));
        assert_eq!(address.postal_code.as_deref(), Some("75001"));
        assert_eq!(merged.extra.get("notes").map(String::as_str), Some("new"));
        assert_eq!(
            merged.extra.get(extra::LOCATION_ID).map(String::as_str),
            Some("1")
        );
    }

    #[test]
    fn new_keys_are_the_same_for_the_same_record_of_the_same_batch() {
        assert_eq!(new_key("t", "b", 3), new_key("t", "b", 3));
        assert_ne!(new_key("t", "b", 3), new_key("t", "b", 4));
        assert_ne!(new_key("t", "b", 3), new_key("u", "b", 3));
        assert!(new_key("t", "b", 3).starts_with("contact:"));
    }

    #[test]
    fn contacts_are_read_from_the_engines_names() {
        let customer = Customer {
            extra: BTreeMap::from([
                (extra::LOCATION_ID.into(), "7".into()),
                (extra::MATCH_EMAIL.into(), "a@example.com".into()),
                (extra::MATCH_CELL_PHONE.into(), "+15550100000".into()),
                ("customerCode".into(), "C-1".into()),
            ]),
            ..Customer::default()
        };
        let contacts = Contacts::of(&customer);
        assert_eq!(contacts.location.as_deref(), Some("7"));
        assert_eq!(contacts.get(Contact::Email), Some("a@example.com"));
        assert_eq!(contacts.get(Contact::CustomerCode), None);
        assert_eq!(contacts.get(Contact::CellPhone), Some("+15550100000"));
    }
}
