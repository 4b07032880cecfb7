"""Prometheus metrics of the device side (pool and broker gauges: ``shared.web``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REPORTS = Counter(
    "iotcloud_reports_total",
    "Device reports by transport and outcome "
    "(accepted, version, malformed, too_large, foreign, error)",
    ["transport", "outcome"],
)
DESIRED_PUBLISHED = Counter(
    "iotcloud_desired_published_total", "Retained desired messages published"
)
DESIRED_LAG = Gauge(
    "iotcloud_desired_unpublished_oldest_seconds",
    "Age of the oldest committed desired state not yet published to the broker",
)
REPORT_BATCH = Histogram(
    "iotcloud_report_batch_size",
    "MQTT reports applied per transaction (grows with the load while a batch commits)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
