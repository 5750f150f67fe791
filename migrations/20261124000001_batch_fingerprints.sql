-- What a batch id stands for: the dialect and the SHA-256 of the body it was first applied with.
-- A later message with the same (tenant, batch_id) and another body or dialect is another batch
-- under a reused id: it is rejected, and never answered with this batch's stored reply.
CREATE TABLE batch_fingerprints (
    tenant       text        NOT NULL,
    batch_id     text        NOT NULL,
    dialect      text        NOT NULL,
    body_sha256  bytea       NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, batch_id)
);
