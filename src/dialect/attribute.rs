//! The types of the common model's typed attributes ([`crate::model::Attribute`]) and the values
//! each accepts, for every dialect that carries attributes (`upsert-by-id`, `customers.v1`).

use chrono::{DateTime, NaiveDate};

/// An attribute's `type`, stored by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeType {
    Text,
    Enum,
    EnumList,
    Integer,
    Decimal,
    Date,
    DateTime,
    Color,
}

impl AttributeType {
    pub const ALL: [AttributeType; 8] = [
        AttributeType::Text,
        AttributeType::Enum,
        AttributeType::EnumList,
        AttributeType::Integer,
        AttributeType::Decimal,
        AttributeType::Date,
        AttributeType::DateTime,
        AttributeType::Color,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AttributeType::Text => "text",
            AttributeType::Enum => "enum",
            AttributeType::EnumList => "enumlist",
            AttributeType::Integer => "integer",
            AttributeType::Decimal => "decimal",
            AttributeType::Date => "date",
            AttributeType::DateTime => "datetime",
            AttributeType::Color => "color",
        }
    }

    /// The type of this name, exactly as written.
    pub fn from_name(name: &str) -> Option<AttributeType> {
        AttributeType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Every type's name, for a message that lists them.
    pub fn names() -> String {
        AttributeType::ALL.map(AttributeType::name).join(", ")
    }

    /// Whether `value` is a value of this type.
    pub fn fits(self, value: &str) -> bool {
        match self {
            AttributeType::Integer => value.parse::<i64>().is_ok(),
            AttributeType::Decimal => value.parse::<f64>().is_ok_and(f64::is_finite),
            AttributeType::Date => NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok(),
            AttributeType::DateTime => DateTime::parse_from_rfc3339(value).is_ok(),
            AttributeType::Color => {
                let hex = value.strip_prefix('#').unwrap_or("");
                matches!(hex.len(), 3 | 6) && hex.chars().all(|c| c.is_ascii_hexdigit())
            }
            AttributeType::EnumList => value.split(',').all(|item| !item.trim().is_empty()),
            AttributeType::Text | AttributeType::Enum => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values_are_checked_by_type() {
        use AttributeType::*;
        assert!(Integer.fits("-3"));
        assert!(!Integer.fits("3.5"));
        assert!(Decimal.fits("3.5"));
        assert!(Date.fits("2024-02-29"));
        assert!(!Date.fits("2023-02-29"));
        assert!(DateTime.fits("2024-10-18T01:16:57-04:00"));
        assert!(Color.fits("#a0B1c2"));
        assert!(!Color.fits("red"));
        assert!(EnumList.fits("a,b"));
        assert!(!EnumList.fits("a,,b"));
    }

    #[test]
    fn types_are_known_by_their_exact_names() {
        for kind in AttributeType::ALL {
            assert_eq!(AttributeType::from_name(kind.name()), Some(kind));
        }
        assert_eq!(AttributeType::from_name("Integer"), None);
        assert_eq!(AttributeType::from_name("shape"), None);
        assert_eq!(
            AttributeType::names(),
            "text, enum, enumlist, integer, decimal, date, datetime, color"
        );
    }
}
