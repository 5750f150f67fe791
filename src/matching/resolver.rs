//! The [`Resolver`]: a batch's records decided one by one, in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use uuid::Uuid;

use super::{
    Candidate, Contact, Contacts, Decision, Rules, UNKNOWN_GENDER, extra, merge, set_location,
};
use crate::codes::FieldCode;
use crate::model::{Customer, FieldError};

/// A customer this batch has added or updated so far.
#[derive(Debug)]
struct Touched {
    id: Option<Uuid>,
    location: Option<String>,
    /// The contact values this batch gave it; where `None`, the stored value still holds.
    values: [Option<String>; 3],
    /// Everything this batch wrote to it, merged in record order.
    doc: Customer,
}

/// Decides, record by record and in order, which customer each record of a batch adds or updates.
///
/// It sees the candidates the store found for the records at hand ([`Resolver::set_candidates`])
/// and what the batch's earlier records did: a customer added earlier in the batch is found by the
/// later records, and a contact value changed earlier in the batch no longer finds the customer that
/// had it. The store calls it under locks on the contact values, so what it decides holds until the
/// decisions are recorded.
#[derive(Debug)]
pub struct Resolver {
    rules: Rules,
    candidates: Vec<Candidate>,
    /// Per [`Contact`]: value → positions in `candidates`.
    candidates_by_value: [HashMap<String, Vec<usize>>; 3],
    touched: HashMap<String, Touched>,
    /// Per [`Contact`]: value → keys this batch gave that value.
    touched_by_value: [HashMap<String, BTreeSet<String>>; 3],
}

impl Resolver {
    pub fn new(rules: Rules) -> Self {
        Resolver {
            rules,
            candidates: Vec::new(),
            candidates_by_value: Default::default(),
            touched: HashMap::new(),
            touched_by_value: Default::default(),
        }
    }

    /// The candidates for the next records (replacing the previous ones, read under locks that
    /// have since been released).
    pub fn set_candidates(&mut self, candidates: Vec<Candidate>) {
        let mut by_value: [HashMap<String, Vec<usize>>; 3] = Default::default();
        for (i, candidate) in candidates.iter().enumerate() {
            for contact in Contact::ALL {
                if let Some(value) = candidate.contacts.get(contact) {
                    by_value[contact as usize]
                        .entry(value.to_owned())
                        .or_default()
                        .push(i);
                }
            }
        }
        self.candidates = candidates;
        self.candidates_by_value = by_value;
    }

    /// What `customer` (a record as parsed) does: update the one customer found by its first
    /// contact that finds any, or else add one under `new_key` if the Require* rules allow it.
    pub fn decide(&self, customer: &Customer, new_key: impl FnOnce() -> String) -> Decision {
        let contacts = Contacts::of(customer);
        for contact in Contact::ALL {
            let Some(value) = contacts.get(contact) else {
                continue;
            };
            let found = self.find(contact, value, contacts.location.as_deref());
            let mut found = found.into_iter();
            match (found.next(), found.next()) {
                (None, _) => continue,
                (Some((key, (_, location))), None) => {
                    return Decision::Update {
                        key: key.to_owned(),
                        location: location.map(str::to_owned),
                    };
                }
                (Some(first), Some(second)) => {
                    let all: Vec<_> = [first, second].into_iter().chain(found).collect();
                    let names: Vec<String> = all
                        .iter()
                        .map(|(key, (id, _))| {
                            id.map_or_else(|| key.to_string(), |id| id.to_string())
                        })
                        .collect();
                    return Decision::Refused(vec![FieldError::new(
                        contact.field(),
                        FieldCode::AmbiguousMatch,
                        format!(
                            "{} matches {} customers ({}); the record is not applied to one of them by guess",
                            contact.field(),
                            names.len(),
                            names.join(", ")
                        ),
                    )]);
                }
            }
        }
        let missing = self.missing_for_add(customer);
        if missing.is_empty() {
            Decision::Add {
                key: new_key(),
                location: contacts.location,
            }
        } else {
            Decision::Refused(missing)
        }
    }

