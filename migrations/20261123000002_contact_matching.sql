-- Contact matching for the `match-by-contact` dialect, whose records carry no key: each is matched to a
-- stored customer by email, customer code or cell phone (see src/dialect/match_by_contact.rs).

-- The normalized contact values live in the customer document, under `extra` (`matchEmail`,
-- `matchCustomerCode`, `matchCellPhone`; the location under `locationId`). Only that dialect writes
-- them, so these partial indexes hold its customers alone and other dialects' writes never touch them.
CREATE INDEX customers_match_email ON customers (tenant, (data #>> '{extra,matchEmail}'))
    WHERE data #>> '{extra,matchEmail}' IS NOT NULL;
CREATE INDEX customers_match_customer_code ON customers (tenant, (data #>> '{extra,matchCustomerCode}'))
    WHERE data #>> '{extra,matchCustomerCode}' IS NOT NULL;
CREATE INDEX customers_match_cell_phone ON customers (tenant, (data #>> '{extra,matchCellPhone}'))
    WHERE data #>> '{extra,matchCellPhone}' IS NOT NULL;

-- What each record of a batch in flight was resolved to: the key of the customer it adds or updates,
-- or why it was refused. Written, under advisory locks on the records' contact values, before the
-- batch's chunks are applied, and read for two things:
--
-- - A redelivered batch replays these decisions instead of matching again, so its records keep their
--   keys and its chunks (already applied or not) line up with the first delivery's.
-- - They are claims other batches see: a customer another batch has decided to add (or to give a new
--   contact value) is found by its values before its chunk commits, so two batches adding the same new
--   email at the same time end with one customer. An add counts until its customer is stored; an
--   update until its batch completes, and for an hour at most, so a batch that never completes cannot
--   claim a value for ever.
--
-- Rows of completed batches are deleted by the next resolution in the tenant.
CREATE TABLE contact_resolutions (
    tenant        text        NOT NULL,
    batch_id      text        NOT NULL,
    record_index  integer     NOT NULL,
    -- NULL when the record was refused (`errors` says why).
    key           text,
    adds          boolean     NOT NULL,
    -- The customer's location; NULL for a customer shared by all the tenant's locations.
    location_id   text,
    -- The normalized contact values the record gives the customer. Personal data, deleted with the row.
    email         text,
    customer_code text,
    cell_phone    text,
    errors        jsonb,
    resolved_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, batch_id, record_index)
);

CREATE INDEX contact_resolutions_email ON contact_resolutions (tenant, email) WHERE email IS NOT NULL;
CREATE INDEX contact_resolutions_customer_code ON contact_resolutions (tenant, customer_code)
    WHERE customer_code IS NOT NULL;
CREATE INDEX contact_resolutions_cell_phone ON contact_resolutions (tenant, cell_phone)
    WHERE cell_phone IS NOT NULL;
