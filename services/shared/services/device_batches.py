"""Registering many devices at once (SPEC §5 ``POST /customer/devices/batch``, and
``iotcloud device import``): all or nothing, a few statements per batch.

The checks that need no database (``entry_problems``, ``duplicate_entries``) are pure, so the
CSV import runs them over a whole file before it writes anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from shared import twin
from shared.db import Connection
from shared.errors import Conflict, Unprocessable
from shared.ids import DEVICE_ID_RE
from shared.repositories import bulk_devices
from shared.repositories import models as models_repo
from shared.security import hash_provision_token, new_provision_token
from shared.services import device_profiles, models
from shared.services.devices import new_device_id

MAX_BATCH = 1000
MAX_NAME = 200
DEVICE_ID_RULE = "device_id must match [A-Za-z0-9][A-Za-z0-9._:-]{0,127} (no '/', '+' or '#')"


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One device to register; a missing id is generated, a missing name is the id."""

    device_id: str | None = None
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    model_id: str | None = None


@dataclass(frozen=True, slots=True)
class EntryProblem:
    """What is wrong with entry ``index`` (0-based) of a batch."""

    index: int
    device_id: str | None
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"index": self.index, "device_id": self.device_id, "message": self.message}


@dataclass(frozen=True, slots=True)
class CreatedDevice:
    device_id: str
    provision_token: str

    def as_json(self) -> dict[str, str]:
        return {"device_id": self.device_id, "provision_token": self.provision_token}


def spec_problems(spec: DeviceSpec) -> list[str]:
    """Every rule one entry breaks, by itself (the same rules as a single create and as
    ``PATCH /customer/devices/{id}`` for tags and model)."""
    problems: list[str] = []
    if spec.device_id is not None and not DEVICE_ID_RE.match(spec.device_id):
        problems.append(DEVICE_ID_RULE)
    if spec.name is not None and (len(spec.name) > MAX_NAME or "\x00" in spec.name):
        problems.append(f"name must be at most {MAX_NAME} characters, without NUL")
    if len(spec.tags) > device_profiles.MAX_TAGS:
        problems.append(f"a device has at most {device_profiles.MAX_TAGS} tags")
    try:
        device_profiles.split_tag_patch(dict(spec.tags))
    except Unprocessable as exc:
        problems.append(str(exc.detail))
    if any("\x00" in value for value in spec.tags.values()):
        problems.append("tag values cannot contain NUL characters")
    if spec.model_id is not None and not DEVICE_ID_RE.match(spec.model_id):
        problems.append(f"{spec.model_id!r} is not a model id")
    return problems


def entry_problems(specs: Sequence[DeviceSpec]) -> list[EntryProblem]:
    return [
        EntryProblem(index, spec.device_id, message)
        for index, spec in enumerate(specs)
        for message in spec_problems(spec)
    ]


def duplicate_entries(specs: Sequence[DeviceSpec]) -> list[EntryProblem]:
    """Every entry whose id an earlier entry already has."""
    seen: set[str] = set()
    duplicates: list[EntryProblem] = []
    for index, spec in enumerate(specs):
        if spec.device_id is None:
            continue
        if spec.device_id in seen:
            duplicates.append(EntryProblem(index, spec.device_id, "repeated in the batch"))
        seen.add(spec.device_id)
    return duplicates


def check_batch(specs: Sequence[DeviceSpec]) -> None:
    """422 for a bad size or bad entries, then 409 for ids repeated within the batch."""
    if not 1 <= len(specs) <= MAX_BATCH:
        raise Unprocessable(f"a batch has 1 to {MAX_BATCH} devices, not {len(specs)}")
    problems = entry_problems(specs)
    if problems:
        raise Unprocessable(
            {
                "message": f"{len({p.index for p in problems})} entries are not valid",
                "errors": [problem.as_json() for problem in problems],
            }
        )
    duplicates = duplicate_entries(specs)
    if duplicates:
        raise conflict_error(duplicates)


def conflict_error(conflicts: list[EntryProblem]) -> Conflict:
    return Conflict(
        {
            "message": f"{len(conflicts)} device ids are repeated in the batch or already taken",
            "conflicts": [problem.as_json() for problem in conflicts],
        }
    )


async def _check_models(conn: Connection, *, tenant_id: str, specs: Sequence[DeviceSpec]) -> None:
    """The batch's models exist in the tenant (share-locked until commit, as a desired write
    locks its model) and accept a new device's empty desired state."""
    wanted = sorted({spec.model_id for spec in specs if spec.model_id is not None})
    if not wanted:
        return
    rows = await models_repo.lock_many_for_use(conn, tenant_id=tenant_id, model_ids=wanted)
    found = {row["model_id"]: row for row in rows}
    unknown = [
        EntryProblem(index, spec.device_id, f"model {spec.model_id!r} not found")
        for index, spec in enumerate(specs)
        if spec.model_id is not None and spec.model_id not in found
    ]
    if unknown:
        raise Unprocessable(
            {
                "message": f"{len(unknown)} entries name a model that does not exist",
                "errors": [problem.as_json() for problem in unknown],
            }
        )
    for model_id, row in found.items():
        violations = twin.schema_violations(row["desired_schema"], {})
        if violations:
            raise models.desired_violations_error(
                model_id, violations, what="a new device's empty desired state"
            )


async def create_devices(
    conn: Connection, *, tenant_id: str, specs: Sequence[DeviceSpec]
) -> list[CreatedDevice]:
    """Register the batch in the caller's transaction, in entry order, or raise: 422 (bad
    entries or models), 409 (ids repeated or already taken, named by index). On an error
    the caller's rollback leaves nothing written. The broker needs nothing: it asks the
    database at each device's CONNECT."""
    check_batch(specs)
    await _check_models(conn, tenant_id=tenant_id, specs=specs)
    device_ids = [spec.device_id or new_device_id() for spec in specs]
    tokens = [new_provision_token() for _ in specs]
    created = await bulk_devices.insert_new(
        conn,
        tenant_id=tenant_id,
        device_ids=device_ids,
        names=[spec.name or device_id for spec, device_id in zip(specs, device_ids, strict=True)],
        tags_json=[orjson.dumps(spec.tags).decode() for spec in specs],
        model_ids=[spec.model_id for spec in specs],
        token_hashes=[hash_provision_token(token) for token in tokens],
    )
    if len(created) < len(device_ids):
        # Taken before, in this tenant or another: "taken" is all an entry learns.
        raise conflict_error(
            [
                EntryProblem(index, device_id, "already taken")
                for index, device_id in enumerate(device_ids)
                if device_id not in created
            ]
        )
    await bulk_devices.insert_states(conn, tenant_id=tenant_id, device_ids=device_ids)
    return [
        CreatedDevice(device_id, token) for device_id, token in zip(device_ids, tokens, strict=True)
    ]
