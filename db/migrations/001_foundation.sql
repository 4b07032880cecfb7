-- Tenants, operator accounts, the device registry and the per-device state row.

CREATE TABLE tenants (
    tenant_id  text PRIMARY KEY CHECK (tenant_id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    user_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    email         text NOT NULL,
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

-- device_id is global: it is the device's MQTT user name and part of its topics.
CREATE TABLE devices (
    device_id   text PRIMARY KEY CHECK (device_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
    tenant_id   text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    name        text NOT NULL DEFAULT '',
    tags        jsonb NOT NULL DEFAULT '{}'::jsonb,
    token_hash  bytea NOT NULL UNIQUE,
    -- The broker's own salted PBKDF2 form of the same token, so a broker that lost its
    -- accounts can be rebuilt from the database without the token ever being stored.
    broker_salt text NOT NULL,
    broker_hash text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX devices_tenant_live ON devices (tenant_id, device_id) WHERE revoked_at IS NULL;

CREATE TABLE device_state (
    device_id text PRIMARY KEY REFERENCES devices (device_id) ON DELETE CASCADE,
    tenant_id text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    last_seen timestamptz
);
CREATE INDEX device_state_tenant ON device_state (tenant_id, device_id);
