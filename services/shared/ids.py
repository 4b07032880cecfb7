"""The rules for identifiers, once: tenant, device, model and tag-key ids, numeric cursors.

Each rule is written as one body and given in two forms. ``*_RE`` is for Python, anchored
with ``\\A`` and ``\\Z``: Python's ``$`` also matches before a trailing newline, so
``"x\\n"`` would pass a ``^...$`` pattern. ``*_PATTERN`` is for JSON Schema (pydantic and
the OpenAPI documents), whose dialects (ECMA-262, Rust's regex) have no ``\\Z`` and whose
``$`` already means the end of the text.
"""

from __future__ import annotations

import re

_TENANT_ID = r"[a-z0-9][a-z0-9-]{0,62}"
_DEVICE_ID = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"
_TAG_KEY = r"[A-Za-z0-9][A-Za-z0-9._/-]{0,63}"
# AWS IoT's rule for a shadow name; the classic (unnamed) shadow is "" and matches no name.
_SHADOW_NAME = r"[a-zA-Z0-9:_-]{1,64}"

TENANT_ID_RE = re.compile(rf"\A{_TENANT_ID}\Z")
DEVICE_ID_RE = re.compile(rf"\A{_DEVICE_ID}\Z")
# A model id follows the device id's rule: both appear in URLs and filters side by side.
MODEL_ID_RE = DEVICE_ID_RE
TAG_KEY_RE = re.compile(rf"\A{_TAG_KEY}\Z")
SHADOW_NAME_RE = re.compile(rf"\A{_SHADOW_NAME}\Z")

TENANT_ID_PATTERN = f"^{_TENANT_ID}$"
DEVICE_ID_PATTERN = f"^{_DEVICE_ID}$"
MODEL_ID_PATTERN = DEVICE_ID_PATTERN
SHADOW_NAME_PATTERN = f"^{_SHADOW_NAME}$"

_DECIMAL_RE = re.compile(r"\A[0-9]{1,19}\Z")
BIGINT_MAX = 2**63 - 1


def is_tenant_id(value: str) -> bool:
    return TENANT_ID_RE.match(value) is not None


def is_device_id(value: str) -> bool:
    return DEVICE_ID_RE.match(value) is not None


def is_model_id(value: str) -> bool:
    return MODEL_ID_RE.match(value) is not None


def is_tag_key(value: str) -> bool:
    return TAG_KEY_RE.match(value) is not None


def is_shadow_name(value: str) -> bool:
    """A named shadow's name (AWS's rule); never true for "", the classic shadow."""
    return SHADOW_NAME_RE.match(value) is not None


def parse_bigint_id(value: str) -> int | None:
    """A non-negative PostgreSQL ``bigint`` written in ASCII digits (a cursor, an event id,
    a version), or None: not digits (``str.isdigit`` also takes ``"²"``), or out of range."""
    if _DECIMAL_RE.match(value) is None:
        return None
    number = int(value)
    return number if number <= BIGINT_MAX else None
