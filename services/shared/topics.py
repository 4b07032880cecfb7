"""MQTT topic names (SPEC §7), built and parsed in one place."""

from __future__ import annotations

import re

REPORTED_SUBSCRIPTION = "tenant/+/device/+/shadow/reported"
NAMED_REPORTED_SUBSCRIPTION = "tenant/+/device/+/shadow/name/+/reported"
# The AWS IoT Device Shadow requests (SPEC §9): classic and named, get/update/delete.
AWS_SUBSCRIPTIONS = tuple(
    f"$aws/things/+/shadow/{named}{operation}"
    for named in ("", "name/+/")
    for operation in ("get", "update", "delete")
)
SHARED_GROUP = "ingest"
# Retained, services only: how far the broker's retained store has got (ingest_iot.publisher).
DELIVERY_MARKER_TOPIC = "iotcloud/delivery-marker"
_REPORTED = re.compile(r"^tenant/([^/]+)/device/([^/]+)/shadow/reported$")
_NAMED_REPORTED = re.compile(r"\Atenant/([^/]+)/device/([^/]+)/shadow/name/([^/]+)/reported\Z")
_AWS_REQUEST = re.compile(r"\A\$aws/things/([^/]+)/shadow/(?:name/([^/]+)/)?(get|update|delete)\Z")


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


def shadow_prefix(tenant_id: str, device_id: str, shadow: str) -> str:
    """The native topic prefix of a shadow ("" the classic one, else a named one)."""
    base = device_prefix(tenant_id, device_id)
    return base + (f"name/{shadow}/" if shadow else "")


def named_desired_topic(tenant_id: str, device_id: str, shadow: str) -> str:
    return shadow_prefix(tenant_id, device_id, shadow) + "desired"


def named_reply_topic(tenant_id: str, device_id: str, shadow: str, *, accepted: bool) -> str:
    return shadow_prefix(tenant_id, device_id, shadow) + (
        "reported/accepted" if accepted else "reported/rejected"
    )


def parse_named_reported(topic: str) -> tuple[str, str, str] | None:
    """(tenant_id, device_id, shadow) of a named shadow's reported topic, or None."""
    match = _NAMED_REPORTED.match(topic)
    return (match.group(1), match.group(2), match.group(3)) if match else None


def aws_prefix(thing: str, shadow: str) -> str:
    return f"$aws/things/{thing}/shadow/" + (f"name/{shadow}/" if shadow else "")


def parse_aws_request(topic: str) -> tuple[str, str, str] | None:
    """(thing, shadow or "", operation) of an AWS shadow request topic, or None."""
    match = _AWS_REQUEST.match(topic)
    return (match.group(1), match.group(2) or "", match.group(3)) if match else None
