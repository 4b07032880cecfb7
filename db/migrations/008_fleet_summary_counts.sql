-- GET /customer/fleet/summary without counting the whole fleet (SPEC §8, read straight from
-- the database and never stale): the tenant's device count is kept by triggers on INSERT
-- and DELETE of device_state, and the two counts that depend on the clock (stale, pending)
-- are index-only range scans over the devices in that state, so the summary costs
-- O(stale + pending) index entries, not O(fleet). Synced is the rest.
--
-- Nothing here runs on a report's UPDATE of device_state: no row trigger, no transition
-- table, no extra index (the one UPDATE trigger below fires only for a statement that sets
-- tenant_id).

-- Writers of device_state wait for this migration instead of racing the backfill (a device
-- created between the count and the trigger would be lost), and readers wait for the pending
-- index to be rebuilt at the end.
LOCK TABLE device_state IN SHARE ROW EXCLUSIVE MODE;

-- The tenant's device count is the sum of its rows here. A statement adds its delta to the
-- slot of its own connection, so concurrent transactions of one tenant (a device create
-- holds its transaction open across the broker round trip) seldom wait on each other, and
-- a transaction always uses one slot per tenant, so two of them cannot deadlock on slots.
-- A slot may go negative (devices created through one connection, deleted through another).
CREATE TABLE tenant_device_counts (
    tenant_id text     NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    slot      smallint NOT NULL,
    devices   bigint   NOT NULL,
    PRIMARY KEY (tenant_id, slot)
);

CREATE FUNCTION count_devices_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices)
    SELECT tenant_id, pg_backend_pid() % 16, count(*)
    FROM added
    GROUP BY tenant_id
    ORDER BY tenant_id  -- several tenants in one statement: lock their rows in one order
    ON CONFLICT (tenant_id, slot) DO UPDATE SET devices = c.devices + EXCLUDED.devices;
    RETURN NULL;
END $$;

CREATE FUNCTION count_devices_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A tenant deleted in this transaction takes its counts with it (the cascade on
    -- tenant_device_counts); writing a row for it would break the foreign key.
    INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices)
    SELECT r.tenant_id, pg_backend_pid() % 16, -count(*)
    FROM removed r
    WHERE EXISTS (SELECT 1 FROM tenants t WHERE t.tenant_id = r.tenant_id)
    GROUP BY r.tenant_id
    ORDER BY r.tenant_id
    ON CONFLICT (tenant_id, slot) DO UPDATE SET devices = c.devices + EXCLUDED.devices;
    RETURN NULL;
END $$;

CREATE FUNCTION count_devices_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM tenant_device_counts;
    RETURN NULL;
END $$;

-- Statement-level: one aggregate and one upsert per statement and tenant, however many rows
-- (bulk provisioning inserts a fleet in one statement).
CREATE TRIGGER device_state_count_insert
    AFTER INSERT ON device_state
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION count_devices_added();

CREATE TRIGGER device_state_count_delete
    AFTER DELETE ON device_state
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION count_devices_removed();

CREATE TRIGGER device_state_count_truncate
    AFTER TRUNCATE ON device_state
    FOR EACH STATEMENT EXECUTE FUNCTION count_devices_truncated();

-- The counts hold only if every write goes through these triggers. A bulk load that turns
-- triggers off with session_replication_role = replica (to skip the twin events, as
-- bench/fleet_scale.py does) must still count its devices.
ALTER TABLE device_state ENABLE ALWAYS TRIGGER device_state_count_insert;
ALTER TABLE device_state ENABLE ALWAYS TRIGGER device_state_count_delete;
ALTER TABLE device_state ENABLE ALWAYS TRIGGER device_state_count_truncate;

-- A row that moved between tenants would be counted in the wrong one; nothing in the product
-- moves a device, so refuse it. Statement-level and only for UPDATEs that name tenant_id:
-- reports never do, so they never even reach this trigger.
CREATE FUNCTION refuse_tenant_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'device_state.tenant_id cannot be changed (the fleet counts rely on it)'
        USING ERRCODE = 'feature_not_supported';
END $$;

CREATE TRIGGER device_state_tenant_fixed
    BEFORE UPDATE OF tenant_id ON device_state
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_tenant_change();
ALTER TABLE device_state ENABLE ALWAYS TRIGGER device_state_tenant_fixed;

INSERT INTO tenant_device_counts (tenant_id, slot, devices)
SELECT tenant_id, 0, count(*) FROM device_state GROUP BY tenant_id;

-- The pending count: "pending" is pending and not stale, so it needs last_seen. The pending
-- index carried only (tenant_id, device_id), so the count read last_seen from the heap for
-- every pending device (or scanned the table). Carrying last_seen in the same index makes it
-- an index-only scan. This replaces the index rather than adding one: a report's UPDATE is
-- never HOT (it moves last_seen, which idx_device_state_last_seen already holds), so every
-- row version of a pending device is inserted into this index anyway; the entry is 8 bytes
-- wider and nothing else on the write path changes. An extra index on (tenant_id,
-- last_seen) would be a second insert per pending row version for a slightly faster count.
DROP INDEX idx_device_state_shadow_pending;
CREATE INDEX idx_device_state_shadow_pending
    ON device_state (tenant_id, device_id) INCLUDE (last_seen)
    WHERE desired_version > reported_version;
