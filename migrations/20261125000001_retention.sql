-- Retention (src/store/retention.rs): a batch's bookkeeping is removed a while after it was
-- written, so each table needs to know when its rows were written and to find the old ones
-- without a scan.

-- Chunks recorded before this migration count from now: they are removed one retention after it.
ALTER TABLE batch_chunks ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT now();

CREATE INDEX processed_batches_completed_at ON processed_batches (completed_at);
CREATE INDEX batch_chunks_recorded_at ON batch_chunks (recorded_at);
CREATE INDEX batch_fingerprints_started_at ON batch_fingerprints (started_at);
CREATE INDEX contact_resolutions_resolved_at ON contact_resolutions (resolved_at);