    /// Applies a decision (just made, or recorded by an earlier delivery of the batch): returns the
    /// record's key and the customer document to write, and remembers what the batch did.
    pub fn settle(
        &mut self,
        customer: &Customer,
        decision: &Decision,
    ) -> Result<(String, Customer), Vec<FieldError>> {
        let (key, location, adds) = match decision {
            Decision::Refused(errors) => return Err(errors.clone()),
            Decision::Add { key, location } => (key, location, true),
            Decision::Update { key, location } => (key, location, false),
        };
        let mut doc = customer.clone();
        set_location(&mut doc, location.as_deref());
        if adds && doc.gender.is_none() {
            doc.gender = Some(UNKNOWN_GENDER.to_owned());
        }
        let contacts = Contacts::of(&doc);
        let stored_id = self
            .candidates
            .iter()
            .find(|c| &c.key == key)
            .and_then(|c| c.id);
        let (doc, mut values, id) = match self.touched.remove(key) {
            // The pipeline writes only a key's last record; it carries what the earlier ones wrote.
            Some(earlier) => (merge(earlier.doc, doc), earlier.values, earlier.id),
            None => (doc, Default::default(), stored_id),
        };
        for contact in Contact::ALL {
            let Some(value) = contacts.get(contact) else {
                continue;
            };
            let slot = &mut values[contact as usize];
            if slot.as_deref() == Some(value) {
                continue;
            }
            let index = &mut self.touched_by_value[contact as usize];
            if let Some(old) = slot.take()
                && let Some(keys) = index.get_mut(&old)
            {
                keys.remove(key);
            }
            index
                .entry(value.to_owned())
                .or_default()
                .insert(key.clone());
            *slot = Some(value.to_owned());
        }
        self.touched.insert(
            key.clone(),
            Touched {
                id,
                location: location.clone(),
                values,
                doc: doc.clone(),
            },
        );
        Ok((key.clone(), doc))
    }

    /// The customers a contact value finds for a record in `location`: key → (id, location).
    fn find(
        &self,
        contact: Contact,
        value: &str,
        location: Option<&str>,
    ) -> BTreeMap<&str, (Option<Uuid>, Option<&str>)> {
        let mut found: BTreeMap<&str, (Option<Uuid>, Option<&str>)> = BTreeMap::new();
        let positions = self.candidates_by_value[contact as usize].get(value);
        for candidate in positions
            .into_iter()
            .flatten()
            .filter_map(|&i| self.candidates.get(i))
        {
            let (id, home) = match self.touched.get(&candidate.key) {
                // This batch gave it another value for this contact: the stored one is gone.
                Some(touched) if touched.values[contact as usize].is_some() => continue,
                Some(touched) => (touched.id.or(candidate.id), touched.location.as_deref()),
                None => (candidate.id, candidate.contacts.location.as_deref()),
            };
            if self.in_scope(home, location) {
                let entry = found.entry(candidate.key.as_str()).or_insert((id, home));
                entry.0 = entry.0.or(id);
            }
        }
        let keys = self.touched_by_value[contact as usize].get(value);
        // Every key indexed here is one `settle` keeps in `touched`.
        for (key, touched) in keys
            .into_iter()
            .flatten()
            .filter_map(|key| Some((key, self.touched.get(key)?)))
        {
            let home = touched.location.as_deref();
            if self.in_scope(home, location) {
                found.insert(key.as_str(), (touched.id, home));
            }
        }
        found
    }

    /// Whether a customer living in `home` can be matched by a record in `location`.
    fn in_scope(&self, home: Option<&str>, location: Option<&str>) -> bool {
        match (location, home) {
            (Some(location), Some(home)) => location == home,
            (Some(_), None) => !self.rules.ignore_shared_customers,
            (None, home) => home.is_none(),
        }
    }

