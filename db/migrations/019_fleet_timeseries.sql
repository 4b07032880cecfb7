-- Fleet counts over time, for the console's 24-hour chart: one row per tenant every five
-- minutes, written by ingest_iot's leader (one replica at a time; a slot taken twice keeps
-- the first). Kept two days (shared.services.fleet_history).
CREATE TABLE fleet_count_samples (
    tenant_id text        NOT NULL REFERENCES tenants (tenant_id) ON DELETE CASCADE,
    at        timestamptz NOT NULL,
    total     bigint      NOT NULL,
    synced    bigint      NOT NULL,
    pending   bigint      NOT NULL,
    stale     bigint      NOT NULL,
    connected bigint      NOT NULL,
    PRIMARY KEY (tenant_id, at)
);

-- Retention deletes by age across tenants.
CREATE INDEX idx_fleet_count_samples_at ON fleet_count_samples (at);
