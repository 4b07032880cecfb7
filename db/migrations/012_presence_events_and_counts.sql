-- Presence (SPEC §7) for the operator: a kept per-tenant count of connected devices for the
-- fleet summary, `event: presence` on the tenant's stream, and the indexes behind the
-- device list's `?connected=` filter and ingest_iot's last_seen refresh of connected devices.

-- Writers of device_state wait for this migration instead of racing the backfill, as in 008.
LOCK TABLE device_state IN SHARE ROW EXCLUSIVE MODE;

ALTER TABLE tenant_device_counts ADD COLUMN connected bigint NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION count_devices_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices, pending, connected)
    SELECT tenant_id, pg_backend_pid() % 16, count(*),
           count(*) FILTER (WHERE desired_version > reported_version),
           count(*) FILTER (WHERE connected)
    FROM added
    GROUP BY tenant_id
    ORDER BY tenant_id  -- several tenants in one statement: lock their rows in one order
    ON CONFLICT (tenant_id, slot) DO UPDATE
        SET devices = c.devices + EXCLUDED.devices, pending = c.pending + EXCLUDED.pending,
            connected = c.connected + EXCLUDED.connected;
    RETURN NULL;
END $$;

-- A device deleted while connected leaves the count with its row (the broker's disconnect
-- that follows finds no row to update).
CREATE OR REPLACE FUNCTION count_devices_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A tenant deleted in this transaction takes its counts with it (the cascade on
    -- tenant_device_counts); writing a row for it would break the foreign key.
    INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices, pending, connected)
    SELECT r.tenant_id, pg_backend_pid() % 16, -count(*),
           -count(*) FILTER (WHERE r.desired_version > r.reported_version),
           -count(*) FILTER (WHERE r.connected)
    FROM removed r
    WHERE EXISTS (SELECT 1 FROM tenants t WHERE t.tenant_id = r.tenant_id)
    GROUP BY r.tenant_id
    ORDER BY r.tenant_id
    ON CONFLICT (tenant_id, slot) DO UPDATE
        SET devices = c.devices + EXCLUDED.devices, pending = c.pending + EXCLUDED.pending,
            connected = c.connected + EXCLUDED.connected;
    RETURN NULL;
END $$;

-- 010's UPDATE trigger, now counting connections as well as pending devices: one pass over
-- the statement's transition tables for both, and a write only when a status changed.
CREATE FUNCTION count_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices, pending, connected)
    SELECT n.tenant_id, pg_backend_pid() % 16, 0,
           sum((n.desired_version > n.reported_version)::int
               - (o.desired_version > o.reported_version)::int),
           sum(n.connected::int - o.connected::int)
    FROM changed_new n JOIN changed_old o USING (device_id)
    WHERE (n.desired_version > n.reported_version)
          <> (o.desired_version > o.reported_version)
       OR n.connected <> o.connected
    GROUP BY n.tenant_id
    HAVING sum((n.desired_version > n.reported_version)::int
               - (o.desired_version > o.reported_version)::int) <> 0
        OR sum(n.connected::int - o.connected::int) <> 0
    ORDER BY n.tenant_id
    ON CONFLICT (tenant_id, slot) DO UPDATE
        SET pending = c.pending + EXCLUDED.pending, connected = c.connected + EXCLUDED.connected;
    RETURN NULL;
END $$;

DROP TRIGGER device_state_count_pending ON device_state;
DROP FUNCTION count_pending_changed();
CREATE TRIGGER device_state_count_status
    AFTER UPDATE ON device_state
    REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION count_status_changed();
ALTER TABLE device_state ENABLE ALWAYS TRIGGER device_state_count_status;

-- The column starts at 0 in every slot: the count of each tenant goes into its slot 0.
INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices, pending, connected)
SELECT tenant_id, 0, 0, 0, count(*)
FROM device_state
WHERE connected
GROUP BY tenant_id
ON CONFLICT (tenant_id, slot) DO UPDATE SET connected = EXCLUDED.connected;

