//! Codes on the wire: why a message was rejected whole, and why one field of a record was refused.
//! Serialized to their snake_case names; the set of codes a producer can meet is these enums.

use serde::{Deserialize, Serialize};

/// Declares a code enum, its snake_case wire name and its `Display`.
macro_rules! codes {
    ($(#[$meta:meta])* $name:ident { $($(#[$doc:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$doc])* $variant,)*
        }

        impl $name {
            /// Every code, in declaration order.
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            /// The code as it appears in replies, dead-letter headers and metric labels.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

codes! {
    /// Why a whole message was rejected: nothing of it is applied, it is dead-lettered and answered
    /// with a `rejected` reply carrying this code.
    RejectionCode {
        /// The body is larger than `pipeline.max_body_bytes`, or expands past it once decompressed.
        BodyTooLarge => "body_too_large",
        /// The message has no `tenant` header.
        MissingTenant => "missing_tenant",
        /// The `tenant` header is not a plain name (`[A-Za-z0-9_-]`, 1 to 64 characters).
        InvalidTenant => "invalid_tenant",
        /// The `message_id` holds a control character.
        InvalidMessageId => "invalid_message_id",
        /// The tenant used this `message_id` before for another body or dialect.
        MessageIdReused => "message_id_reused",
        /// `auth.mode` is `user-id` and the message has no `user_id` property.
        MissingUserId => "missing_user_id",
        /// `auth.mode` is `user-id` and the message's user may not write to its tenant.
        ForbiddenTenant => "forbidden_tenant",
        /// The message has no `type` property.
        MissingType => "missing_type",
        /// The `type` property names no dialect.
        UnknownType => "unknown_type",
        /// The `content_encoding` property names an encoding the service cannot read (it reads
        /// `gzip` and `zstd`).
        UnknownEncoding => "unknown_encoding",
        /// The body is not valid data of its `content_encoding` (corrupt or cut short).
        InvalidCompression => "invalid_compression",
        /// The body is not UTF-8.
        InvalidUtf8 => "invalid_utf8",
        /// The body is nested deeper than the nesting limit.
        TooDeep => "too_deep",
        /// The body is not JSON.
        InvalidJson => "invalid_json",
        /// The body is JSON, but not of the dialect's shape.
        InvalidBody => "invalid_body",
        /// The body holds more records than `pipeline.max_records`.
        TooManyRecords => "too_many_records",
        /// Processing failed on every allowed delivery. The reason is in the service's log, under
        /// the error id the message names.
        ProcessingFailed => "processing_failed",
        /// Processing stopped on a fault of the service (a panic). The reason is in the service's
        /// log, under the error id the message names.
        InternalError => "internal_error",
    }
}

codes! {
    /// Why one field of one record was refused: the record fails, the rest of the batch goes on.
    FieldCode {
        /// A required field is missing or empty.
        Required => "required",
        /// A field the dialect does not know.
        UnknownField => "unknown_field",
        /// A value of the wrong JSON type.
        InvalidType => "invalid_type",
        /// A value the field does not accept.
        InvalidValue => "invalid_value",
        /// A control character in a text.
        InvalidCharacter => "invalid_character",
        /// Not an email address.
        InvalidEmail => "invalid_email",
        /// Not a phone number.
        InvalidPhone => "invalid_phone",
        /// Not a country.
        InvalidCountry => "invalid_country",
        /// Not a date.
        InvalidDate => "invalid_date",
        /// A number out of the field's range.
        OutOfRange => "out_of_range",
        /// A text longer than the field allows.
        TooLong => "too_long",
        /// The record's contact details find more than one stored customer.
        AmbiguousMatch => "ambiguous_match",
        /// A Require* rule of the body refused the record.
        Refused => "refused",
        /// A field required to add a customer is missing.
        RequiredForAdd => "required_for_add",
        /// The record names a customer the tenant does not have.
        UnknownReference => "unknown_reference",
        /// The database refused the record's chunk.
        StorageError => "storage_error",
        /// The record could not be stored for a reason of ours.
        InternalError => "internal_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_serializes_to_its_wire_name() {
        for code in RejectionCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        for code in FieldCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
