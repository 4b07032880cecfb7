-- The broker asks the database who a device is (SPEC §7).
--
-- Nothing per device is written into the broker any more: a broker auth plugin (ours for
-- Mosquitto, or a clustered broker's PostgreSQL authn/authz) reads the views below at
-- CONNECT and LISTENs on `iot_broker_credentials` to cut the sessions of rotated and deleted
-- credentials. The broker's own salted copy of each token goes: the broker compares the
-- SHA-256 the registry already keeps.

ALTER TABLE devices DROP COLUMN broker_salt, DROP COLUMN broker_hash;

-- One row per live device: the MQTT user name (= client id = device id), the hex SHA-256 of
-- its provision token (EMQX's `password_hash_algorithm: sha256`, no salt) and the tenant.
CREATE VIEW broker_credentials AS
SELECT device_id AS username,
       encode(token_hash, 'hex') AS password_hash,
       tenant_id,
       'tenant/' || tenant_id || '/device/' || device_id || '/shadow/' AS topic_prefix
FROM devices
WHERE revoked_at IS NULL;

-- What each live device may touch, in the (username, permission, action, topic) shape of
-- EMQX's PostgreSQL authorizer and mosquitto-go-auth; everything not listed is denied.
CREATE VIEW broker_acl AS
SELECT username, 'allow'::text AS permission, 'publish'::text AS action,
       topic_prefix || 'reported' AS topic
FROM broker_credentials
UNION ALL
SELECT username, 'allow', 'subscribe', topic_prefix || '#'
FROM broker_credentials
UNION ALL
SELECT username, 'allow', 'subscribe', 'tenant/+/device/' || username || '/shadow/#'
FROM broker_credentials;

-- A credential changed or went away: every broker cuts that user's live session.
CREATE FUNCTION notify_broker_credentials() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('iot_broker_credentials', OLD.device_id);
    RETURN NULL;
END $$;

CREATE TRIGGER devices_broker_credentials_changed
    AFTER UPDATE OF token_hash, revoked_at ON devices
    FOR EACH ROW
    WHEN (OLD.token_hash IS DISTINCT FROM NEW.token_hash
          OR OLD.revoked_at IS DISTINCT FROM NEW.revoked_at)
    EXECUTE FUNCTION notify_broker_credentials();

CREATE TRIGGER devices_broker_credentials_deleted
    AFTER DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION notify_broker_credentials();

-- Presence: what the broker saw of each device's MQTT connection. `presence_broker` names
-- the broker process (name/instance) that reported it, so a disconnect reported by one
-- broker never hides a connection held on another, and a restarted broker can clear what
-- its previous instance left marked as connected.
ALTER TABLE device_state
    ADD COLUMN connected       boolean NOT NULL DEFAULT false,
    ADD COLUMN connected_at    timestamptz,
    ADD COLUMN disconnected_at timestamptz,
    ADD COLUMN presence_broker text;

CREATE INDEX idx_device_state_connected_broker
    ON device_state (presence_broker) WHERE connected;

-- The broker's presence events, in the order it saw them:
-- [{"d": device_id, "c": connected?, "t": epoch milliseconds}, ...]
CREATE FUNCTION broker_presence(p_broker text, p_events jsonb) RETURNS void
LANGUAGE sql AS $$
    WITH ev AS (
        SELECT e.d AS device_id, e.c AS connected, to_timestamp(e.t / 1000.0) AS at, e.n
        FROM ROWS FROM (jsonb_to_recordset(p_events) AS (d text, c boolean, t bigint))
             WITH ORDINALITY AS e (d, c, t, n)
    ), per_device AS (
        SELECT device_id,
               (array_agg(connected ORDER BY n DESC))[1] AS connected,
               max(at) FILTER (WHERE connected) AS connected_at,
               max(at) FILTER (WHERE NOT connected) AS disconnected_at,
               max(at) AS at
        FROM ev GROUP BY device_id
    )
    UPDATE device_state s
    SET connected = p.connected,
        connected_at = COALESCE(p.connected_at, s.connected_at),
        disconnected_at = COALESCE(p.disconnected_at, s.disconnected_at),
        presence_broker = p_broker,
        last_seen = GREATEST(s.last_seen, p.at)
    FROM per_device p
    WHERE s.device_id = p.device_id
      -- a disconnect seen by another broker than the one holding the connection is old news
      AND (p.connected OR NOT s.connected OR s.presence_broker = p_broker);
$$;

-- A broker (re)started as `p_broker` = name/instance: its earlier instances' connections
-- are gone.
CREATE FUNCTION broker_started(p_broker text) RETURNS void
LANGUAGE sql AS $$
    UPDATE device_state
    SET connected = false, disconnected_at = now()
    WHERE connected
      AND presence_broker LIKE split_part(p_broker, '/', 1) || '/%'
      AND presence_broker <> p_broker;
$$;

-- Desired delivery across broker restarts: every retained publish is numbered; the broker
-- keeps a retained marker with the number its store has reached, so after a restart only
-- what came later is published again. A broker without the marker is fresh: its epoch
-- starts a background fill of every device not published since (`published_seq <=
-- fill_below`), resumable by `resync_after`.
ALTER TABLE device_state ADD COLUMN published_seq bigint NOT NULL DEFAULT 0;
CREATE SEQUENCE desired_publish_seq;

CREATE TABLE broker_delivery (
    broker       text PRIMARY KEY,
    epoch        text NOT NULL,
    resync_after text,
    fill_below   bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
