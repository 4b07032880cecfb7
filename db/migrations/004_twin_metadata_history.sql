-- Per-leaf twin metadata and the history of accepted twin writes (SPEC §8).

ALTER TABLE device_state
    ADD COLUMN desired_metadata  jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN reported_metadata jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Existing state gets metadata too: every leaf stamped with the row's last write, so the
-- metadata tree mirrors the state tree from the start (shared.twin.merge_metadata keeps it so).
CREATE FUNCTION pg_temp.twin_metadata(state jsonb, stamp jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF jsonb_typeof(state) = 'object' AND state <> '{}'::jsonb THEN
        RETURN (SELECT jsonb_object_agg(key, pg_temp.twin_metadata(value, stamp))
                FROM jsonb_each(state));
    END IF;
    RETURN stamp;
END $$;

UPDATE device_state SET
    desired_metadata = CASE WHEN desired_state = '{}'::jsonb THEN '{}'::jsonb ELSE
        pg_temp.twin_metadata(desired_state, jsonb_build_object(
            'updated_at', to_char(shadow_updated_at AT TIME ZONE 'UTC',
                                  'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
            'version', desired_version)) END,
    reported_metadata = CASE WHEN reported_state = '{}'::jsonb THEN '{}'::jsonb ELSE
        pg_temp.twin_metadata(reported_state, jsonb_build_object(
            'updated_at', to_char(shadow_updated_at AT TIME ZONE 'UTC',
                                  'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
            'version', reported_version)) END
WHERE desired_state <> '{}'::jsonb OR reported_state <> '{}'::jsonb;

DROP FUNCTION pg_temp.twin_metadata(jsonb, jsonb);

-- One row per accepted write, inserted in the transaction of the write itself. Rows of one
-- device are inserted under its state row lock, so their ids follow the order of its writes.
CREATE TABLE twin_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   text        NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    tenant_id   text        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    kind        text        NOT NULL CHECK (kind IN ('desired', 'reported')),
    actor_type  text        NOT NULL CHECK (actor_type IN ('user', 'device')),
    actor_email text,
    version     bigint      NOT NULL,
    patch       jsonb       NOT NULL,
    CHECK ((actor_type = 'user') = (actor_email IS NOT NULL))
);
-- The device's timeline, newest first, by keyset.
CREATE INDEX twin_history_device ON twin_history (device_id, id);
-- Retention deletes the oldest rows in small batches.
CREATE INDEX twin_history_at ON twin_history (at);
