-- What has gone out over MQTT, so that the retained desired message converges on the
-- database whatever crashes between commit and publish.

ALTER TABLE device_state
    ADD COLUMN published_version bigint NOT NULL DEFAULT 0;

CREATE INDEX idx_device_state_unpublished
    ON device_state (device_id)
    WHERE desired_version > published_version;

-- Retained messages of deleted devices still to be cleared from the broker.
CREATE TABLE retained_cleanup (
    device_id  text PRIMARY KEY,
    tenant_id  text NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now()
);

-- Wake the publisher on every desired write, whoever makes it.
CREATE FUNCTION notify_desired_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('iot_desired', NEW.device_id);
    RETURN NULL;
END $$;

CREATE TRIGGER device_state_desired_changed
    AFTER UPDATE OF desired_version ON device_state
    FOR EACH ROW WHEN (NEW.desired_version > OLD.desired_version)
    EXECUTE FUNCTION notify_desired_changed();

CREATE TRIGGER retained_cleanup_added
    AFTER INSERT ON retained_cleanup
    FOR EACH ROW EXECUTE FUNCTION notify_desired_changed();
