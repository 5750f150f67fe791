-- The W3C trace context of the batch whose chunk wrote the row, so that its events continue the
-- producer's trace (`traceparent` header and CloudEvents extension). NULL when the batch had none.
ALTER TABLE outbox
    ADD COLUMN traceparent text,
    ADD COLUMN tracestate  text;