-- `event: presence`: one event per change of a device's connection (connected, or when it
-- connected or disconnected: a reconnect inside one broker batch is a new "online since").
-- The event carries the connection columns; twin and deleted events carry them too.
ALTER TABLE twin_events
    ADD COLUMN connected       boolean,
    ADD COLUMN connected_at    timestamptz,
    ADD COLUMN disconnected_at timestamptz,
    DROP CONSTRAINT twin_events_kind_check,
    ADD CONSTRAINT twin_events_kind_check
        CHECK (kind IN ('twin', 'deleted', 'presence')) NOT VALID;
ALTER TABLE twin_events VALIDATE CONSTRAINT twin_events_kind_check;

CREATE OR REPLACE FUNCTION record_twin_events_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO twin_events (tenant_id, device_id, kind, desired_version, reported_version,
                             last_seen, connected, connected_at, disconnected_at)
    SELECT tenant_id, device_id, 'twin', desired_version, reported_version, last_seen,
           connected, connected_at, disconnected_at
    FROM inserted_rows;
    IF FOUND THEN
        PERFORM pg_notify('iot_twin_event', '');
    END IF;
    RETURN NULL;
END $$;

-- Twin events as 009 chose them, with one change: a last_seen that moves five minutes or
-- more is "a device coming back" only if it was not connected. A connected device was in
-- contact all along, so ingest_iot's refresh of its last_seen, its disconnect and its HTTP
-- calls are not events (its status stayed live: the refresh keeps it so).
CREATE OR REPLACE FUNCTION record_twin_events_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO twin_events (tenant_id, device_id, kind, desired_version, reported_version,
                             last_seen, connected, connected_at, disconnected_at)
    SELECT n.tenant_id, n.device_id, k.kind, n.desired_version, n.reported_version,
           n.last_seen, n.connected, n.connected_at, n.disconnected_at
    FROM updated_new n JOIN updated_old o USING (device_id)
    CROSS JOIN LATERAL (VALUES
        ('twin',
         n.desired_version IS DISTINCT FROM o.desired_version
         OR n.reported_version IS DISTINCT FROM o.reported_version
         OR n.shadow_updated_at IS DISTINCT FROM o.shadow_updated_at
         OR (o.last_seen IS NULL AND n.last_seen IS NOT NULL)
         OR (n.last_seen > o.last_seen + interval '5 minutes' AND NOT o.connected)),
        ('presence',
         n.connected IS DISTINCT FROM o.connected
         OR n.connected_at IS DISTINCT FROM o.connected_at
         OR n.disconnected_at IS DISTINCT FROM o.disconnected_at)
    ) AS k (kind, happened)
    WHERE k.happened;
    IF FOUND THEN
        PERFORM pg_notify('iot_twin_event', '');
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION record_twin_events_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO twin_events (tenant_id, device_id, kind, desired_version, reported_version,
                             last_seen, connected, connected_at, disconnected_at)
    SELECT tenant_id, device_id, 'deleted', desired_version, reported_version, last_seen,
           connected, connected_at, disconnected_at
    FROM deleted_rows;
    IF FOUND THEN
        PERFORM pg_notify('iot_twin_event', '');
    END IF;
    RETURN NULL;
END $$;

-- `GET /customer/devices?connected=true`: a keyset page of the connected devices is a range
-- of this index. (`connected=false`, most of a fleet, pages the tenant's index and skips
-- the few connected rows.)
CREATE INDEX idx_device_state_connected
    ON device_state (tenant_id, device_id) WHERE connected;

-- ingest_iot keeps connected devices from turning stale: it refreshes the last_seen of those
-- not seen for half of stale_after, the oldest first, a batch at a time from this index.
CREATE INDEX idx_device_state_connected_last_seen
    ON device_state (last_seen) WHERE connected;
