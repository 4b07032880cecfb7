"""The device-twin rules, once: merge patch, delta, sync status, versions, limits.

Pure and typed: no I/O, no framework. The operator API, the device API and the MQTT bridge
all call these functions and never re-implement them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal

import orjson
import referencing
import referencing.exceptions
from jsonschema import Draft202012Validator
from referencing.jsonschema import DRAFT202012

from shared import safe_regex

JSON = Any
"""A decoded JSON value: dict, list, str, int, float, bool or None."""

SyncStatus = Literal["synced", "pending", "stale", "rejected"]

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
    rejected_version: int | None = None,
) -> SyncStatus:
    """``stale`` if the device has not been seen within ``stale_after``; else ``rejected``
    while it has refused a desired version it has not applied since (SPEC §11); else
    synced/pending."""
    if last_seen is None:
        return "stale"
    current = now if now is not None else datetime.now(UTC)
    if current - last_seen > stale_after:
        return "stale"
    if rejection_in_effect(rejected_version, reported_version):
        return "rejected"
    return "synced" if reported_version >= desired_version else "pending"


def rejection_in_effect(rejected_version: int | None, reported_version: int) -> bool:
    """A refusal holds until the device applies that desired version or a later one."""
    return rejected_version is not None and rejected_version > reported_version


def in_sync(delta: dict[str, JSON], desired_version: int, reported_version: int) -> bool:
    """The device has applied the latest desired version and its reported state matches."""
    return not delta and reported_version >= desired_version


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


RefusalKind = Literal["malformed", "too_large", "schema", "precondition", "version"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a twin write is refused, typed; ``shared.errors.refusal_error`` gives its status.

    ``detail`` is the structured body where there is one (schema violations), else None.
    """

    kind: RefusalKind
    message: str
    detail: JSON = None


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


def limits_refusal(document: JSON, limits: Limits, *, what: str) -> Refusal | None:
    """Why ``document`` is too deep (malformed) or too large; None when it fits."""
    depth = json_depth(document)
    if depth > limits.max_depth:
        return Refusal(
            "malformed", f"{what} is nested {depth} levels deep; the limit is {limits.max_depth}"
        )
    size = compact_size(document)
    if size > limits.max_state_bytes:
        return Refusal(
            "too_large",
            f"{what} is {size} bytes as compact JSON; the limit is {limits.max_state_bytes}",
        )
    return None


# --- NUL -----------------------------------------------------------------------------------
#
# PostgreSQL's jsonb and text cannot hold U+0000, so a document that carries one anywhere (a
# key or a string) is refused as malformed before it reaches the database.


