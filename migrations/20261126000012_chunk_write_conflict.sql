-- A chunk is written by one statement in a transaction of its own, with no transaction open while the
-- worker works. The statement ends with this check: if fewer customers were written than the worker
-- expected (another transaction created or changed one of them since the chunk read them), it fails
-- with serialization_failure, which undoes the whole statement; the worker reads the chunk again.
CREATE FUNCTION customer_ingest_chunk_written(written bigint, expected bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    IF written <> expected THEN
        RAISE EXCEPTION 'a customer of this chunk changed after the chunk read it'
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN written;
END
$$;
