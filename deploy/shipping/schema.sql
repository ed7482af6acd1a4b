-- The events table the shipper fills, and the one function it calls.
--   psql -v ON_ERROR_STOP=1 -d events -f deploy/shipping/schema.sql
-- Idempotent: run it again after an upgrade. The official postgres image runs it once, on
-- first start, from /docker-entrypoint-initdb.d (see compose.shipping.yaml).
--
-- The shipper logs in as the role `shipper`, which may only call ship_event(): it cannot read,
-- change or delete a row. Give it a password (ALTER ROLE shipper PASSWORD '...'), or let
-- deploy/shipping/initdb.sh do it in the postgres image.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'shipper') THEN
        CREATE ROLE shipper LOGIN;
    END IF;
END
$$;

-- One row per event id. The log line is kept twice: `record`, its exact text (what the
-- service wrote, byte for byte, without the newline: numbers of any size or precision, key
-- order and escapes as sent), and `body`, the same parsed for queries (NULL where jsonb
-- cannot hold it: a number beyond its range, a \u0000 in a string).
CREATE TABLE IF NOT EXISTS events (
    id          text        PRIMARY KEY,
    record      text        NOT NULL,
    body        jsonb,
    received_at timestamptz NOT NULL,  -- the record's ts: when the service accepted the event
    type        text        NOT NULL,
    host        text        NOT NULL,  -- the replica that wrote it
    deliveries  integer     NOT NULL DEFAULT 1,  -- > 1: shipped again after a shipper crash
    shipped_at  timestamptz NOT NULL DEFAULT clock_timestamp()  -- the first delivery
);
CREATE INDEX IF NOT EXISTS events_received_at ON events (received_at);
CREATE INDEX IF NOT EXISTS events_type_received_at ON events (type, received_at);

-- Lines the shipper sent that are not event records the function can store: nothing is
-- dropped silently. Empty unless a file was damaged (or a record changed under its id).
CREATE TABLE IF NOT EXISTS rejected_lines (
    seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    line        text        NOT NULL,
    reason      text        NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Stores one log line: an insert, or for an id already stored one more delivery counted.
--
-- It never fails for what is in the line: a line that is not an event record goes to
-- rejected_lines. Any other error (disk full, writes refused, a lock timeout) is retried here
-- every second until it clears, so the shipper waits instead of failing: rsyslog 8.2302's
-- ompgsql counts a statement that fails twice as done and moves on (fixed in 8.2406), which
-- would lose the line. A cancel (pg_cancel_backend, a restart) still ends the wait, and the
-- shipper sends the line again.
CREATE OR REPLACE FUNCTION ship_event(line text) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    m           text[];
    v_at        timestamptz;
    v_host      text;
    parsed      jsonb;
    stored      text;
BEGIN
    -- The fields come from the record's fixed first keys (the service writes ts, level, msg,
    -- host, id and type first, in that order), not from parsing it: json's ->> fails on a
    -- whole record if any string in `data` holds \u0000, and jsonb on a number beyond its
    -- range. The json cast only checks the syntax and converts nothing.
    BEGIN
        PERFORM line::json;
        m := regexp_match(line, '^\{"ts":"([^"]+)","level":"[a-z]+","msg":"event","host":("(?:[^"\\]|\\.)*"),"id":"([^"]+)","type":"([^"]+)"[,}]');
        IF m IS NULL THEN
            INSERT INTO rejected_lines (line, reason) VALUES (line, 'not an event record');
            RETURN;
        END IF;
        v_at := m[1]::timestamptz;
        v_host := m[2]::json #>> '{}';
    EXCEPTION WHEN data_exception THEN
        INSERT INTO rejected_lines (line, reason) VALUES (line, SQLERRM);
        RETURN;
    END;
    BEGIN
        parsed := line::jsonb;
    EXCEPTION WHEN data_exception THEN
        parsed := NULL;
    END;
    LOOP
        BEGIN
            INSERT INTO events AS e (id, record, body, received_at, type, host)
                VALUES (m[3], line, parsed, v_at, m[4], v_host)
                ON CONFLICT (id) DO UPDATE SET deliveries = e.deliveries + 1
                RETURNING e.record INTO stored;
            IF stored <> line THEN
                INSERT INTO rejected_lines (line, reason)
                    VALUES (line, 'event id ' || m[3] || ' is stored with another text');
            END IF;
            RETURN;
        EXCEPTION WHEN data_exception THEN
            INSERT INTO rejected_lines (line, reason) VALUES (line, SQLERRM);
            RETURN;
        WHEN OTHERS THEN
            RAISE WARNING 'ship_event: % (SQLSTATE %), retrying in 1 s', SQLERRM, SQLSTATE;
            PERFORM pg_sleep(1);
        END;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION ship_event(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ship_event(text) TO shipper;
