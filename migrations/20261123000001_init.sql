-- Customers of every tenant. `id` is assigned once per (tenant, key) and never changes; `version` counts
-- real changes only (an upsert that changes nothing leaves it alone).
CREATE TABLE customers (
    id          uuid        PRIMARY KEY,
    tenant      text        NOT NULL,
    key         text        NOT NULL,
    version     bigint      NOT NULL,
    data        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT customers_tenant_key UNIQUE (tenant, key)
);

-- Customer-state events written in the same transaction as the change they describe, then published by
-- the relay and deleted. `id` order is commit order for any one customer (a later change of a customer
-- cannot insert its row before the earlier change's transaction has committed), so publishing in `id`
-- order keeps each customer's events in version order.
CREATE TABLE outbox (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    routing_key  text        NOT NULL,
    tenant       text        NOT NULL,
    customer_id  uuid        NOT NULL,
    version      bigint      NOT NULL,
    batch_id     text        NOT NULL,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    customer     jsonb       NOT NULL
);

-- Chunks of a batch that have committed, with their per-record results. A redelivered batch skips them
-- and reuses their results, so its reply is the one the first delivery would have sent.
CREATE TABLE batch_chunks (
    tenant       text    NOT NULL,
    batch_id     text    NOT NULL,
    chunk_index  integer NOT NULL,
    results      jsonb   NOT NULL,
    PRIMARY KEY (tenant, batch_id, chunk_index)
);

-- Batches that completed, with the reply they produced. A batch found here is never applied again: its
-- stored reply is sent once more instead.
CREATE TABLE processed_batches (
    tenant        text        NOT NULL,
    batch_id      text        NOT NULL,
    dialect       text        NOT NULL,
    status        text        NOT NULL,
    reply         jsonb       NOT NULL,
    completed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, batch_id)
);
