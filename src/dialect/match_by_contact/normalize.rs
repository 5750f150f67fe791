//! The values a record is matched and refused by, resolved from what producers write: gender and
//! note type by the API's names, country and state by ISO 3166 code or name, phone numbers to
//! E.164, dates of birth, and the case folding of emails and customer codes.

use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;

/// The API's `Gender` enum. Its integer values are what producers send; the names are accepted too,
/// in any case. Stored as the common model's `U`, `M`, `F`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gender {
    /// 0: the default, for a customer added without a gender that resolves.
    Unknown = 0,
    /// 1.
    Male = 1,
    /// 2.
    Female = 2,
}

impl Gender {
    /// A number or a name; anything else does not resolve.
    pub(super) fn resolve(value: &Value) -> Option<Gender> {
        match value {
            Value::Number(number) => Gender::from_number(number.as_i64()?),
            Value::String(text) => {
                let text = text.trim();
                match text.parse::<i64>() {
                    Ok(number) => Gender::from_number(number),
                    Err(_) => [Gender::Unknown, Gender::Male, Gender::Female]
                        .into_iter()
                        .find(|g| g.name().eq_ignore_ascii_case(text)),
                }
            }
            _ => None,
        }
    }

    fn from_number(number: i64) -> Option<Gender> {
        match number {
            0 => Some(Gender::Unknown),
            1 => Some(Gender::Male),
            2 => Some(Gender::Female),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Gender::Unknown => "Unknown",
            Gender::Male => "Male",
            Gender::Female => "Female",
        }
    }

    /// The common model's code.
    pub(super) fn code(self) -> &'static str {
        match self {
            Gender::Unknown => "U",
            Gender::Male => "M",
            Gender::Female => "F",
        }
    }
}

/// The note types the API knows, by name (any case). A note of another type is kept without a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteType {
    General,
    Medical,
    Billing,
    Marketing,
}

impl NoteType {
    const ALL: [NoteType; 4] = [
        NoteType::General,
        NoteType::Medical,
        NoteType::Billing,
        NoteType::Marketing,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            NoteType::General => "General",
            NoteType::Medical => "Medical",
            NoteType::Billing => "Billing",
            NoteType::Marketing => "Marketing",
        }
    }

    pub(super) fn resolve(text: &str) -> Option<NoteType> {
        NoteType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(text.trim()))
    }
}

/// Emails and customer codes are compared without regard to case or surrounding spaces.
pub(super) fn fold_case(text: &str) -> String {
    text.trim().to_lowercase()
}

/// Where numbers without a calling code, and states without a country, are read.
pub(super) const DEFAULT_COUNTRY: &str = "US";

/// The ISO 3166-1 alpha-2 code of a country given by alpha-2, alpha-3 or numeric code, by name or by
/// a common alias, in any case and spacing.
pub(super) fn resolve_country(text: &str) -> Option<&'static str> {
    // celes knows names without spaces or punctuation ("UnitedStates", "GuineaBissau").
    let squeezed: String = text
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '.' | '-' | '_' | '\'' | ','))
        .collect();
    celes::Country::from_str(&squeezed)
        .ok()
        .map(|country| country.alpha2)
}

/// The subdivision code (`IL`) of a state given by name or code within `country` (the United
/// States when the record names no country), or by its full ISO 3166-2 code (`US-IL`), which also
/// names the country. A record whose country did not resolve has no country to read a short code in.
/// Only a full code supplies a missing country: reading a state in the default country is a guess
/// that must not satisfy `RequireCountry`.
pub(super) fn resolve_state(
    text: &str,
    country: Option<&'static str>,
    country_given: bool,
) -> Option<(&'static str, Option<&'static str>)> {
    if let Some(subdivision) = rust_iso3166::iso3166_2::from_code(&text.to_uppercase()) {
        let agrees = match country {
            Some(country) => country == subdivision.country_code,
            None => !country_given,
        };
        return agrees.then_some((subdivision.region_code, Some(subdivision.country_code)));
    }
    let country = match country {
        Some(country) => country,
        None if !country_given => DEFAULT_COUNTRY,
        None => return None,
    };
    let wanted = text.to_lowercase();
    rust_iso3166::from_alpha2(country)?
        .subdivisions()?
        .iter()
        .find(|s| s.region_code.eq_ignore_ascii_case(text) || s.name.to_lowercase() == wanted)
        .map(|s| (s.region_code, None))
}

/// The E.164 form of a phone number, read in `country` (or [`DEFAULT_COUNTRY`]) when it has no
/// calling code. Only a number as long as that country's numbers is accepted: a local number without
/// its area code would match different people in different places.
pub(super) fn normalize_phone(text: &str, country: Option<&str>) -> Option<String> {
    let region = phonenumber::country::Id::from_str(country.unwrap_or(DEFAULT_COUNTRY)).ok();
    let number = phonenumber::parse(region, text).ok()?;
    // The metadata of the calling code's main country: a number need not be assigned (555 numbers
    // are not) to be a complete one.
    let metas = phonenumber::metadata::DATABASE.by_code(&number.code().value())?;
    let meta = metas
        .iter()
        .find(|meta| meta.is_main_country_for_code())
        .or(metas.first())?;
    let kinds = meta.descriptors();
    let digits = number.national().to_string().len();
    let complete = [
        kinds.fixed_line(),
        kinds.mobile(),
        kinds.toll_free(),
        kinds.premium_rate(),
        kinds.shared_cost(),
        kinds.personal_number(),
        kinds.voip(),
        kinds.pager(),
        kinds.uan(),
        kinds.voicemail(),
    ]
    .into_iter()
    .flatten()
    .flat_map(|kind| kind.possible_length())
    .any(|&length| usize::from(length) == digits);
    complete.then(|| number.format().mode(phonenumber::Mode::E164).to_string())
}

