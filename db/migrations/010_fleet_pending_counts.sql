-- The fleet summary's pending count kept like its device count (migration 008), so the
-- summary no longer reads an index entry per pending device: 008 counted "pending and not
-- stale" as an index-only range over the pending devices, which costs a heap check per
-- entry once reports have touched the pages since the last vacuum (docs/benchmarks.md has
-- the figures). Now the tenant's pending devices are counted as they change, and
-- the summary subtracts those that are also stale, read from an index of the pending
-- devices by last_seen: the cost follows pending-and-stale devices, usually few.
--
-- Reports' UPDATEs reach one more statement-level trigger: it compares the statement's old
-- and new rows (the transition tables the twin events already capture) and writes only
-- when a device's pending status changed.

LOCK TABLE device_state IN SHARE ROW EXCLUSIVE MODE;

ALTER TABLE tenant_device_counts ADD COLUMN pending bigint NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION count_devices_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices, pending)
    SELECT tenant_id, pg_backend_pid() % 16, count(*),
           count(*) FILTER (WHERE desired_version > reported_version)
    FROM added
    GROUP BY tenant_id
    ORDER BY tenant_id  -- several tenants in one statement: lock their rows in one order
    ON CONFLICT (tenant_id, slot) DO UPDATE
        SET devices = c.devices + EXCLUDED.devices, pending = c.pending + EXCLUDED.pending;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION count_devices_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A tenant deleted in this transaction takes its counts with it (the cascade on
    -- tenant_device_counts); writing a row for it would break the foreign key.
    INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices, pending)
    SELECT r.tenant_id, pg_backend_pid() % 16, -count(*),
           -count(*) FILTER (WHERE r.desired_version > r.reported_version)
    FROM removed r
    WHERE EXISTS (SELECT 1 FROM tenants t WHERE t.tenant_id = r.tenant_id)
    GROUP BY r.tenant_id
    ORDER BY r.tenant_id
    ON CONFLICT (tenant_id, slot) DO UPDATE
        SET devices = c.devices + EXCLUDED.devices, pending = c.pending + EXCLUDED.pending;
    RETURN NULL;
END $$;

CREATE FUNCTION count_pending_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices, pending)
    SELECT n.tenant_id, pg_backend_pid() % 16, 0,
           sum(CASE WHEN n.desired_version > n.reported_version THEN 1 ELSE -1 END)
    FROM changed_new n JOIN changed_old o USING (device_id)
    WHERE (n.desired_version > n.reported_version)
          <> (o.desired_version > o.reported_version)
    GROUP BY n.tenant_id
    HAVING sum(CASE WHEN n.desired_version > n.reported_version THEN 1 ELSE -1 END) <> 0
    ORDER BY n.tenant_id
    ON CONFLICT (tenant_id, slot) DO UPDATE SET pending = c.pending + EXCLUDED.pending;
    RETURN NULL;
END $$;

CREATE TRIGGER device_state_count_pending
    AFTER UPDATE ON device_state
    REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION count_pending_changed();
ALTER TABLE device_state ENABLE ALWAYS TRIGGER device_state_count_pending;

-- The column starts at 0 in every slot: the count of each tenant goes into its slot 0.
INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices, pending)
SELECT tenant_id, 0, 0, count(*)
FROM device_state
WHERE desired_version > reported_version
GROUP BY tenant_id
ON CONFLICT (tenant_id, slot) DO UPDATE SET pending = EXCLUDED.pending;

-- Pending devices by last_seen: the pending ones that are stale are one index range. The
-- pending index goes back to (tenant_id, device_id), what a pending page reads; 008 had it
-- carry last_seen for the count that this one replaces.
CREATE INDEX idx_device_state_pending_last_seen
    ON device_state (tenant_id, last_seen NULLS FIRST)
    WHERE desired_version > reported_version;
DROP INDEX idx_device_state_shadow_pending;
CREATE INDEX idx_device_state_shadow_pending
    ON device_state (tenant_id, device_id)
    WHERE desired_version > reported_version;
