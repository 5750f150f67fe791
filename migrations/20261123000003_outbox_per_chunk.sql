-- One outbox row per committed chunk instead of one per event: a chunk of 500 changes writes one
-- tuple and two index entries instead of 500 and 1,000, and the relay deletes one row per chunk.
-- Row order is still commit order for any one customer, and events keep their ids.
ALTER TABLE outbox RENAME TO outbox_per_event;

CREATE TABLE outbox (
    id           bigserial   PRIMARY KEY,
    tenant       text        NOT NULL,
    batch_id     text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    event_count  integer     NOT NULL,
    -- [{"event_id", "routing_key", "customer_id", "version", "occurred_at", "customer"}], in the
    -- order they are published.
    events       jsonb       NOT NULL
);

INSERT INTO outbox (tenant, batch_id, created_at, event_count, events)
SELECT tenant, batch_id, occurred_at, 1,
       jsonb_build_array(jsonb_build_object(
           'event_id', event_id, 'routing_key', routing_key, 'customer_id', customer_id,
           'version', version, 'occurred_at', occurred_at, 'customer', customer))
FROM outbox_per_event
ORDER BY id;

DROP TABLE outbox_per_event;
