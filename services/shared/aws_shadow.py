"""The AWS IoT Device Shadow documents (SPEC §9), pure: request parsing, response bodies.

The shapes follow the AWS IoT developer guide ("Device Shadow service documents", "Device
Shadow MQTT topics", "Device Shadow error messages"): a response document is
``{"state": {"desired", "reported", "delta"}, "metadata": {"desired", "reported"},
"version", "timestamp", "clientToken"?}``; ``metadata`` mirrors the state with
``{"timestamp": <epoch seconds>}`` on every leaf; an error is
``{"code", "message", "timestamp", "clientToken"?}``. The twin rules themselves stay in
``shared.twin``: this module only translates.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from shared import twin

JSON = Any
MAX_CLIENT_TOKEN_BYTES = 64
_TOP_LEVEL = frozenset({"state", "clientToken", "version"})
# ``rejected`` (SPEC §11): the device refuses the current desired version.
_STATE_NODES = frozenset({"desired", "reported", "rejected"})


@dataclass(frozen=True, slots=True)
class ShadowError(Exception):
    """A request refused with AWS's error code and message."""

    code: int
    message: str
    client_token: str | None = None


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    desired: dict[str, JSON] | None  # a merge patch; None when the request leaves it out
    reported: dict[str, JSON] | None
    version: int | None
    client_token: str | None
    clear_desired: bool = False  # "desired": null deletes the whole desired document
    clear_reported: bool = False
    # ``state.rejected`` (SPEC §11): the device refuses the shadow's current desired version.
    rejected: twin.Rejection | None = None


def epoch(at: datetime) -> int:
    return int(at.timestamp())


def _client_token(decoded: JSON) -> str | None:
    """A request's clientToken when it is one AWS would echo (a string of at most 64
    bytes); raises the 400 AWS gives a longer or non-string one."""
    if not isinstance(decoded, dict) or "clientToken" not in decoded:
        return None
    token = decoded["clientToken"]
    if not isinstance(token, str) or len(token.encode()) > MAX_CLIENT_TOKEN_BYTES:
        raise ShadowError(400, "Invalid clientToken")
    return token


def parse_json(payload: bytes, *, max_bytes: int) -> JSON:
    """A request body: an empty payload is ``{}`` (AWS takes an empty get/delete)."""
    if len(payload) > max_bytes:
        raise ShadowError(413, "The payload exceeds the maximum size allowed")
    if not payload.strip():
        return {}
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ShadowError(400, "Invalid JSON") from None


def parse_simple(decoded: JSON) -> str | None:
    """A get or delete request: an object with at most a clientToken (and a version)."""
    if not isinstance(decoded, dict):
        raise ShadowError(400, "Invalid JSON")
    return _client_token(decoded)


def parse_update(decoded: JSON, limits: twin.Limits) -> UpdateRequest:
    """An update request, checked as AWS checks it; raises :class:`ShadowError`."""
    if not isinstance(decoded, dict):
        raise ShadowError(400, "Invalid JSON")
    token = _client_token(decoded)
    if "state" not in decoded:
        raise ShadowError(400, "Missing required node: state", token)
    unknown = sorted(set(decoded) - _TOP_LEVEL)
    if unknown:
        raise ShadowError(400, f"Unexpected top-level node: {unknown[0]}", token)
    state = decoded["state"]
    if not isinstance(state, dict):
        raise ShadowError(400, "State node must be an object", token)
    if set(state) - _STATE_NODES:
        raise ShadowError(400, "State contains an invalid node", token)
    version = decoded.get("version")
    if "version" in decoded and (
        isinstance(version, bool) or not isinstance(version, int) or version < 0
    ):
        raise ShadowError(400, "Invalid version", token)
    desired = state.get("desired")
    reported = state.get("reported")
    if "desired" in state and desired is not None and not isinstance(desired, dict):
        raise ShadowError(400, "Desired node must be an object", token)
    if "reported" in state and reported is not None and not isinstance(reported, dict):
        raise ShadowError(400, "Reported node must be an object", token)
    refusal = twin.nul_refusal(state)
    if refusal is not None:
        raise ShadowError(400, "Invalid JSON", token)
    rejected: twin.Rejection | None = None
    if state.get("rejected") is not None:
        if "desired" in state:
            raise ShadowError(400, "A rejection cannot carry desired state", token)
        parsed = twin.parse_rejection(state["rejected"])
        if isinstance(parsed, twin.Refusal):
            raise ShadowError(400, parsed.message, token)
        rejected = parsed
    for node in (desired, reported):
        if node is None:
            continue
        too = twin.limits_refusal(node, limits, what="state")
        if too is not None:
            code = 413 if too.kind == "too_large" else 400
            message = (
                "The payload exceeds the maximum size allowed"
                if code == 413
                else f"JSON contains too many levels of nesting; maximum is {limits.max_depth}"
            )
            raise ShadowError(code, message, token)
    return UpdateRequest(
        desired=desired if isinstance(desired, dict) else None,
        reported=reported if isinstance(reported, dict) else None,
        version=version,
        client_token=token,
        clear_desired="desired" in state and desired is None,
        clear_reported="reported" in state and reported is None,
        rejected=rejected,
    )


