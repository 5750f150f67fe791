//! What is checked of a message before its body is parsed: its size, its user and tenant, its
//! dialect, that it is UTF-8 and how deeply it is nested. A message failing any of them is rejected
//! whole.

use crate::codes::{FieldCode, RejectionCode};
use crate::config::{AuthMode, AuthSettings};
use crate::dialect::{self, Dialect, Rejection};
use crate::model::{FieldError, ParsedRecord, cut_short};

use super::Envelope;

/// Deepest nesting of arrays and objects a body may have. The bodies of every dialect need fewer than
/// ten levels; the limit keeps a hostile body from costing deep recursion anywhere downstream.
pub const MAX_NESTING: usize = 32;

/// Longest tenant name.
pub const MAX_TENANT_CHARS: usize = 64;

/// Whether `tenant` is a plain name: it appears in keys, routing keys and metric-free logs, and
/// names a tenant's data everywhere.
pub fn is_tenant_name(tenant: &str) -> bool {
    (1..=MAX_TENANT_CHARS).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The tenant and dialect of a message whose envelope passed its checks.
#[derive(Clone, Copy)]
pub(super) struct Addressed<'a> {
    pub tenant: &'a str,
    pub dialect: &'static dyn Dialect,
}

/// Checks the size of the body and the envelope. Runs before anything is parsed, so an oversized
/// body costs no more than its bytes, and before anything stored of the batch is read, so a message
/// refused for its tenant learns nothing of that tenant's batches.
pub(super) fn envelope<'a>(
    envelope: &'a Envelope,
    body: &[u8],
    max_body_bytes: usize,
    auth: &AuthSettings,
) -> Result<Addressed<'a>, Rejection> {
    if body.len() > max_body_bytes {
        return Err(Rejection::new(
            RejectionCode::BodyTooLarge,
            format!(
                "the body is {} bytes; at most {max_body_bytes} are accepted",
                body.len(),
            ),
        ));
    }
    // RabbitMQ vouches for `user_id`: it refuses a publish whose user_id is not the connection's user.
    let user = match auth.mode {
        AuthMode::Open => None,
        AuthMode::UserId => Some(envelope.user_id.as_deref().ok_or_else(|| {
            Rejection::new(
                RejectionCode::MissingUserId,
                "the message has no `user_id` property; this service takes a message only from a \
                 known user, who sets `user_id` to the user its connection logged in as",
            )
        })?),
    };
    let Some(tenant) = envelope.tenant.as_deref() else {
        return Err(Rejection::new(
            RejectionCode::MissingTenant,
            "the message has no `tenant` header",
        ));
    };
    if !is_tenant_name(tenant) {
        return Err(Rejection::new(
            RejectionCode::InvalidTenant,
            format!(
                "the `tenant` header must be 1 to {MAX_TENANT_CHARS} letters, digits, `_` or `-`"
            ),
        ));
    }
    if let Some(user) = user
        && !auth.allows(user, tenant)
    {
        return Err(Rejection::new(
            RejectionCode::ForbiddenTenant,
            format!("the user `{user}` may not write to the tenant `{tenant}`"),
        ));
    }
    // A message_id is at most 255 bytes (an AMQP short string); it is stored, logged and sent back.
    if envelope.batch_id.chars().any(char::is_control) {
        return Err(Rejection::new(
            RejectionCode::InvalidMessageId,
            "the `message_id` property contains a control character",
        ));
    }
    let dialect = match envelope.dialect.as_deref() {
        None => {
            return Err(Rejection::new(
                RejectionCode::MissingType,
                format!(
                    "the message has no `type` property; expected one of: {}",
                    dialect_names()
                ),
            ));
        }
        Some(name) => dialect::find(name).ok_or_else(|| {
            Rejection::new(
                RejectionCode::UnknownType,
                format!(
                    "unknown message type `{name}`; expected one of: {}",
                    dialect_names()
                ),
            )
        })?,
    };
    Ok(Addressed { tenant, dialect })
}

/// The body as text, once it is known to be UTF-8 and not nested too deeply to parse safely.
pub(super) fn body(body: &[u8]) -> Result<&str, Rejection> {
    let text = std::str::from_utf8(body).map_err(|error| {
        Rejection::new(
            RejectionCode::InvalidUtf8,
            format!("the body is not UTF-8: {error}"),
        )
    })?;
    check_nesting(text)?;
    Ok(text)
}

/// Refuses a body nested deeper than [`MAX_NESTING`], in one pass over its bytes, before it is parsed.
pub fn check_nesting(body: &str) -> Result<(), Rejection> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for byte in body.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Rejection::new(
                        RejectionCode::TooDeep,
                        format!("the body is nested more than {MAX_NESTING} levels deep"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Fails every record whose key is longer than [`dialect::MAX_KEY_CHARS`], and cuts every key the
/// reply echoes to that length: a dialect reads the key of a record it cannot decode as it comes,
/// and a key as long as the body, echoed in the records and in the response, would make a reply
/// larger than the broker takes.
pub(super) fn bound_keys(parsed: &mut [ParsedRecord]) {
    for record in parsed {
        let Some(key) = &record.key else { continue };
        if key.chars().nth(dialect::MAX_KEY_CHARS).is_none() {
            continue;
        }
        let cut = cut_short(key.clone(), dialect::MAX_KEY_CHARS + 1);
        let too_long = FieldError::new(
            "key",
            FieldCode::TooLong,
            format!(
                "the record's key is longer than {} characters",
                dialect::MAX_KEY_CHARS
            ),
        );
        match &mut record.customer {
            Ok(_) => record.customer = Err(vec![too_long]),
            Err(errors) if !errors.iter().any(|e| e.code == FieldCode::TooLong) => {
                errors.push(too_long)
            }
            Err(_) => {}
        }
        record.key = Some(cut);
    }
}

fn dialect_names() -> String {
    dialect::DIALECTS
        .iter()
        .map(|d| d.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_rejected_not_overflowed() {
        let body = format!("[{}{}]", "[".repeat(10_000), "]".repeat(10_000));
        let error = check_nesting(&body).unwrap_err();
        assert_eq!(error.code, RejectionCode::TooDeep);
        // Brackets inside strings are text, not nesting.
        let quoted = format!(r#"[{{"a": "{}\"{}"}}]"#, "[".repeat(100), "{".repeat(100));
        assert_eq!(check_nesting(&quoted), Ok(()));
    }
}