def nul_pointer(value: JSON) -> str | None:
    """The JSON pointer of the first key or string holding U+0000, or None."""
    stack: list[tuple[JSON, list[str | int]]] = [(value, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return json_pointer(path)
        elif isinstance(node, dict):
            for key, child in node.items():
                if "\x00" in key:
                    return json_pointer([*path, key])
                stack.append((child, [*path, key]))
        elif isinstance(node, list):
            stack.extend((child, [*path, index]) for index, child in enumerate(node))
    return None


def nul_refusal(value: JSON, *, what: str = "the JSON") -> Refusal | None:
    """Refuse ``value`` (as malformed) if a key or string in it holds U+0000."""
    pointer = nul_pointer(value)
    if pointer is None:
        return None
    return Refusal(
        "malformed",
        f"{what} holds a NUL character (\\u0000) at {pointer or '/'!r}, which cannot be stored",
    )


def nul_refusal_in_json(raw: bytes, value: JSON) -> Refusal | None:
    """:func:`nul_refusal` for ``value`` decoded from the JSON text ``raw``: JSON can carry
    NUL only as the escape ``\\u0000``, so the walk is skipped when ``raw`` has none."""
    if b"\\u0000" not in raw:
        return None
    return nul_refusal(value)


# --- per-leaf metadata (SPEC §8) -----------------------------------------------------------
#
# The metadata tree mirrors a state tree: where the state holds a non-empty object, the
# metadata holds an object with the same keys; every leaf of the state (a scalar, an array
# or an empty object) has ``{"updated_at": <ISO 8601>, "version": <int>}``: when it was last
# written and the desired/reported version of that write.


def leaf_metadata(*, version: int, at: datetime) -> dict[str, JSON]:
    return {"updated_at": at.isoformat(), "version": version}


def is_leaf_metadata(node: JSON) -> bool:
    """A leaf's stamp, as opposed to a mirrored object (whose values are all objects)."""
    return (
        isinstance(node, dict)
        and node.keys() == {"updated_at", "version"}
        and isinstance(node["updated_at"], str)
    )


def merge_metadata(
    metadata: dict[str, JSON], patch: dict[str, JSON], *, version: int, at: datetime
) -> dict[str, JSON]:
    """The metadata after ``merge_patch(state, patch)``, given the metadata of ``state``.

    Follows the merge patch key by key: ``null`` removes the leaf's (or subtree's) metadata,
    a scalar or array stamps its leaf, an object recurses; an object that ends up empty is a
    leaf of its own and gets the stamp. Never mutates its arguments.
    """
    return _merge_metadata(metadata, patch, leaf_metadata(version=version, at=at))


def _merge_metadata(
    metadata: JSON, patch: dict[str, JSON], stamp: dict[str, JSON]
) -> dict[str, JSON]:
    mirrored = isinstance(metadata, dict) and not is_leaf_metadata(metadata)
    result: dict[str, JSON] = dict(metadata) if mirrored else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            nested = _merge_metadata(result.get(key), value, stamp)
            result[key] = nested if nested else dict(stamp)
        else:
            result[key] = dict(stamp)
    return result


# --- JSON Schema (device models) -----------------------------------------------------------
#
# A device model constrains the twin with JSON Schema 2020-12. Only local references ("#...")
# are allowed, so validating never reaches outside the schema itself.

MAX_SCHEMA_ERRORS = 10


@dataclass(frozen=True, slots=True)
class SchemaViolation:
    """One failed rule: where in the document (RFC 6901 pointer), which keyword, and why."""

    pointer: str
    rule: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"pointer": self.pointer, "rule": self.rule, "message": self.message}


def json_pointer(path: Iterable[str | int]) -> str:
    """RFC 6901: ``["a", 0, "b/c"]`` is ``/a/0/b~1c``; the whole document is ``""``."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _violation(error: Any, prefix: Iterable[str | int] = ()) -> SchemaViolation:
    return SchemaViolation(
        pointer=json_pointer([*prefix, *error.absolute_path]),
        rule=str(error.validator),
        message=str(error.message)[:500],
    )


def _sorted_violations(
    errors: Iterable[Any], prefix: Iterable[str | int] = ()
) -> list[SchemaViolation]:
    found = sorted(
        (_violation(error, prefix) for error in errors), key=lambda v: (v.pointer, v.rule)
    )
    return found[:MAX_SCHEMA_ERRORS]


def _references(schema: JSON) -> Iterator[tuple[list[str | int], str]]:
    """Every ``$ref``/``$dynamicRef`` string in a schema, with its location."""
    stack: list[tuple[JSON, list[str | int]]] = [(schema, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in {"$ref", "$dynamicRef"} and isinstance(value, str):
                    yield [*path, key], value
                else:
                    stack.append((value, [*path, key]))
        elif isinstance(node, list):
            stack.extend((child, [*path, index]) for index, child in enumerate(node))


def check_schema(schema: JSON, *, where: str = "") -> list[SchemaViolation]:
    """Why ``schema`` is not a usable JSON Schema 2020-12 (empty when it is).

    Checked against the 2020-12 meta-schema (with its ``regex`` format, so a broken
    ``pattern`` is caught here and not while validating a device's state); references must be
    local and must resolve. ``where`` prefixes the pointers (e.g. ``"desired_schema"``).
    """
    prefix = [where] if where else []
    if not isinstance(schema, dict):
        return [SchemaViolation(json_pointer(prefix), "type", "a schema must be a JSON object")]
    violations = _pattern_violations(schema, prefix)
    if violations:
        return violations
    meta = Draft202012Validator(
        Draft202012Validator.META_SCHEMA, format_checker=safe_regex.FORMAT_CHECKER
    )
    violations = _sorted_violations(meta.iter_errors(schema), prefix)
    if violations:
        return violations
    resolver = referencing.Registry().resolver_with_root(DRAFT202012.create_resource(schema))
    for path, reference in _references(schema):
        pointer = json_pointer([*prefix, *path])
        if not reference.startswith("#"):
            violations.append(
                SchemaViolation(
                    pointer,
                    "$ref",
                    f"only local references ('#...') are allowed, not {reference!r}",
                )
            )
            continue
        try:
            resolver.lookup(reference)
        except referencing.exceptions.Unresolvable:
            violations.append(SchemaViolation(pointer, "$ref", f"{reference!r} does not resolve"))
    return sorted(violations, key=lambda v: v.pointer)[:MAX_SCHEMA_ERRORS]


def _pattern_violations(schema: JSON, prefix: Iterable[str | int]) -> list[SchemaViolation]:
    """Patterns RE2 cannot run (``shared.safe_regex``), and the one keyword combination that
    would still reach Python's backtracking ``re``."""
    violations: list[SchemaViolation] = []
    stack: list[tuple[JSON, list[str | int]]] = [(schema, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            patterns: list[tuple[str, list[str | int]]] = []
            if isinstance(node.get("pattern"), str):
                patterns.append((node["pattern"], [*path, "pattern"]))
            if isinstance(node.get("patternProperties"), dict):
                patterns += [
                    (key, [*path, "patternProperties"]) for key in node["patternProperties"]
                ]
            for pattern, where in patterns:
                try:
                    safe_regex.compile_pattern(pattern)
                except safe_regex.PatternError as exc:
                    violations.append(
                        SchemaViolation(json_pointer([*prefix, *where]), "format", str(exc)[:500])
                    )
            stack.extend((value, [*path, key]) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((child, [*path, index]) for index, child in enumerate(node))
    for unsafe in safe_regex.unsafe_keywords(schema):
        violations.append(
            SchemaViolation(
                json_pointer([*prefix, *unsafe]),
                "unevaluatedProperties",
                "unevaluatedProperties cannot be combined with patternProperties here",
            )
        )
    return sorted(violations, key=lambda v: v.pointer)[:MAX_SCHEMA_ERRORS]


@lru_cache(maxsize=256)
def _validator(schema_json: bytes) -> Any:
    return safe_regex.SafeValidator(orjson.loads(schema_json))


def schema_violations(schema: JSON, document: JSON) -> list[SchemaViolation]:
    """How ``document`` breaks ``schema`` (a schema :func:`check_schema` accepted), at most
    :data:`MAX_SCHEMA_ERRORS`, ordered by pointer; empty when it is valid."""
    validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    try:
        return _sorted_violations(validator.iter_errors(document))
    except referencing.exceptions.Unresolvable as exc:
        return [
            SchemaViolation("", "$ref", f"the schema has a reference that does not resolve: {exc}")
        ]


# --- the write sequence --------------------------------------------------------------------
#
# Every twin write, whatever carried it (an operator's PATCH, a bulk job, a device's report
# over HTTP or MQTT, alone or in a batch), is one of the two functions below: limits, version
# rule, merge, metadata, history entry, schema. Services load and lock the twin, call one of
# them, and store what it returns; they never repeat a step.


@dataclass(frozen=True, slots=True)
class Side:
    """One side of a twin (desired or reported): its state, per-leaf metadata and version."""

    state: dict[str, JSON]
    metadata: dict[str, JSON]
    version: int


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """The history row an accepted write adds (the actor is the caller's to add)."""

    kind: Literal["desired", "reported", "rejected"]
    version: int
    patch: dict[str, JSON]
    at: datetime


@dataclass(frozen=True, slots=True)
class Written:
    """An accepted write: the side as it now stands and the history entry to record.

    ``schema_violations``: a report is accepted even when the merged reported state breaks
    the model's reported schema (a device must never be locked out); these are the rules it
    broke, for the caller to count and the twin document to show.
    """

    side: Side
    history: HistoryEntry
    schema_violations: tuple[SchemaViolation, ...] = ()
    # Set when the report refused a desired version (SPEC §11): the twin's ``rejected``.
    rejected: Rejection | None = None


@dataclass(frozen=True, slots=True)
class ModelSchema:
    """A device model's schema for one side, with the model's id for the refusal's words."""

    model_id: str
    schema: dict[str, JSON]


def apply_desired(
    desired: Side,
    patch: dict[str, JSON],
    *,
    limits: Limits,
    at: datetime,
    model: ModelSchema | None = None,
    if_match: int | None = None,
) -> Written | Refusal:
    """An operator's merge patch on desired state: the new side (version + 1) or a refusal.

    Refused, in this order: ``precondition`` when ``if_match`` is not the current version;
    ``malformed``/``too_large`` when the patch or the merged state breaks a limit; ``schema``
    when the merged state breaks the model's desired schema.
    """
    if if_match is not None and desired.version != if_match:
        return Refusal(
            "precondition",
            f"desired_version is {desired.version}, not {if_match}: the twin changed",
        )
    refusal = limits_refusal(patch, limits, what="desired patch")
    if refusal is not None:
        return refusal
    merged = merge_patch(desired.state, patch)
    refusal = limits_refusal(merged, limits, what="desired state")
    if refusal is not None:
        return refusal
    if model is not None:
        violations = schema_violations(model.schema, merged)
        if violations:
            return desired_schema_refusal(
                model.model_id, violations, what="the desired state after this patch"
            )
    version = desired.version + 1
    metadata = merge_metadata(desired.metadata, patch, version=version, at=at)
    return Written(Side(merged, metadata, version), HistoryEntry("desired", version, patch, at))


def desired_schema_refusal(
    model_id: str, violations: list[SchemaViolation], *, what: str
) -> Refusal:
    message = f"{what} does not match the desired_schema of model {model_id!r}"
    return Refusal(
        "schema",
        message,
        {
            "message": message,
            "model_id": model_id,
            "errors": [violation.as_json() for violation in violations],
        },
    )


MAX_REJECTION_MESSAGE = 1000
MAX_REJECTION_CODE = 64


@dataclass(frozen=True, slots=True)
class Rejection:
    """A device's refusal of the desired version its report names (SPEC §11)."""

    code: int | str
    message: str

    def as_json(self) -> dict[str, JSON]:
        return {"code": self.code, "message": self.message}


def parse_rejection(value: JSON) -> Rejection | Refusal:
    """A report's ``"rejected": {"code": <int or string>, "message": "..."}``, or why not.

    Every carrier calls this: the HTTP device API, native MQTT and the AWS shadow topics.
    """
    if not isinstance(value, dict):
        return Refusal("malformed", '\'rejected\' must be an object {"code", "message"}')
    unknown = set(value) - {"code", "message"}
    if unknown:
        return Refusal("malformed", f"unknown keys in 'rejected': {', '.join(sorted(unknown))}")
    code, message = value.get("code"), value.get("message", "")
    if isinstance(code, bool) or not isinstance(code, int | str):
        return Refusal("malformed", "'rejected.code' must be an integer or a string")
    if isinstance(code, str) and not 0 < len(code) <= MAX_REJECTION_CODE:
        return Refusal("malformed", f"'rejected.code' must be 1 to {MAX_REJECTION_CODE} characters")
    if isinstance(code, int) and not -(2**53) <= code <= 2**53:
        return Refusal("malformed", "'rejected.code' is out of range")
    if not isinstance(message, str) or len(message) > MAX_REJECTION_MESSAGE:
        return Refusal(
            "malformed",
            f"'rejected.message' must be a string of at most {MAX_REJECTION_MESSAGE} characters",
        )
    return Rejection(code, message)


@dataclass(frozen=True, slots=True)
class Report:
    """A device's report, parsed and limit-checked, from HTTP or MQTT alike."""

    reported: dict[str, JSON]
    version: int
    client_token: str | None = None
    # The device's own count of its states (docs/devices.md): a report whose seq is not
    # above the last applied one is an older state, acknowledged but not applied.
    seq: int | None = None
    # The report refuses desired version ``version`` (its ``reported`` may be empty).
    rejected: Rejection | None = None


MAX_CLIENT_TOKEN = 64
MAX_SEQ = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Superseded:
    """A report that carries a state older than (or the same as) the one already applied,
    by its ``seq``: a resend or a re-delivery. Acknowledged, never applied."""

    version: int


def parse_report(payload: JSON, limits: Limits) -> Report | Refusal:
    """A decoded report body as a :class:`Report`, or why it is not one."""
    if not isinstance(payload, dict):
        return Refusal("malformed", "report must be a JSON object")
    reported, version = payload.get("reported"), payload.get("version")
    rejected: Rejection | None = None
    if payload.get("rejected") is not None:
        parsed_rejection = parse_rejection(payload["rejected"])
        if isinstance(parsed_rejection, Refusal):
            return parsed_rejection
        rejected = parsed_rejection
        if reported is None:
            reported = {}
    if not isinstance(reported, dict):
        return Refusal("malformed", "'reported' must be a JSON object")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        return Refusal("malformed", "'version' must be a non-negative integer")
    client_token = payload.get("clientToken")
    if client_token is not None and (
        not isinstance(client_token, str) or len(client_token) > MAX_CLIENT_TOKEN
    ):
        return Refusal(
            "malformed", f"'clientToken' must be a string of at most {MAX_CLIENT_TOKEN} characters"
        )
    seq = payload.get("seq")
    if seq is not None and (
        isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ
    ):
        return Refusal("malformed", "'seq' must be a non-negative 64-bit integer")
    refusal = limits_refusal(reported, limits, what="reported state")
    if refusal is not None:
        return refusal
    return Report(
        reported=reported, version=version, client_token=client_token, seq=seq, rejected=rejected
    )


def apply_report(
    reported: Side,
    desired_version: int,
    report: Report,
    *,
    limits: Limits,
    at: datetime,
    schema: dict[str, JSON] | None = None,
    last_seq: int | None = None,
) -> Written | Refusal | Superseded:
    """A device's report on reported state: the new side, a refusal, or superseded.

    Superseded when the report's ``seq`` is not above ``last_seq``, the seq of the last
    report applied (re-ordered or resent reports regress nothing, SPEC §4). Refused as
    ``version`` under the version rule (:func:`check_report_version`) and as
    ``malformed``/``too_large`` when the merged state breaks a limit. Breaking the model's
    reported ``schema`` does not refuse: the violations travel with the write.
    """
    if report.seq is not None and last_seq is not None and report.seq <= last_seq:
        return Superseded(reported.version)
    verdict = check_report_version(report.version, reported.version, desired_version)
    if not verdict.accepted:
        return Refusal("version", verdict.error or "version refused")
    if report.rejected is not None:
        return _apply_rejection(reported, report, limits=limits, at=at, schema=schema)
    merged = merge_patch(reported.state, report.reported)
    refusal = limits_refusal(merged, limits, what="reported state")
    if refusal is not None:
        return refusal
    metadata = merge_metadata(reported.metadata, report.reported, version=report.version, at=at)
    violations = tuple(schema_violations(schema, merged)) if schema is not None else ()
    return Written(
        Side(merged, metadata, report.version),
        HistoryEntry("reported", report.version, report.reported, at),
        violations,
    )


def _apply_rejection(
    reported: Side,
    report: Report,
    *,
    limits: Limits,
    at: datetime,
    schema: dict[str, JSON] | None,
) -> Written | Refusal:
    """A report refusing desired version ``report.version``: the reported version stays (the
    device did not apply it); any reported state it carries merges as usual; the history
    entry is of kind ``rejected``."""
    assert report.rejected is not None
    if report.version <= reported.version:
        return Refusal(
            "version",
            f"cannot reject version {report.version}: the device already reported version "
            f"{reported.version}",
        )
    merged = merge_patch(reported.state, report.reported)
    refusal = limits_refusal(merged, limits, what="reported state")
    if refusal is not None:
        return refusal
    metadata = (
        merge_metadata(reported.metadata, report.reported, version=reported.version, at=at)
        if report.reported
        else reported.metadata
    )
    violations = tuple(schema_violations(schema, merged)) if schema is not None else ()
    patch: dict[str, JSON] = report.rejected.as_json()
    if report.reported:
        patch["reported"] = report.reported
    return Written(
        Side(merged, metadata, reported.version),
        HistoryEntry("rejected", report.version, patch, at),
        violations,
        rejected=report.rejected,
    )


def rejected_document(rejected: JSON, reported_version: int) -> JSON:
    """The twin's ``rejected`` (``{version, code, message, at}``) while in effect, else None."""
    if not isinstance(rejected, dict):
        return None
    version = rejected.get("version")
    if not isinstance(version, int) or not rejection_in_effect(version, reported_version):
        return None
    return rejected
