-- The seq of the last report applied to each twin (docs/devices.md): a report whose seq is
-- not above it is an older state of the device, resent or re-delivered after a newer one,
-- and is acknowledged without being applied. NULL until a report carries one.
ALTER TABLE device_state ADD COLUMN reported_seq bigint;
