-- The device shadow: desired and reported documents with their versions (SPEC §3, §4).

ALTER TABLE device_state
    ADD COLUMN desired_state     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN reported_state    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN desired_version   bigint      NOT NULL DEFAULT 0 CHECK (desired_version >= 0),
    ADD COLUMN reported_version  bigint      NOT NULL DEFAULT 0 CHECK (reported_version >= 0),
    ADD COLUMN shadow_updated_at timestamptz NOT NULL DEFAULT now();

CREATE INDEX idx_device_state_shadow_pending
    ON device_state (tenant_id, device_id)
    WHERE desired_version > reported_version;
