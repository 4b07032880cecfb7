-- Administration and account security (SPEC §10): user state that revokes tokens at once,
-- the audit log, and the sign-in throttle.

-- token_version is copied into every token issued for the user; changing it (disable,
-- role change, password change) makes every earlier token invalid on every replica.
ALTER TABLE users
    ADD COLUMN disabled      boolean     NOT NULL DEFAULT false,
    ADD COLUMN token_version bigint      NOT NULL DEFAULT 0,
    ADD COLUMN last_login_at timestamptz;

CREATE INDEX users_tenant ON users (tenant_id, user_id);

-- Every ui_iot replica keeps the users it has seen in memory and LISTENs here to forget one
-- the moment its tokens change meaning (payload: the user id).
CREATE FUNCTION notify_user_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('iot_user_changed', OLD.user_id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER users_tokens_changed
    AFTER UPDATE OF token_version, disabled, role, password_hash ON users
    FOR EACH ROW
    WHEN (OLD.token_version IS DISTINCT FROM NEW.token_version
          OR OLD.disabled IS DISTINCT FROM NEW.disabled
          OR OLD.role IS DISTINCT FROM NEW.role
          OR OLD.password_hash IS DISTINCT FROM NEW.password_hash)
    EXECUTE FUNCTION notify_user_changed();

CREATE TRIGGER users_deleted
    AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION notify_user_changed();

-- Who did what, written in the transaction of the change it records. tenant_id is NULL for
-- events that belong to no tenant (a failed sign-in for an unknown e-mail).
CREATE TABLE audit_log (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id text REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text NOT NULL,
    action    text NOT NULL,
    target    text NOT NULL DEFAULT '',
    detail    jsonb NOT NULL DEFAULT '{}'::jsonb,
    ip        text
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id DESC);
CREATE INDEX audit_log_tenant_actor ON audit_log (tenant_id, actor, id DESC);
CREATE INDEX audit_log_tenant_action ON audit_log (tenant_id, action, id DESC);
CREATE INDEX audit_log_at ON audit_log (at);

-- Failed sign-ins per key ('account:<email>' or 'ip:<address>'), shared by all replicas.
CREATE TABLE sign_in_failures (
    key          text PRIMARY KEY,
    failures     integer     NOT NULL,
    first_at     timestamptz NOT NULL,
    locked_until timestamptz
);

-- A change of a model's schemas, checked against the current desired state of its devices
-- by a background job (in batches, with progress) before it is applied; refused if any
-- device would break. One running check per model.
CREATE TABLE model_revalidations (
    job_id          uuid PRIMARY KEY,
    tenant_id       text NOT NULL,
    model_id        text NOT NULL,
    desired_schema  jsonb NOT NULL,
    reported_schema jsonb,
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'applied', 'refused')),
    total           bigint NOT NULL,
    checked         bigint NOT NULL DEFAULT 0,
    invalid_count   bigint NOT NULL DEFAULT 0,
    devices         jsonb NOT NULL DEFAULT '[]'::jsonb,
    after_device    text NOT NULL DEFAULT '',
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    FOREIGN KEY (tenant_id, model_id)
        REFERENCES device_models (tenant_id, model_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX model_revalidations_one_running
    ON model_revalidations (tenant_id, model_id) WHERE status = 'running';
