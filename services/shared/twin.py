"""The device-twin rules, once: merge patch, delta, sync status, versions, limits.

Pure and typed: no I/O, no framework. The operator API, the device API and the MQTT bridge
all call these functions and never re-implement them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

JSON = Any
"""A decoded JSON value: dict, list, str, int, float, bool or None."""

SyncStatus = Literal["synced", "pending", "stale"]

DEFAULT_STALE_AFTER = timedelta(hours=1)
DEFAULT_MAX_STATE_BYTES = 64 * 1024
DEFAULT_MAX_DEPTH = 16


# --- JSON equality -------------------------------------------------------------------------


def json_equal(a: JSON, b: JSON) -> bool:
    """Equality with JSON's types, not Python's: ``true`` is not ``1``; ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return False
        return all(json_equal(value, b[key]) for key, value in a.items())
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return False
        return all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float):
        return isinstance(b, int | float) and a == b
    return type(a) is type(b) and bool(a == b)


# --- merge patch (RFC 7386) ----------------------------------------------------------------


def merge_patch(target: JSON, patch: JSON) -> JSON:
    """Apply a JSON merge patch; returns a new value and never mutates its arguments.

    Objects merge recursively, ``null`` deletes a key, arrays and scalars replace.
    """
    if not isinstance(patch, dict):
        return patch
    result: dict[str, JSON] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- delta and sync status -----------------------------------------------------------------


def compute_delta(desired: dict[str, JSON], reported: dict[str, JSON]) -> dict[str, JSON]:
    """The part of ``desired`` that ``reported`` does not yet match.

    Recurses where both sides hold an object; arrays and scalars compare whole; keys only in
    ``reported`` are ignored; equal subtrees are left out, so no ``{}`` appears at any depth.
    """
    delta: dict[str, JSON] = {}
    for key, want in desired.items():
        have = reported.get(key)
        if isinstance(want, dict):
            # An object asks only for its own keys, so an empty one asks for nothing.
            nested = compute_delta(want, have if isinstance(have, dict) else {})
            if nested:
                delta[key] = nested
        elif key not in reported or not json_equal(want, have):
            delta[key] = want
    return delta


def sync_status(
    desired_version: int,
    reported_version: int,
    last_seen: datetime | None,
    *,
    now: datetime | None = None,
    stale_after: timedelta = DEFAULT_STALE_AFTER,
) -> SyncStatus:
    """``stale`` if the device has not been seen within ``stale_after``; else synced/pending."""
    if last_seen is None:
        return "stale"
    current = now if now is not None else datetime.now(UTC)
    if current - last_seen > stale_after:
        return "stale"
    return "synced" if reported_version >= desired_version else "pending"


# --- versions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionVerdict:
    accepted: bool
    error: str | None = None


def check_report_version(
    version: int, reported_version: int, desired_version: int
) -> VersionVerdict:
    """A report must carry ``reported_version <= version <= desired_version``.

    Equal is accepted (re-delivery, or a state update without a new desired version).
    """
    if version < reported_version:
        return VersionVerdict(
            False, f"stale version {version}: reported version is already {reported_version}"
        )
    if version > desired_version:
        return VersionVerdict(
            False, f"unknown version {version}: desired version is only {desired_version}"
        )
    return VersionVerdict(True)


# --- limits --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    max_state_bytes: int = DEFAULT_MAX_STATE_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH


class TwinLimitError(ValueError):
    """A document breaks a size or depth limit; ``too_large`` tells which (413 vs 422)."""

    def __init__(self, message: str, *, too_large: bool) -> None:
        super().__init__(message)
        self.too_large = too_large


def json_depth(value: JSON) -> int:
    """Nesting depth: a scalar is 0, ``{}`` or ``[]`` is 1, ``{"a": {}}`` is 2."""
    depth = 0
    stack: list[tuple[JSON, int]] = [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            depth = max(depth, level + 1)
            stack.extend((child, level + 1) for child in node.values())
        elif isinstance(node, list):
            depth = max(depth, level + 1)
            stack.extend((child, level + 1) for child in node)
    return depth


def compact_size(value: JSON) -> int:
    return len(orjson.dumps(value))


def check_limits(document: JSON, limits: Limits, *, what: str) -> None:
    """Raise :class:`TwinLimitError` when ``document`` is too deep or too large."""
    depth = json_depth(document)
    if depth > limits.max_depth:
        raise TwinLimitError(
            f"{what} is nested {depth} levels deep; the limit is {limits.max_depth}",
            too_large=False,
        )
    size = compact_size(document)
    if size > limits.max_state_bytes:
        raise TwinLimitError(
            f"{what} is {size} bytes as compact JSON; the limit is {limits.max_state_bytes}",
            too_large=True,
        )
