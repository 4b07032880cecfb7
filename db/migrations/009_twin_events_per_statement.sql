-- Twin events recorded once per statement instead of once per row (007's triggers).
--
-- The MQTT bridge and bulk desired jobs write hundreds of twins in one UPDATE; a row trigger
-- ran a PL/pgSQL call, an INSERT and a pg_notify for each of them; once per statement the
-- cost no longer grows with the rows (bench/report_batch.py measures both; the figures are
-- in docs/benchmarks.md). The events are the same: one per changed row,
-- with the same columns, for the same changes, and one notification per transaction.

CREATE FUNCTION record_twin_events_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO twin_events (tenant_id, device_id, kind, desired_version, reported_version,
                             last_seen)
    SELECT tenant_id, device_id, 'twin', desired_version, reported_version, last_seen
    FROM inserted_rows;
    IF FOUND THEN
        PERFORM pg_notify('iot_twin_event', '');
    END IF;
    RETURN NULL;
END $$;

-- What 007's WHEN clause selected: desired writes and reports (both move
-- shadow_updated_at), version changes, and a device coming back (its first contact, or one
-- after five silent minutes). Routine last_seen refreshes are not events: too many.
CREATE FUNCTION record_twin_events_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO twin_events (tenant_id, device_id, kind, desired_version, reported_version,
                             last_seen)
    SELECT n.tenant_id, n.device_id, 'twin', n.desired_version, n.reported_version, n.last_seen
    FROM updated_new n JOIN updated_old o USING (device_id)
    WHERE n.desired_version IS DISTINCT FROM o.desired_version
       OR n.reported_version IS DISTINCT FROM o.reported_version
       OR n.shadow_updated_at IS DISTINCT FROM o.shadow_updated_at
       OR (o.last_seen IS NULL AND n.last_seen IS NOT NULL)
       OR n.last_seen > o.last_seen + interval '5 minutes';
    IF FOUND THEN
        PERFORM pg_notify('iot_twin_event', '');
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION record_twin_events_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO twin_events (tenant_id, device_id, kind, desired_version, reported_version,
                             last_seen)
    SELECT tenant_id, device_id, 'deleted', desired_version, reported_version, last_seen
    FROM deleted_rows;
    IF FOUND THEN
        PERFORM pg_notify('iot_twin_event', '');
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER device_state_twin_event_insert ON device_state;
DROP TRIGGER device_state_twin_event_update ON device_state;
DROP TRIGGER device_state_twin_event_delete ON device_state;
DROP FUNCTION record_twin_event();

CREATE TRIGGER device_state_twin_event_insert
    AFTER INSERT ON device_state
    REFERENCING NEW TABLE AS inserted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_twin_events_inserted();

CREATE TRIGGER device_state_twin_event_update
    AFTER UPDATE ON device_state
    REFERENCING OLD TABLE AS updated_old NEW TABLE AS updated_new
    FOR EACH STATEMENT EXECUTE FUNCTION record_twin_events_updated();

CREATE TRIGGER device_state_twin_event_delete
    AFTER DELETE ON device_state
    REFERENCING OLD TABLE AS deleted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_twin_events_deleted();
