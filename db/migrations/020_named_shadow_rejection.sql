-- Named shadows keep a device's refusal too (SPEC §11 on the named shadows of §9): the same
-- ``rejected`` {version, code, message, at} and ``rejected_version`` as device_state (018),
-- in effect while rejected_version > reported_version; their `event: shadow` carries it.
-- (The fleet summary's `rejected` count stays the classic shadows'.)
ALTER TABLE device_shadows
    ADD COLUMN rejected         jsonb,
    ADD COLUMN rejected_version bigint;

-- 015's function, with the rejected version on the event.
CREATE OR REPLACE FUNCTION named_shadow_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    was_pending boolean := TG_OP <> 'INSERT'
        AND twin_awaits_report(OLD.desired_version, OLD.reported_version);
    is_pending boolean := TG_OP <> 'DELETE'
        AND twin_awaits_report(NEW.desired_version, NEW.reported_version);
    r device_shadows%ROWTYPE;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_OP = 'UPDATE' AND NEW.document_version = OLD.document_version
       AND NEW.published_version <> OLD.published_version THEN
        RETURN NULL;  -- the publisher recording what went out: not a change of the shadow
    END IF;
    IF TG_OP <> 'UPDATE' OR NEW.document_version <> OLD.document_version THEN
        INSERT INTO twin_events (tenant_id, device_id, kind, shadow, desired_version,
                                 reported_version, last_seen, rejected_version)
        SELECT r.tenant_id, r.device_id, 'shadow', r.name,
               CASE WHEN TG_OP = 'DELETE' THEN -1 ELSE r.desired_version END,
               r.reported_version, s.last_seen, r.rejected_version
        FROM device_state s WHERE s.device_id = r.device_id;
        PERFORM pg_notify('iot_twin_event', '');
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.desired_version > NEW.published_version THEN
        PERFORM pg_notify('iot_desired', NEW.device_id);
    END IF;
    IF was_pending <> is_pending
       AND EXISTS (SELECT 1 FROM tenants t WHERE t.tenant_id = r.tenant_id) THEN
        INSERT INTO tenant_device_counts AS c (tenant_id, slot, devices, shadows_pending)
        VALUES (r.tenant_id, pg_backend_pid() % 16, 0, CASE WHEN is_pending THEN 1 ELSE -1 END)
        ON CONFLICT (tenant_id, slot) DO UPDATE
            SET shadows_pending = c.shadows_pending + EXCLUDED.shadows_pending;
    END IF;
    RETURN NULL;
END $$;

-- A deleted device's named shadows have retained desired messages too: the publisher clears
-- `.../shadow/name/{name}/desired` for each name queued here, with the classic message.
ALTER TABLE retained_cleanup ADD COLUMN shadows text[] NOT NULL DEFAULT '{}';

-- A bulk job batch's `update/documents` carry each device's real `previous` document: the
-- AWS form of its classic shadow before the write, by device id (sent, then deleted).
ALTER TABLE shadow_outbox ADD COLUMN previous jsonb;

-- Named desired messages take a publish number from the classic ones' sequence, so a broker
-- restarted from a store saved at marker `seq` gets back the named ones published after it.
ALTER TABLE device_shadows ADD COLUMN published_seq bigint NOT NULL DEFAULT 0;
