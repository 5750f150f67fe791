-- Events are encoded once, by the worker that commits them, and stored as bytes Postgres never
-- parses: `body` is the chunk's `application/cloudevents-batch+json` array as the relay publishes it
-- in batch mode, and the per-event columns say where each event lies in it (it starts one byte after
-- the previous one's end, the first at 1) and what its message's headers are, so the relay cuts it
-- into single-event messages without parsing it either. Stored uncompressed (STORAGE EXTERNAL): the
-- relay reads it whole once, and compressing it costs the writer more than its size costs the table.
ALTER TABLE outbox
    ADD COLUMN body         bytea,
    ADD COLUMN event_ends   integer[],
    ADD COLUMN event_ids    uuid[],
    -- 0 customer.created, 1 customer.updated, 2 customer.deleted (src/events/mod.rs).
    ADD COLUMN event_kinds  smallint[],
    ADD COLUMN customer_ids uuid[],
    -- When the row's changes committed: the latest event's time.
    ADD COLUMN occurred_at  timestamptz;
ALTER TABLE outbox ALTER COLUMN body SET STORAGE EXTERNAL;

-- Rows written before: their events become the CloudEvents the relay built from them, in order.
WITH event AS (
    SELECT o.id, e.ordinality,
           e.value->>'event_id' AS event_id,
           e.value->>'routing_key' AS kind,
           e.value->>'customer_id' AS customer_id,
           (e.value->>'occurred_at')::timestamptz AS occurred_at,
           convert_to((jsonb_build_object(
               'specversion', '1.0', 'id', e.value->'event_id',
               'source', '/tenants/' || o.tenant, 'type', e.value->'routing_key',
               'subject', e.value->'customer_id', 'time', e.value->'occurred_at',
               'datacontenttype', 'application/json', 'tenant', o.tenant,
               'customerversion', e.value->'version', 'batchid', o.batch_id,
               'data', e.value->'customer')
             || CASE WHEN o.traceparent IS NULL THEN '{}'::jsonb
                     ELSE jsonb_build_object('traceparent', o.traceparent) END
             || CASE WHEN o.tracestate IS NULL THEN '{}'::jsonb
                     ELSE jsonb_build_object('tracestate', o.tracestate) END)::text, 'UTF8') AS json
    FROM outbox o, jsonb_array_elements(o.events) WITH ORDINALITY e
), placed AS (
    SELECT *, sum(octet_length(json) + 1) OVER (PARTITION BY id ORDER BY ordinality) AS event_end
    FROM event
), rows AS (
    SELECT id,
           '\x5b'::bytea || string_agg(json, '\x2c'::bytea ORDER BY ordinality) || '\x5d'::bytea AS body,
           array_agg(event_end::integer ORDER BY ordinality) AS event_ends,
           array_agg(event_id::uuid ORDER BY ordinality) AS event_ids,
           array_agg(CASE kind WHEN 'customer.created' THEN 0
                               WHEN 'customer.updated' THEN 1 ELSE 2 END::smallint
                     ORDER BY ordinality) AS event_kinds,
           array_agg(customer_id::uuid ORDER BY ordinality) AS customer_ids,
           max(occurred_at) AS occurred_at
    FROM placed
    GROUP BY id
)
UPDATE outbox o
SET body = r.body, event_ends = r.event_ends, event_ids = r.event_ids,
    event_kinds = r.event_kinds, customer_ids = r.customer_ids, occurred_at = r.occurred_at
FROM rows r
WHERE o.id = r.id;

-- A row without events (none are written; an erasure deletes a row it empties) has nothing to publish.
DELETE FROM outbox WHERE body IS NULL;

ALTER TABLE outbox
    DROP COLUMN events,
    ALTER COLUMN body SET NOT NULL,
    ALTER COLUMN event_ends SET NOT NULL,
    ALTER COLUMN event_ids SET NOT NULL,
    ALTER COLUMN event_kinds SET NOT NULL,
    ALTER COLUMN customer_ids SET NOT NULL,
    ALTER COLUMN occurred_at SET NOT NULL;

-- The SHA-256 (first 16 bytes) of the customer document as the worker serialized it: a record whose
-- document hashes the same is unchanged, found by an index lookup and a comparison of 16 bytes
-- instead of parsing and comparing whole documents. NULL for customers stored before, whose
-- serialized form is not known here: they are compared by document until they next change.
ALTER TABLE customers ADD COLUMN data_hash bytea;

-- A chunk's results as arrays, one element per customer, instead of a JSON array of objects that
-- Postgres parsed and compressed for every chunk and the worker read back only after a crash.
-- `actions`: 0 created, 1 updated, 2 unchanged (src/store/customers.rs).
ALTER TABLE batch_chunks
    ADD COLUMN keys     text[],
    ADD COLUMN ids      uuid[],
    ADD COLUMN versions bigint[],
    ADD COLUMN actions  smallint[];

UPDATE batch_chunks
SET keys = ARRAY(SELECT r->>'key' FROM jsonb_array_elements(results) WITH ORDINALITY e(r, n) ORDER BY n),
    ids = ARRAY(SELECT (r->>'id')::uuid FROM jsonb_array_elements(results) WITH ORDINALITY e(r, n) ORDER BY n),
    versions = ARRAY(SELECT (r->>'version')::bigint
                     FROM jsonb_array_elements(results) WITH ORDINALITY e(r, n) ORDER BY n),
    actions = ARRAY(SELECT CASE r->>'action' WHEN 'created' THEN 0 WHEN 'updated' THEN 1 ELSE 2 END::smallint
                    FROM jsonb_array_elements(results) WITH ORDINALITY e(r, n) ORDER BY n);

ALTER TABLE batch_chunks
    DROP COLUMN results,
    ALTER COLUMN keys SET NOT NULL,
    ALTER COLUMN ids SET NOT NULL,
    ALTER COLUMN versions SET NOT NULL,
    ALTER COLUMN actions SET NOT NULL;
