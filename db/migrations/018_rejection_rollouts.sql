-- Device rejection and staged, health-gated rollouts (SPEC §11).

-- A device's refusal of a desired version: ``rejected`` is {version, code, message, at};
-- it is in effect (sync_status "rejected") while the device has not applied that version
-- or a later one: rejected_version > reported_version.
ALTER TABLE device_state
    ADD COLUMN rejected         jsonb,
    ADD COLUMN rejected_version bigint;

-- ?sync_status=rejected and the summary's rejected count: a range of the few rejecting twins.
CREATE INDEX idx_device_state_rejected
    ON device_state (tenant_id, device_id)
    WHERE rejected_version IS NOT NULL;

-- A rejection is history of its own kind (the device as actor); a rollout's writes have the
-- rollout as actor (actor_id holds its id).
ALTER TABLE twin_history
    ADD COLUMN actor_id text,
    DROP CONSTRAINT twin_history_kind_check,
    ADD CONSTRAINT twin_history_kind_check
        CHECK (kind IN ('desired', 'reported', 'rejected')) NOT VALID,
    DROP CONSTRAINT twin_history_actor_type_check,
    ADD CONSTRAINT twin_history_actor_type_check
        CHECK (actor_type IN ('user', 'device', 'rollout')) NOT VALID;
ALTER TABLE twin_history VALIDATE CONSTRAINT twin_history_kind_check;
ALTER TABLE twin_history VALIDATE CONSTRAINT twin_history_actor_type_check;

-- Twin events carry the rejected version, so the stream's sync_status is the one at the
-- moment of the change (012's functions, with the one column more).
ALTER TABLE twin_events ADD COLUMN rejected_version bigint;

CREATE OR REPLACE FUNCTION record_twin_events_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO twin_events (tenant_id, device_id, kind, desired_version, reported_version,
                             last_seen, connected, connected_at, disconnected_at,
                             rejected_version)
    SELECT n.tenant_id, n.device_id, k.kind, n.desired_version, n.reported_version,
           n.last_seen, n.connected, n.connected_at, n.disconnected_at, n.rejected_version
    FROM updated_new n JOIN updated_old o USING (device_id)
    CROSS JOIN LATERAL (VALUES
        ('twin',
         n.desired_version IS DISTINCT FROM o.desired_version
         OR n.reported_version IS DISTINCT FROM o.reported_version
         OR n.shadow_updated_at IS DISTINCT FROM o.shadow_updated_at
         OR n.rejected_version IS DISTINCT FROM o.rejected_version
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

-- A staged rollout: one merge patch, written stage by stage to a stable random sample of
-- the devices its filter matched when it was created (rollout_devices, numbered in the
-- order of md5(rollout_id || device_id)).
CREATE TABLE rollouts (
    rollout_id       uuid PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    filter           jsonb NOT NULL,
    patch            jsonb NOT NULL,
    -- The request's stages and each one's cumulative device count (its last position).
    stages           jsonb NOT NULL,
    stage_ends       bigint[] NOT NULL,
    success          jsonb NOT NULL,
    on_failure       text NOT NULL CHECK (on_failure IN ('pause', 'revert')),
    state            text NOT NULL DEFAULT 'running'
                     CHECK (state IN ('running', 'paused', 'reverting', 'reverted', 'done',
                                      'aborted')),
    stage            integer NOT NULL DEFAULT 0,
    -- When the current stage's last device was written: its within_s runs from here.
    stage_written_at timestamptz,
    matched          bigint NOT NULL,
    reason           text,
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX idx_rollouts_tenant ON rollouts (tenant_id, created_at DESC);
CREATE INDEX idx_rollouts_active ON rollouts (created_at)
    WHERE state IN ('running', 'reverting');

-- One row per device of a rollout: its stage, and once written, the desired version the
-- rollout gave it and the merge patch that puts its changed keys back (``revert``).
CREATE TABLE rollout_devices (
    rollout_id     uuid NOT NULL REFERENCES rollouts (rollout_id) ON DELETE CASCADE,
    device_id      text NOT NULL,
    position       bigint NOT NULL,
    stage          integer NOT NULL,
    outcome        text CHECK (outcome IN ('written', 'skipped', 'failed')),
    version        bigint,
    revert         jsonb,
    error          text,
    reverted       boolean NOT NULL DEFAULT false,
    revert_version bigint,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX idx_rollout_devices_stage ON rollout_devices (rollout_id, stage, device_id);
CREATE INDEX idx_rollout_devices_device ON rollout_devices (device_id);
