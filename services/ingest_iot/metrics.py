"""Prometheus metrics of the device side (pool and broker gauges: ``shared.web``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