# --- response bodies -----------------------------------------------------------------------


def aws_metadata(metadata: JSON) -> JSON:
    """Our per-leaf metadata (``{"updated_at", "version"}``) as AWS's (``{"timestamp"}``)."""
    if twin.is_leaf_metadata(metadata):
        return {"timestamp": epoch(datetime.fromisoformat(metadata["updated_at"]))}
    if isinstance(metadata, dict):
        return {key: aws_metadata(value) for key, value in metadata.items()}
    return metadata


def _pick(metadata: JSON, shape: JSON) -> JSON:
    """The part of a metadata tree under the keys of ``shape`` (a patch or a delta)."""
    if not isinstance(shape, dict) or not isinstance(metadata, dict):
        return metadata
    if twin.is_leaf_metadata(metadata):
        return metadata
    return {key: _pick(metadata[key], value) for key, value in shape.items() if key in metadata}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One shadow as stored: what every response body is built from."""

    desired: dict[str, JSON]
    reported: dict[str, JSON]
    desired_metadata: dict[str, JSON]
    reported_metadata: dict[str, JSON]
    version: int

    @classmethod
    def of(cls, row: Any) -> Snapshot:
        return cls(
            row["desired_state"],
            row["reported_state"],
            row["desired_metadata"],
            row["reported_metadata"],
            row["document_version"],
        )

    @property
    def delta(self) -> dict[str, JSON]:
        return twin.compute_delta(self.desired, self.reported)


def _with_token(body: dict[str, JSON], token: str | None) -> dict[str, JSON]:
    if token is not None:
        body["clientToken"] = token
    return body


def get_accepted(shadow: Snapshot, *, at: datetime, token: str | None) -> dict[str, JSON]:
    state: dict[str, JSON] = {}
    metadata: dict[str, JSON] = {}
    if shadow.desired:
        state["desired"] = shadow.desired
        metadata["desired"] = aws_metadata(shadow.desired_metadata)
    if shadow.reported:
        state["reported"] = shadow.reported
        metadata["reported"] = aws_metadata(shadow.reported_metadata)
    delta = shadow.delta
    if delta:
        state["delta"] = delta
    body = {"state": state, "metadata": metadata, "version": shadow.version, "timestamp": epoch(at)}
    return _with_token(body, token)


def update_accepted(request: UpdateRequest, after: Snapshot, *, at: datetime) -> dict[str, JSON]:
    """The request's state as applied, with the metadata of the leaves it wrote."""
    state: dict[str, JSON] = {}
    metadata: dict[str, JSON] = {}
    stamp = {"timestamp": epoch(at)}
    for side, patch, cleared in (
        ("desired", request.desired, request.clear_desired),
        ("reported", request.reported, request.clear_reported),
    ):
        if cleared:
            state[side] = None
            metadata[side] = stamp
        elif patch is not None:
            state[side] = patch
            metadata[side] = _stamp_patch(patch, stamp)
    if request.rejected is not None:
        state["rejected"] = request.rejected.as_json()
    body = {"state": state, "metadata": metadata, "version": after.version, "timestamp": epoch(at)}
    return _with_token(body, request.client_token)


def _stamp_patch(patch: dict[str, JSON], stamp: dict[str, JSON]) -> dict[str, JSON]:
    return {
        key: _stamp_patch(value, stamp) if isinstance(value, dict) and value else dict(stamp)
        for key, value in patch.items()
    }


def delta_message(shadow: Snapshot, *, at: datetime, token: str | None = None) -> JSON:
    """``update/delta``, or None when desired and reported agree."""
    delta = shadow.delta
    if not delta:
        return None
    body = {
        "state": delta,
        "metadata": aws_metadata(_pick(shadow.desired_metadata, delta)),
        "version": shadow.version,
        "timestamp": epoch(at),
    }
    return _with_token(body, token)


def _document(shadow: Snapshot) -> dict[str, JSON]:
    return {
        "state": {"desired": shadow.desired, "reported": shadow.reported},
        "metadata": {
            "desired": aws_metadata(shadow.desired_metadata),
            "reported": aws_metadata(shadow.reported_metadata),
        },
        "version": shadow.version,
    }


def document(shadow: Snapshot) -> dict[str, JSON]:
    """One side of ``update/documents`` (``previous`` or ``current``)."""
    return _document(shadow)


def documents_message(
    previous: Snapshot | None, current: Snapshot | None, *, at: datetime, token: str | None = None
) -> dict[str, JSON]:
    """``update/documents``: the shadow before and after (null before its creation)."""
    body = {
        "previous": _document(previous) if previous is not None else None,
        "current": _document(current) if current is not None else None,
        "timestamp": epoch(at),
    }
    return _with_token(body, token)


def delete_accepted(version: int, *, at: datetime, token: str | None) -> dict[str, JSON]:
    return _with_token({"version": version, "timestamp": epoch(at)}, token)


def error_body(error: ShadowError, *, at: datetime) -> dict[str, JSON]:
    return _with_token(
        {"code": error.code, "message": error.message, "timestamp": epoch(at)}, error.client_token
    )