    /// Why the Require* rules refuse to add this record, one error per missing field.
    fn missing_for_add(&self, customer: &Customer) -> Vec<FieldError> {
        let address = customer.address.as_ref();
        let checks = [
            (
                self.rules.require_country,
                address.and_then(|a| a.country.as_ref()).is_some(),
                "Country",
                "is missing or is not a known country",
            ),
            (
                self.rules.require_state,
                address.and_then(|a| a.state.as_ref()).is_some(),
                "State",
                "is missing or is not a known state of the customer's country",
            ),
            (
                self.rules.require_dob,
                customer.date_of_birth.is_some(),
                "Dob",
                "is missing or is not a date of birth (yyyy-mm-dd)",
            ),
            (
                self.rules.require_note,
                customer.extra.contains_key(extra::NOTE_TYPE),
                "NoteType",
                "is missing or is not a known note type (General, Medical, Billing, Marketing)",
            ),
            (
                self.rules.require_gender,
                customer.gender.is_some(),
                "Gender",
                "is missing or is not a known gender (0 Unknown, 1 Male, 2 Female)",
            ),
        ];
        checks
            .into_iter()
            .filter(|(required, present, _, _)| *required && !*present)
            .map(|(_, _, field, why)| {
                FieldError::new(
                    field,
                    FieldCode::RequiredForAdd,
                    format!(
                        "{field} {why}, and Require{} refuses to add a customer without it",
                        if field == "NoteType" { "Note" } else { field }
                    ),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::Address;

    /// A record as a dialect hands it over: its normalized contact values under the engine's names.
    fn by(contacts: &[(Contact, &str)]) -> Customer {
        let extra = contacts
            .iter()
            .map(|(contact, value)| (contact.extra_key().to_owned(), (*value).to_owned()))
            .collect();
        Customer {
            extra,
            ..Customer::default()
        }
    }

    fn email(value: &str) -> Customer {
        by(&[(Contact::Email, value)])
    }

    fn in_location(mut customer: Customer, location: &str) -> Customer {
        customer
            .extra
            .insert(extra::LOCATION_ID.to_owned(), location.to_owned());
        customer
    }

    fn with_city(customer: Customer, city: &str) -> Customer {
        Customer {
            address: Some(Address {
                city: Some(city.to_owned()),
                ..Address::default()
            }),
            ..customer
        }
    }

    fn stored(id: u128, key: &str, location: Option<&str>, values: [Option<&str>; 3]) -> Candidate {
        Candidate {
            id: Some(Uuid::from_u128(id)),
            key: key.to_owned(),
            contacts: Contacts {
                location: location.map(str::to_owned),
                values: values.map(|v| v.map(str::to_owned)),
            },
        }
    }

    fn resolver(rules: Rules, candidates: Vec<Candidate>) -> Resolver {
        let mut resolver = Resolver::new(rules);
        resolver.set_candidates(candidates);
        resolver
    }

    fn key_of(decision: &Decision) -> &str {
        match decision {
            Decision::Add { key, .. } | Decision::Update { key, .. } => key,
            Decision::Refused(errors) => panic!("refused: {errors:?}"),
        }
    }

    #[test]
    fn email_is_tried_before_customer_code_and_cell_phone() {
        let resolver = resolver(
            Rules::default(),
            vec![
                stored(1, "by-email", None, [Some("a@example.com"), None, None]),
                stored(2, "by-code", None, [None, Some("c-1"), None]),
                stored(3, "by-phone", None, [None, None, Some("+15550100000")]),
            ],
        );
        let decide = |record: Customer| resolver.decide(&record, || "new".into());
        let all = by(&[
            (Contact::Email, "a@example.com"),
            (Contact::CustomerCode, "c-1"),
            (Contact::CellPhone, "+15550100000"),
        ]);
        assert_eq!(key_of(&decide(all)), "by-email");
        let code = by(&[
            (Contact::Email, "z@example.com"),
            (Contact::CustomerCode, "c-1"),
            (Contact::CellPhone, "+15550100000"),
        ]);
        assert_eq!(key_of(&decide(code)), "by-code");
        let phone = by(&[(Contact::CellPhone, "+15550100000")]);
        assert_eq!(key_of(&decide(phone)), "by-phone");
        assert_eq!(
            decide(email("new@example.com")),
            Decision::Add {
                key: "new".into(),
                location: None
            }
        );
    }

    #[test]
    fn two_customers_with_the_contact_are_ambiguous_and_named() {
        let resolver = resolver(
            Rules::default(),
            vec![
                stored(1, "a", None, [Some("a@example.com"), None, None]),
                stored(2, "b", None, [Some("a@example.com"), None, None]),
            ],
        );
        let Decision::Refused(errors) = resolver.decide(&email("a@example.com"), || "new".into())
        else {
            panic!("not refused");
        };
        assert_eq!(errors[0].code, FieldCode::AmbiguousMatch);
        assert_eq!(errors[0].field, "Email");
        assert!(errors[0].message.contains(&Uuid::from_u128(1).to_string()));
        assert!(errors[0].message.contains(&Uuid::from_u128(2).to_string()));
    }

    #[test]
    fn require_flags_refuse_an_add_but_not_an_update() {
        let rules = Rules {
            require_country: true,
            require_state: true,
            require_dob: true,
            require_note: true,
            require_gender: true,
            ignore_shared_customers: false,
        };
        let resolver = resolver(
            rules,
            vec![stored(
                1,
                "known",
                None,
                [Some("known@example.com"), None, None],
            )],
        );
        let Decision::Refused(errors) = resolver.decide(&email("new@example.com"), || "new".into())
        else {
            panic!("an add without the required fields is refused");
        };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["Country", "State", "Dob", "NoteType", "Gender"]);
        assert!(errors.iter().all(|e| e.code == FieldCode::RequiredForAdd));
        assert!(errors[0].message.contains("RequireCountry"));
        assert!(errors[3].message.contains("RequireNote"));
        assert_eq!(
            key_of(&resolver.decide(&email("known@example.com"), || "new".into())),
            "known"
        );
        let mut complete = Customer {
            address: Some(Address {
                country: Some("US".into()),
                state: Some("IL".into()),
                ..Address::default()
            }),
            date_of_birth: Some("1990-01-01".into()),
            gender: Some("U".into()),
            ..email("new@example.com")
        };
        complete
            .extra
            .insert(extra::NOTE_TYPE.into(), "General".into());
        assert_eq!(key_of(&resolver.decide(&complete, || "new".into())), "new");
    }

    #[test]
    fn an_added_customer_without_a_gender_is_unknown_and_an_update_keeps_the_stored_one() {
        let mut resolver = resolver(Rules::default(), vec![]);
        let customer = email("a@example.com");
        let add = resolver.decide(&customer, || "k".into());
        let (_, doc) = resolver.settle(&customer, &add).unwrap();
        assert_eq!(doc.gender.as_deref(), Some("U"));
        let update = Decision::Update {
            key: "stored".into(),
            location: None,
        };
        let (_, doc) = resolver.settle(&customer, &update).unwrap();
        assert_eq!(doc.gender, None, "left to the stored value by the merge");
    }

    #[test]
    fn a_later_record_of_the_batch_updates_the_customer_an_earlier_one_added() {
        let mut resolver = resolver(Rules::default(), vec![]);
        let first = Customer {
            first_name: Some("Ada".into()),
            ..with_city(email("a@example.com"), "Paris")
        };
        let second = Customer {
            last_name: Some("Lovelace".into()),
            ..with_city(email("a@example.com"), "Rome")
        };
        let decision = resolver.decide(&first, || "k1".into());
        resolver.settle(&first, &decision).unwrap();
        let decision = resolver.decide(&second, || "k2".into());
        assert_eq!(
            decision,
            Decision::Update {
                key: "k1".into(),
                location: None
            }
        );
        let (key, doc) = resolver.settle(&second, &decision).unwrap();
        assert_eq!(key, "k1");
        assert_eq!(doc.first_name.as_deref(), Some("Ada"));
        assert_eq!(doc.last_name.as_deref(), Some("Lovelace"));
        assert_eq!(doc.address.unwrap().city.as_deref(), Some("Rome"));
    }

    #[test]
    fn a_contact_changed_earlier_in_the_batch_no_longer_finds_the_customer() {
        let mut resolver = resolver(
            Rules::default(),
            vec![stored(
                1,
                "k0",
                None,
                [Some("old@example.com"), Some("c-1"), None],
            )],
        );
        let change = by(&[
            (Contact::CustomerCode, "c-1"),
            (Contact::Email, "new@example.com"),
        ]);
        let decision = resolver.decide(&change, || "unused".into());
        assert_eq!(key_of(&decision), "k0");
        resolver.settle(&change, &decision).unwrap();
        let by_old = email("old@example.com");
        assert_eq!(key_of(&resolver.decide(&by_old, || "k9".into())), "k9");
        let by_new = email("new@example.com");
        assert_eq!(key_of(&resolver.decide(&by_new, || "k9".into())), "k0");
    }

    #[test]
    fn matching_stays_in_the_location_and_shared_customers_can_be_ignored() {
        let candidates = vec![
            stored(1, "north", Some("1"), [Some("n@example.com"), None, None]),
            stored(2, "shared", None, [Some("s@example.com"), None, None]),
        ];
        let decide = |rules: Rules, record: Customer| {
            resolver(rules, candidates.clone()).decide(&record, || "new".into())
        };
        let rules = Rules::default();
        let ignoring = Rules {
            ignore_shared_customers: true,
            ..rules
        };
        let north = email("n@example.com");
        let shared = email("s@example.com");
        assert_eq!(
            key_of(&decide(rules, in_location(north.clone(), "1"))),
            "north"
        );
        assert_eq!(
            key_of(&decide(rules, in_location(north.clone(), "2"))),
            "new"
        );
        assert_eq!(key_of(&decide(rules, north)), "new");
        assert_eq!(
            decide(rules, in_location(shared.clone(), "2")),
            Decision::Update {
                key: "shared".into(),
                location: None
            },
            "an update leaves a shared customer shared"
        );
        assert_eq!(
            key_of(&decide(ignoring, in_location(shared.clone(), "2"))),
            "new"
        );
        assert_eq!(key_of(&decide(ignoring, shared)), "shared");
    }

    #[test]
    fn a_settled_record_keeps_its_stored_location_on_update() {
        let mut resolver = resolver(Rules::default(), vec![]);
        let record = in_location(email("a@example.com"), "2");
        let update = Decision::Update {
            key: "k".into(),
            location: Some("1".into()),
        };
        let (_, doc) = resolver.settle(&record, &update).unwrap();
        assert_eq!(
            doc.extra,
            BTreeMap::from([
                (extra::LOCATION_ID.to_owned(), "1".to_owned()),
                (extra::MATCH_EMAIL.to_owned(), "a@example.com".to_owned()),
            ])
        );
    }
}
