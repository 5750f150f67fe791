//! W3C trace context over AMQP (the AMQP trace-context draft: `traceparent` and `tracestate` as
//! application properties, i.e. headers): read from an ingest message, continued by the span that
//! processes it, written on the messages sent for it. The W3C propagator does the parsing and the
//! formatting, so a malformed `traceparent` is ignored as the recommendation says, never an error.
//!
//! The processing span follows the OpenTelemetry messaging conventions: named
//! `process <ingest queue>`, of kind consumer, a child of the producer's span and linked to it.

use std::collections::HashMap;

use lapin::BasicProperties;
use lapin::types::FieldTable;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::headers::{self, header_str, long_string};
use crate::ingest::{Envelope, TraceContext};

/// The trace context of an ingest message: `None` unless it carries a valid `traceparent` (a
/// `tracestate` that does not parse is dropped, the `traceparent` kept).
pub fn read(properties: &BasicProperties) -> Option<TraceContext> {
    let traceparent = header_str(properties.headers(), headers::TRACEPARENT)?.trim();
    if !well_formed(traceparent) {
        return None;
    }
    let mut carrier = HashMap::from([(headers::TRACEPARENT.to_owned(), traceparent.to_owned())]);
    if let Some(state) = header_str(properties.headers(), headers::TRACESTATE) {
        carrier.insert(headers::TRACESTATE.to_owned(), state.to_owned());
    }
    let context = TraceContextPropagator::new().extract(&carrier);
    let span = context.span();
    let remote = span.span_context();
    remote.is_valid().then(|| of(remote))
}

/// The shape of a `traceparent` that the propagator leaves unchecked: lowercase hexadecimal fields
/// of exactly 2 (version), 32 (trace id), 16 (parent id) and 2 (flags) digits, and for version 00
/// exactly those four. It checks the rest: the version, ids not all zero.
fn well_formed(traceparent: &str) -> bool {
    let hex = |field: &str, digits: usize| {
        field.len() == digits
            && field
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let fields: Vec<&str> = traceparent.split('-').collect();
    (fields.len() == 4 || fields.len() > 4 && fields[0] != "00")
        && hex(fields[0], 2)
        && hex(fields[1], 32)
        && hex(fields[2], 16)
        && hex(fields[3], 2)
}

/// The headers of `trace`, as the propagator writes them.
fn of(span_context: &SpanContext) -> TraceContext {
    let context = opentelemetry::Context::new().with_remote_span_context(span_context.clone());
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    TraceContext {
        traceparent: carrier.remove(headers::TRACEPARENT).unwrap_or_default(),
        tracestate: carrier
            .remove(headers::TRACESTATE)
            .filter(|state| !state.is_empty()),
    }
}

/// The producer's span, as the parent of ours.
fn remote(trace: &TraceContext) -> opentelemetry::Context {
    let mut carrier = HashMap::from([(headers::TRACEPARENT.to_owned(), trace.traceparent.clone())]);
    if let Some(state) = &trace.tracestate {
        carrier.insert(headers::TRACESTATE.to_owned(), state.clone());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// The span that processes one ingest message from `queue`, continuing its producer's trace. Its
/// `messaging.*` attributes go to the exported span only, so that log lines keep their context
/// short (batch id, tenant, dialect).
pub fn process_span(
    queue: &str,
    properties: &BasicProperties,
    envelope: &Envelope,
) -> tracing::Span {
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {queue}"),
        otel.kind = "consumer",
        batch_id = envelope.batch_id.as_str(),
        tenant = envelope.tenant.as_deref(),
        dialect = envelope.dialect.as_deref(),
    );
    if let Some(trace) = &envelope.trace {
        let parent = remote(trace);
        span.add_link(parent.span().span_context().clone());
        // Fails only when no span is exported (no OpenTelemetry layer), and then the reply
        // carries the producer's context on unchanged (see `outgoing`).
        let _ = span.set_parent(parent);
    }
    span.set_attribute("messaging.system", "rabbitmq");
    span.set_attribute("messaging.operation.name", "process");
    span.set_attribute("messaging.operation.type", "process");
    span.set_attribute("messaging.destination.name", queue.to_owned());
    if let Some(id) = properties.message_id() {
        span.set_attribute("messaging.message.id", id.as_str().to_owned());
    }
    span
}

/// Records on the processing span how many records the message held, once that is known.
pub fn record_count(span: &tracing::Span, records: usize) {
    span.set_attribute(
        "messaging.batch.message_count",
        i64::try_from(records).unwrap_or(i64::MAX),
    );
}

/// The trace context of a message sent while processing: the processing span's own when spans are
/// exported, otherwise the producer's unchanged, so that its trace goes on either way.
pub fn outgoing(span: &tracing::Span, producer: Option<&TraceContext>) -> Option<TraceContext> {
    let context = span.context();
    let own = context.span();
    let own = own.span_context();
    if own.is_valid() {
        Some(of(own))
    } else {
        producer.cloned()
    }
}

/// Writes `trace` into a message's headers.
pub fn write(table: &mut FieldTable, trace: &TraceContext) {
    table.insert(headers::TRACEPARENT.into(), long_string(&trace.traceparent));
    if let Some(state) = &trace.tracestate {
        table.insert(headers::TRACESTATE.into(), long_string(state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::AMQPValue;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn message(values: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (name, value) in values {
            table.insert((*name).into(), value.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    fn traceparent(value: &str) -> Option<TraceContext> {
        read(&message(&[(headers::TRACEPARENT, long_string(value))]))
    }

    #[test]
    fn a_valid_traceparent_and_its_tracestate_are_read_as_sent() {
        let trace = read(&message(&[
            (headers::TRACEPARENT, long_string(VALID)),
            (
                headers::TRACESTATE,
                long_string("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            ),
        ]))
        .unwrap();
        assert_eq!(trace.traceparent, VALID);
        assert_eq!(
            trace.tracestate.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        let unsampled = traceparent(&VALID.replace("-01", "-00")).unwrap();
        assert!(unsampled.traceparent.ends_with("-00"));
    }

    #[test]
    fn a_malformed_traceparent_is_ignored_never_an_error() {
        for malformed in [
            "",
            "garbage",
            // The version ff is forbidden; all-zero trace and span ids are invalid.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Wrong lengths, not hexadecimal, upper case, a missing field.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            // Version 00 has exactly four fields.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(traceparent(malformed), None, "{malformed:?}");
        }
        // Not a string at all.
        let number = message(&[(headers::TRACEPARENT, AMQPValue::LongLongInt(1))]);
        assert_eq!(read(&number), None);
        // A tracestate alone continues nothing.
        let state_only = message(&[(headers::TRACESTATE, long_string("a=b"))]);
        assert_eq!(read(&state_only), None);
    }

    #[test]
    fn a_malformed_tracestate_is_dropped_and_its_traceparent_kept() {
        let trace = read(&message(&[
            (headers::TRACEPARENT, long_string(VALID)),
            (headers::TRACESTATE, long_string("not a list member")),
        ]))
        .unwrap();
        assert_eq!(trace.traceparent, VALID);
        assert_eq!(trace.tracestate, None);
    }

    #[test]
    fn without_exported_spans_a_message_sent_carries_the_producers_context_unchanged() {
        let producer = traceparent(VALID).unwrap();
        let span = tracing::Span::none();
        assert_eq!(outgoing(&span, Some(&producer)), Some(producer.clone()));
        assert_eq!(outgoing(&span, None), None);
        let mut table = FieldTable::default();
        write(&mut table, &producer);
        let written = BasicProperties::default().with_headers(table);
        assert_eq!(read(&written), Some(producer));
    }
}
