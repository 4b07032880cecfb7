-- Fleet queries straight from the database (filters, summary) and bulk desired jobs.

-- Trigram indexes answer the list's ?q= (substring of id or name) without a scan.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- ?tag=key:value is a containment test on the tags object.
CREATE INDEX idx_devices_tags
    ON devices USING gin (tags jsonb_path_ops)
    WHERE revoked_at IS NULL;

CREATE INDEX idx_devices_id_trgm
    ON devices USING gin (device_id gin_trgm_ops)
    WHERE revoked_at IS NULL;

CREATE INDEX idx_devices_name_trgm
    ON devices USING gin (name gin_trgm_ops)
    WHERE revoked_at IS NULL;

-- Stale devices (never seen, or not seen for a while) and the summary's stale count.
-- NULLS FIRST keeps "never seen" and "seen long ago" in one contiguous index range.
CREATE INDEX idx_device_state_last_seen
    ON device_state (tenant_id, last_seen NULLS FIRST);

-- A bulk desired job: one merge patch for every device its filter matched when it started.
CREATE TABLE fleet_jobs (
    job_id      uuid PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    filter      jsonb NOT NULL,
    patch       jsonb NOT NULL,
    created_by  text NOT NULL,
    status      text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
    -- NULL until the matching devices have been recorded in fleet_job_devices.
    matched     bigint,
    written     bigint NOT NULL DEFAULT 0,
    skipped     bigint NOT NULL DEFAULT 0,
    failed      bigint NOT NULL DEFAULT 0,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX idx_fleet_jobs_running ON fleet_jobs (updated_at) WHERE status = 'running';
CREATE INDEX idx_fleet_jobs_tenant ON fleet_jobs (tenant_id, created_at DESC);

-- The job's device set and what happened to each: the resume point after a crash, since a
-- device's outcome is recorded in the same transaction as its desired write.
CREATE TABLE fleet_job_devices (
    job_id    uuid NOT NULL REFERENCES fleet_jobs (job_id) ON DELETE CASCADE,
    device_id text NOT NULL,
    -- NULL: still to do. 'written' carries the desired_version this job wrote.
    outcome   text CHECK (outcome IN ('written', 'skipped', 'failed')),
    version   bigint,
    error     text,
    PRIMARY KEY (job_id, device_id)
);
CREATE INDEX idx_fleet_job_devices_todo
    ON fleet_job_devices (job_id, device_id)
    WHERE outcome IS NULL;

-- Wake the job runners of every ui_iot replica when a job is queued.
CREATE FUNCTION notify_fleet_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('iot_fleet_job', NEW.job_id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER fleet_job_queued
    AFTER INSERT ON fleet_jobs
    FOR EACH ROW EXECUTE FUNCTION notify_fleet_job();

-- The planner's default guess for "desired_version > reported_version" is a third of the
-- rows. Statistics on the expression tell it how few devices are really pending; queries
-- reach them by adding "(desired_version > reported_version) IS TRUE" next to the plain
-- comparison (which is what matches the pending partial index). So a pending page starts
-- from that index instead of walking the whole fleet in id order.
CREATE STATISTICS device_state_pending_stats ON (desired_version > reported_version)
    FROM device_state;
