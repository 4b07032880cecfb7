-- The tenant's live stream of twin changes (GET /customer/events), kept in the database so
-- every ui_iot replica streams the same events with the same ids.
--
-- A trigger on device_state records every change, whoever makes it. The row's `id` is taken
-- when the writing transaction runs, so ids commit out of order; a stream that resumed from
-- "after id N" could miss a smaller id committed later. So the id a client sees is `seq`,
-- given after commit by a sequencer that runs one batch at a time (the counter row lock
-- serialises sequencers): every `seq` is visible before any larger one exists.

CREATE TABLE twin_events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq              bigint UNIQUE,
    tenant_id        text NOT NULL,
    device_id        text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('twin', 'deleted')),
    desired_version  bigint NOT NULL,
    reported_version bigint NOT NULL,
    last_seen        timestamptz,
    at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_twin_events_unsequenced ON twin_events (id) WHERE seq IS NULL;
CREATE INDEX idx_twin_events_tenant_seq ON twin_events (tenant_id, seq) WHERE seq IS NOT NULL;
CREATE INDEX idx_twin_events_at ON twin_events (at);

CREATE TABLE twin_event_counter (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_seq bigint NOT NULL
);
INSERT INTO twin_event_counter (last_seq) VALUES (0);

CREATE FUNCTION record_twin_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO twin_events (tenant_id, device_id, kind, desired_version, reported_version,
                                 last_seen)
        VALUES (OLD.tenant_id, OLD.device_id, 'deleted', OLD.desired_version,
                OLD.reported_version, OLD.last_seen);
    ELSE
        INSERT INTO twin_events (tenant_id, device_id, kind, desired_version, reported_version,
                                 last_seen)
        VALUES (NEW.tenant_id, NEW.device_id, 'twin', NEW.desired_version,
                NEW.reported_version, NEW.last_seen);
    END IF;
    -- One notification per transaction (equal payloads are folded), however many rows.
    PERFORM pg_notify('iot_twin_event', '');
    RETURN NULL;
END $$;

CREATE TRIGGER device_state_twin_event_insert
    AFTER INSERT ON device_state
    FOR EACH ROW EXECUTE FUNCTION record_twin_event();

-- Desired writes and reports (both move shadow_updated_at), version changes, and a device
-- coming back: its first contact, or one after five silent minutes (stale to live for any
-- stale_after of five minutes or more). Routine last_seen refreshes are not events: too many.
CREATE TRIGGER device_state_twin_event_update
    AFTER UPDATE ON device_state
    FOR EACH ROW
    WHEN (NEW.desired_version IS DISTINCT FROM OLD.desired_version
          OR NEW.reported_version IS DISTINCT FROM OLD.reported_version
          OR NEW.shadow_updated_at IS DISTINCT FROM OLD.shadow_updated_at
          OR (OLD.last_seen IS NULL AND NEW.last_seen IS NOT NULL)
          OR NEW.last_seen > OLD.last_seen + interval '5 minutes')
    EXECUTE FUNCTION record_twin_event();

CREATE TRIGGER device_state_twin_event_delete
    AFTER DELETE ON device_state
    FOR EACH ROW EXECUTE FUNCTION record_twin_event();