/// A date of birth: `yyyy-mm-dd`, or the date of a timestamp as written (not moved to UTC, which
/// could change the day).
pub(super) fn resolve_dob(text: &str) -> Option<NaiveDate> {
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .or_else(|| {
            DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.date_naive())
        })
        .or_else(|| text.parse::<NaiveDateTime>().ok().map(|t| t.date()))?;
    // .NET's DateTime.MinValue, 0001-01-01, is how many producers say "no date".
    let unset = date.year() == 1 && date.ordinal() == 1;
    (!unset && date <= Utc::now().date_naive()).then_some(date)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::extra;
    use super::super::testing::one;
    use super::*;

    #[test]
    fn gender_is_read_by_number_or_name_and_otherwise_left_unresolved() {
        for (gender, expected) in [
            (json!(0), Some("U")),
            (json!(1), Some("M")),
            (json!(2), Some("F")),
            (json!("female"), Some("F")),
            (json!("Male"), Some("M")),
            (json!("UNKNOWN"), Some("U")),
            (json!("2"), Some("F")),
            (json!(7), None),
            (json!("robot"), None),
            (json!(true), None),
            (Value::Null, None),
        ] {
            let customer = one(json!({"Gender": gender}));
            assert_eq!(customer.gender.as_deref(), expected, "{gender}");
        }
    }

    #[test]
    fn countries_and_states_are_read_by_code_or_name() {
        let place = |country: Value, state: Value| {
            let customer = one(json!({"Country": country, "State": state}));
            let address = customer.address.unwrap_or_default();
            (address.country, address.state)
        };
        let us_il = (Some("US".to_owned()), Some("IL".to_owned()));
        for country in [
            "US",
            "usa",
            "United States",
            "United States of America",
            "840",
        ] {
            assert_eq!(place(json!(country), json!("Illinois")), us_il, "{country}");
            assert_eq!(place(json!(country), json!("il")), us_il, "{country}");
        }
        // Without a country a state is read in the United States (which it does not make the
        // customer's country), or by its full code anywhere.
        assert_eq!(
            place(Value::Null, json!("IL")),
            (None, Some("IL".to_owned()))
        );
        assert_eq!(
            place(Value::Null, json!("CA-ON")),
            (Some("CA".to_owned()), Some("ON".to_owned()))
        );
        assert_eq!(
            place(json!("Canada"), json!("Ontario")),
            (Some("CA".to_owned()), Some("ON".to_owned()))
        );
        // Not a state of that country, or no country to read it in: unresolved, not an error.
        assert_eq!(place(json!("Canada"), json!("Illinois")).1, None);
        assert_eq!(place(json!("Narnia"), json!("IL")), (None, None));
        assert_eq!(place(json!("DE"), json!("US-IL")).1, None);
    }

    #[test]
    fn a_dob_is_a_date_or_the_date_of_a_timestamp() {
        let dob = |text: &str| one(json!({"Dob": text})).date_of_birth;
        assert_eq!(dob("1990-02-28").as_deref(), Some("1990-02-28"));
        assert_eq!(
            dob("2024-10-18T01:16:57.8984692-04:00").as_deref(),
            Some("2024-10-18")
        );
        // The date as written, not the UTC date (which is the 19th here).
        assert_eq!(
            dob("2024-10-18T23:30:00-04:00").as_deref(),
            Some("2024-10-18")
        );
        assert_eq!(dob("1990-02-28T00:00:00").as_deref(), Some("1990-02-28"));
        for unresolved in [
            "1990-02-30",
            "28/02/1990",
            "yesterday",
            "0001-01-01T00:00:00",
            "2999-01-01",
        ] {
            assert_eq!(dob(unresolved), None, "{unresolved}");
        }
    }

    #[test]
    fn phone_numbers_are_compared_in_e164() {
        let cell = |phone: &str, country: Value| {
            one(json!({"CellPhone": phone, "Country": country}))
                .extra
                .get(extra::MATCH_CELL_PHONE)
                .cloned()
        };
        let us = Some("+15550100000".to_owned());
        assert_eq!(cell("+1 (555) 010-0000", Value::Null), us);
        assert_eq!(cell("15550100000", Value::Null), us);
        assert_eq!(cell("555.010.0000", json!("US")), us);
        // Without a calling code, a number is read in the record's country.
        assert_eq!(
            cell("07911 123456", json!("United Kingdom")),
            Some("+447911123456".to_owned())
        );
        assert_eq!(
            cell("+44 7911 123456", json!("US")),
            Some("+447911123456".to_owned())
        );
    }

    #[test]
    fn note_types_are_known_by_name() {
        let note = |t: &str| {
            one(json!({"NoteType": t}))
                .extra
                .get(extra::NOTE_TYPE)
                .cloned()
        };
        assert_eq!(note("medical").as_deref(), Some("Medical"));
        assert_eq!(note("Billing").as_deref(), Some("Billing"));
        assert_eq!(note("MARKETING").as_deref(), Some("Marketing"));
        assert_eq!(note("Gossip"), None);
    }
}
