//! Field rules shared by the dialects: text limits and email syntax.

use crate::codes::FieldCode;
use crate::model::FieldError;

/// Longest key a producer may send.
pub const MAX_KEY_CHARS: usize = 100;
/// Longest free-text field.
pub const MAX_TEXT_CHARS: usize = 255;

/// Collects the errors of one record while its fields are checked.
#[derive(Debug, Default)]
pub struct Checker {
    pub errors: Vec<FieldError>,
}

impl Checker {
    /// Trims `value`, refuses control characters (Postgres cannot store NUL in a JSON document) and
    /// text over `max` characters; an empty value counts as absent.
    pub fn text(&mut self, field: &str, value: Option<String>, max: usize) -> Option<String> {
        let value = value?;
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return None;
        }
        if trimmed.chars().any(char::is_control) {
            self.errors.push(FieldError::new(
                field,
                FieldCode::InvalidCharacter,
                format!("{field} contains a control character"),
            ));
            return None;
        }
        let chars = trimmed.chars().count();
        if chars > max {
            self.errors.push(FieldError::new(
                field,
                FieldCode::TooLong,
                format!("{field} is {chars} characters long; at most {max} are allowed"),
            ));
            return None;
        }
        Some(trimmed.to_owned())
    }

    /// Like [`Checker::text`], but the field must be present.
    pub fn required_text(
        &mut self,
        field: &str,
        value: Option<String>,
        max: usize,
    ) -> Option<String> {
        let before = self.errors.len();
        let checked = self.text(field, value, max);
        if checked.is_none() && self.errors.len() == before {
            self.errors.push(FieldError::new(
                field,
                FieldCode::Required,
                format!("{field} is required"),
            ));
        }
        checked
    }

    /// An email address, checked for syntax and stored trimmed.
    pub fn email(&mut self, field: &str, value: Option<String>) -> Option<String> {
        let value = self.text(field, value, MAX_TEXT_CHARS)?;
        if email_address::EmailAddress::is_valid(&value) {
            Some(value)
        } else {
            self.errors.push(FieldError::new(
                field,
                FieldCode::InvalidEmail,
                format!("{field} is not a valid email address"),
            ));
            None
        }
    }

    pub fn texts(&mut self, field: &str, values: Vec<String>, max: usize) -> Vec<String> {
        values
            .into_iter()
            .enumerate()
            .filter_map(|(i, value)| self.text(&format!("{field}[{i}]"), Some(value), max))
            .collect()
    }
}

/// Decodes one record's JSON text. Most records decode, so they are decoded without tracking where
/// in the record the decoder is, which costs about as much as the decoding; a record that fails is
/// decoded again with that tracking, for the path of the field at fault.
pub fn decode_record<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, FieldError> {
    if let Ok(record) = T::deserialize(&mut serde_json::Deserializer::from_str(raw)) {
        return Ok(record);
    }
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(raw))
        .map_err(decode_error)
}

/// A record that serde could not decode: the field path and what was wrong with it.
pub fn decode_error(error: serde_path_to_error::Error<serde_json::Error>) -> FieldError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    // serde_json appends " at line L column C"; the position inside one record helps no one.
    let message = inner.to_string();
    let message = match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    };
    let code = if message.starts_with("unknown field") {
        FieldCode::UnknownField
    } else if message.starts_with("missing field") {
        FieldCode::Required
    } else if message.starts_with("invalid type") {
        FieldCode::InvalidType
    } else {
        FieldCode::InvalidValue
    };
    let field = if path == "." { String::new() } else { path };
    FieldError::new(field, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Record {
        items: Option<Vec<Item>>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        n: Option<i64>,
    }

    #[test]
    fn a_record_that_fails_to_decode_names_the_field_at_fault() {
        let record: Record = decode_record(r#"{"items": [{"n": 1}]}"#).unwrap();
        assert_eq!(record.items.unwrap()[0].n, Some(1));

        let error = decode_record::<Record>(r#"{"items": [{"n": 1}, {"n": "x"}]}"#).unwrap_err();
        assert_eq!(error.field, "items[1].n");
        assert_eq!(error.code, FieldCode::InvalidType);
        let error = decode_record::<Record>(r#"{"items": [{"m": 1}]}"#).unwrap_err();
        assert_eq!(error.field, "items[0].m");
        assert_eq!(error.code, FieldCode::UnknownField);
    }

    #[test]
    fn text_is_trimmed_and_empty_counts_as_absent() {
        let mut checker = Checker::default();
        assert_eq!(checker.text("f", Some("  a ".into()), 5), Some("a".into()));
        assert_eq!(checker.text("f", Some("   ".into()), 5), None);
        assert!(checker.errors.is_empty());
    }

    #[test]
    fn nul_and_overlong_text_are_refused() {
        let mut checker = Checker::default();
        assert_eq!(checker.text("f", Some("a\u{0}b".into()), 5), None);
        assert_eq!(checker.text("g", Some("abcdef".into()), 5), None);
        let codes: Vec<_> = checker.errors.iter().map(|e| e.code.as_str()).collect();
        assert_eq!(codes, ["invalid_character", "too_long"]);
    }

    #[test]
    fn a_malformed_email_is_refused() {
        let mut checker = Checker::default();
        assert_eq!(checker.email("email", Some("not-an-email".into())), None);
        assert_eq!(
            checker.email("email", Some("a@example.com".into())),
            Some("a@example.com".into())
        );
        assert_eq!(checker.errors.len(), 1);
        assert_eq!(checker.errors[0].code, FieldCode::InvalidEmail);
    }
}
