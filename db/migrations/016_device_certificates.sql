-- X.509 device certificates (SPEC §9): a device may log in to the broker's mutual-TLS
-- listener with a client certificate instead of its provision token.
--
-- Each tenant gets its own device CA on first use. Its private key is kept here only as
-- encrypted PKCS#8 (the passphrase lives with the services, never in the database: see
-- docs/architecture.md), so a database dump alone cannot issue certificates.
CREATE TABLE device_cas (
    tenant_id       text PRIMARY KEY REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    certificate_pem text NOT NULL,
    key_pem         text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- A device's certificates, by SHA-256 fingerprint of the DER (AWS's certificate id). The
-- fingerprint is unique across tenants: one certificate is one device's identity.
CREATE TABLE device_certificates (
    certificate_id  text PRIMARY KEY CHECK (certificate_id ~ '^[0-9a-f]{64}$'),
    tenant_id       text NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    device_id       text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    certificate_pem text NOT NULL,
    -- 'issued': signed here from a CSR; 'registered': brought along (AWS's "without CA")
    origin          text NOT NULL CHECK (origin IN ('issued', 'registered')),
    subject         text NOT NULL,
    -- a registered self-signed certificate goes into the broker's trust store itself
    self_signed     boolean NOT NULL,
    not_after       timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_certificates_device ON device_certificates (device_id);

-- What a broker asks at CONNECT when a client presents a certificate: the certificate's
-- fingerprint (lower-case hex SHA-256 of its DER) names the live device it belongs to.
CREATE VIEW broker_certificates AS
SELECT c.certificate_id AS fingerprint, d.device_id AS username, d.tenant_id
FROM device_certificates c
JOIN devices d ON d.device_id = c.device_id AND d.tenant_id = c.tenant_id
WHERE d.revoked_at IS NULL;

-- A certificate removed: every broker cuts the session of its device (the same channel a
-- rotated token uses, migration 011).
CREATE TRIGGER device_certificates_removed
    AFTER DELETE ON device_certificates
    FOR EACH ROW EXECUTE FUNCTION notify_broker_credentials();
