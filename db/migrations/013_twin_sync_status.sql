-- A device's sync status, once in SQL; shared.twin.sync_status is the same rule in Python:
-- stale when never seen or not seen since stale_before; else synced when it has reported the
-- desired version; else pending. twin_awaits_report is the version half of that rule, which
-- the fleet counts keep on their own (migrations 008 and 010).
--
-- Both are single-expression SQL functions, IMMUTABLE, so the planner inlines them: a query
-- written with them is the same expression to the planner as one written out, and still
-- matches the partial indexes and the expression statistics over
-- "desired_version > reported_version" (migrations 006 and 010). The status is a parameter
-- that callers pass as a constant, so the CASE folds to the one branch asked for.

CREATE FUNCTION twin_awaits_report(desired_version bigint, reported_version bigint)
    RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT desired_version > reported_version $$;

-- "IS TRUE" beside the plain comparison: the expression statistics of 006 estimate it, where
-- the plain comparison alone gets the planner's flat guess of a third of the rows.
CREATE FUNCTION twin_has_sync_status(
    status text,
    desired_version bigint,
    reported_version bigint,
    last_seen timestamptz,
    stale_before timestamptz
) RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE status
        WHEN 'stale' THEN last_seen IS NULL OR last_seen < stale_before
        WHEN 'synced' THEN last_seen >= stale_before
                           AND NOT twin_awaits_report(desired_version, reported_version)
        WHEN 'pending' THEN last_seen >= stale_before
                            AND twin_awaits_report(desired_version, reported_version)
                            AND twin_awaits_report(desired_version, reported_version) IS TRUE
    END
$$;

-- The count triggers of migration 012 (devices, pending, connected), with the version rule
-- written once.
CREATE OR REPLACE FUNCTION count_devices_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices, pending, connected)
    SELECT tenant_id, pg_backend_pid() % 16, count(*),
           count(*) FILTER (WHERE twin_awaits_report(desired_version, reported_version)),
           count(*) FILTER (WHERE connected)
    FROM added
    GROUP BY tenant_id
    ORDER BY tenant_id  -- several tenants in one statement: lock their rows in one order
    ON CONFLICT (tenant_id, slot) DO UPDATE
        SET devices = c.devices + EXCLUDED.devices, pending = c.pending + EXCLUDED.pending,
            connected = c.connected + EXCLUDED.connected;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION count_devices_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A tenant deleted in this transaction takes its counts with it (the cascade on
    -- tenant_device_counts); writing a row for it would break the foreign key.
    INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices, pending, connected)
    SELECT r.tenant_id, pg_backend_pid() % 16, -count(*),
           -count(*) FILTER (WHERE twin_awaits_report(r.desired_version, r.reported_version)),
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

CREATE OR REPLACE FUNCTION count_status_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices, pending, connected)
    SELECT n.tenant_id, pg_backend_pid() % 16, 0,
           sum(twin_awaits_report(n.desired_version, n.reported_version)::int
               - twin_awaits_report(o.desired_version, o.reported_version)::int),
           sum(n.connected::int - o.connected::int)
    FROM changed_new n JOIN changed_old o USING (device_id)
    WHERE twin_awaits_report(n.desired_version, n.reported_version)
          <> twin_awaits_report(o.desired_version, o.reported_version)
       OR n.connected <> o.connected
    GROUP BY n.tenant_id
    HAVING sum(twin_awaits_report(n.desired_version, n.reported_version)::int
               - twin_awaits_report(o.desired_version, o.reported_version)::int) <> 0
        OR sum(n.connected::int - o.connected::int) <> 0
    ORDER BY n.tenant_id
    ON CONFLICT (tenant_id, slot) DO UPDATE
        SET pending = c.pending + EXCLUDED.pending, connected = c.connected + EXCLUDED.connected;
    RETURN NULL;
END $$;
