-- Named shadows and the AWS shadow document version (SPEC §9).
--
-- The classic shadow stays the device_state row (its queries, indexes and triggers are
-- untouched, so the fleet figures hold). A named shadow is a row of device_shadows, created
-- by its first update, with the same columns a twin has; it never joins the classic fleet
-- queries. `document_version` is the version the AWS topics show: it grows by one with every
-- accepted update of that shadow (desired write or report), where desired_version counts
-- desired writes only (docs/devices.md, "AWS shadow topics").

ALTER TABLE device_state ADD COLUMN document_version bigint NOT NULL DEFAULT 0;

CREATE TABLE device_shadows (
    device_id         text        NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    name              text        NOT NULL CHECK (name ~ '^[a-zA-Z0-9:_-]{1,64}$'),
    tenant_id         text        NOT NULL,
    desired_state     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    reported_state    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    desired_metadata  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    reported_metadata jsonb       NOT NULL DEFAULT '{}'::jsonb,
    desired_version   bigint      NOT NULL DEFAULT 0 CHECK (desired_version >= 0),
    reported_version  bigint      NOT NULL DEFAULT 0 CHECK (reported_version >= 0),
    document_version  bigint      NOT NULL DEFAULT 0,
    published_version bigint      NOT NULL DEFAULT 0,
    reported_seq      bigint,
    created_at        timestamptz NOT NULL DEFAULT now(),
    shadow_updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, name)
);

-- The pending index covers named shadows too: a tenant's named shadows awaiting a report.
CREATE INDEX idx_device_shadows_pending
    ON device_shadows (tenant_id, device_id, name)
    WHERE desired_version > reported_version;
-- A tenant's shadows of one name (the fleet summary's `?shadow=`).
CREATE INDEX idx_device_shadows_tenant_name ON device_shadows (tenant_id, name);
-- What the publisher still has to send (retained, like the classic desired message).
CREATE INDEX idx_device_shadows_unpublished
    ON device_shadows (device_id, name)
    WHERE desired_version > published_version;

-- History rows and events name their shadow; '' is the classic one (no name can be empty).
ALTER TABLE twin_history ADD COLUMN shadow text NOT NULL DEFAULT '';
ALTER TABLE twin_events
    ADD COLUMN shadow text NOT NULL DEFAULT '',
    DROP CONSTRAINT twin_events_kind_check,
    ADD CONSTRAINT twin_events_kind_check
        CHECK (kind IN ('twin', 'deleted', 'presence', 'shadow')) NOT VALID;
ALTER TABLE twin_events VALIDATE CONSTRAINT twin_events_kind_check;

-- The tenant's named shadows awaiting a report, counted as they change (like `pending`).
ALTER TABLE tenant_device_counts ADD COLUMN shadows_pending bigint NOT NULL DEFAULT 0;

-- Named shadow writes are one row at a time (an operator's PATCH, a device's update), so
-- row triggers: an event (`event: shadow` on the stream), the publisher's wake-up, the count.
CREATE FUNCTION named_shadow_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was_pending boolean := TG_OP <> 'INSERT'
        AND twin_awaits_report(OLD.desired_version, OLD.reported_version);
    is_pending boolean := TG_OP <> 'DELETE'
        AND twin_awaits_report(NEW.desired_version, NEW.reported_version);
    r device_shadows%ROWTYPE;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_OP = 'UPDATE' AND NEW.document_version = OLD.document_version
       AND NEW.published_version <> OLD.published_version THEN
        RETURN NULL;  -- the publisher recording what went out: not a change of the shadow
    END IF;
    IF TG_OP <> 'UPDATE' OR NEW.document_version <> OLD.document_version THEN
        INSERT INTO twin_events (tenant_id, device_id, kind, shadow, desired_version,
                                 reported_version, last_seen)
        SELECT r.tenant_id, r.device_id, 'shadow', r.name,
               CASE WHEN TG_OP = 'DELETE' THEN -1 ELSE r.desired_version END,
               r.reported_version, s.last_seen
        FROM device_state s WHERE s.device_id = r.device_id;
        PERFORM pg_notify('iot_twin_event', '');
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.desired_version > NEW.published_version THEN
        PERFORM pg_notify('iot_desired', NEW.device_id);
    END IF;
    IF was_pending <> is_pending
       AND EXISTS (SELECT 1 FROM tenants t WHERE t.tenant_id = r.tenant_id) THEN
        INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices, shadows_pending)
        VALUES (r.tenant_id, pg_backend_pid() % 16, 0, CASE WHEN is_pending THEN 1 ELSE -1 END)
        ON CONFLICT (tenant_id, slot) DO UPDATE
            SET shadows_pending = c.shadows_pending + EXCLUDED.shadows_pending;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER device_shadows_changed
    AFTER INSERT OR UPDATE OR DELETE ON device_shadows
    FOR EACH ROW EXECUTE FUNCTION named_shadow_changed();

-- The AWS topics' `update/delta` and `update/documents` of operator writes (API, console,
-- bulk), written in the transaction of the write and sent by ingest_iot's publisher (not
-- retained: AWS devices `get` on connect). Device updates through the AWS topics are
-- answered by the bridge itself. A bulk job's batch is one row naming its devices
-- (`devices`): the publisher reads their state when it sends, so a rollout costs one
-- small insert per batch, not one per device.
CREATE TABLE shadow_outbox (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id text        NOT NULL,
    device_id text        NOT NULL,
    shadow    text        NOT NULL,
    delta     jsonb,
    documents jsonb,
    devices   text[],
    at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((documents IS NULL) = (devices IS NOT NULL))
);

CREATE FUNCTION notify_shadow_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('iot_desired', '');
    RETURN NULL;
END $$;

CREATE TRIGGER shadow_outbox_added
    AFTER INSERT ON shadow_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION notify_shadow_outbox();
