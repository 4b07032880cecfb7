"""MQTT topic names (SPEC §7), built and parsed in one place."""

from __future__ import annotations

import re

REPORTED_SUBSCRIPTION = "tenant/+/device/+/shadow/reported"
SHARED_GROUP = "ingest"
# Retained, services only: how far the broker's retained store has got (ingest_iot.publisher).
DELIVERY_MARKER_TOPIC = "iotcloud/delivery-marker"
_REPORTED = re.compile(r"^tenant/([^/]+)/device/([^/]+)/shadow/reported$")


def device_prefix(tenant_id: str, device_id: str) -> str:
    return f"tenant/{tenant_id}/device/{device_id}/shadow/"


def desired_topic(tenant_id: str, device_id: str) -> str:
    return device_prefix(tenant_id, device_id) + "desired"


def reported_topic(tenant_id: str, device_id: str) -> str:
    return device_prefix(tenant_id, device_id) + "reported"


def reply_topic(tenant_id: str, device_id: str, *, accepted: bool) -> str:
    return reported_topic(tenant_id, device_id) + ("/accepted" if accepted else "/rejected")


def parse_reported(topic: str) -> tuple[str, str] | None:
    """(tenant_id, device_id) of a reported topic, or None."""
    match = _REPORTED.match(topic)
    return (match.group(1), match.group(2)) if match else None
