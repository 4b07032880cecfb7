-- Device models: JSON Schema (2020-12) for the desired and reported state of the devices
-- that use them (SPEC §8). Schemas are checked by the service before they are stored.

CREATE TABLE device_models (
    tenant_id       text        NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    model_id        text        NOT NULL
                                CHECK (model_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
    desired_schema  jsonb       NOT NULL,
    reported_schema jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, model_id)
);

-- A device can only use a model of its own tenant.
ALTER TABLE devices
    ADD COLUMN model_id text,
    ADD CONSTRAINT devices_model_fk FOREIGN KEY (tenant_id, model_id)
        REFERENCES device_models (tenant_id, model_id);

-- The live devices of a model: re-validated when its schema changes.
CREATE INDEX devices_model ON devices (tenant_id, model_id, device_id)
    WHERE model_id IS NOT NULL AND revoked_at IS NULL;
