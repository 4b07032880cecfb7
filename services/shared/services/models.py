"""Device models: JSON Schema (2020-12) for the twin of every device that uses one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
from prometheus_client import Counter

from shared import twin
from shared.db import Connection
from shared.errors import (
    Conflict,
    DomainError,
    NotFound,
    Unprocessable,
    raise_if_refused,
    refusal_error,
)
from shared.repositories import models as models_repo

REPORTED_SCHEMA_VIOLATIONS = Counter(
    "iotcloud_reported_schema_violations_total",
    "Accepted reports whose merged reported state breaks the device model's reported schema",
    ["transport"],
)

# How many of a model's devices a refused schema change lists, and how many devices it
# re-validates per database round trip.
_LISTED_INVALID_DEVICES = 5
_REVALIDATE_BATCH = 500


def model_document(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "model_id": row["model_id"],
        "desired_schema": row["desired_schema"],
        "reported_schema": row["reported_schema"],
        "created_at": row["created_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
    }


@dataclass(frozen=True, slots=True)
class Schemas:
    desired: dict[str, Any]
    reported: dict[str, Any] | None


def _schema_limits(limits: twin.Limits) -> twin.Limits:
    # A schema nests about twice as deep as the documents it describes ("properties").
    return twin.Limits(max_state_bytes=limits.max_state_bytes, max_depth=4 * limits.max_depth)


def _check_schemas(
    desired_schema: dict[str, Any], reported_schema: dict[str, Any] | None, limits: twin.Limits
) -> None:
    schema_limits = _schema_limits(limits)
    violations: list[twin.SchemaViolation] = []
    for where, schema in (("desired_schema", desired_schema), ("reported_schema", reported_schema)):
        if schema is None:
            continue
        raise_if_refused(twin.limits_refusal(schema, schema_limits, what=where))
        violations.extend(twin.check_schema(schema, where=where))
    if violations:
        raise Unprocessable(
            {
                "message": "not a valid JSON Schema (2020-12)",
                "errors": [violation.as_json() for violation in violations],
            }
        )


# The schema checks of a change, also run when the change is checked in the background
# (shared.services.model_revalidation).
check_schemas = _check_schemas


async def create_model(
    conn: Connection,
    *,
    tenant_id: str,
    model_id: str,
    desired_schema: dict[str, Any],
    reported_schema: dict[str, Any] | None,
    limits: twin.Limits,
) -> dict[str, Any]:
    _check_schemas(desired_schema, reported_schema, limits)
    row = await models_repo.insert(
        conn,
        tenant_id=tenant_id,
        model_id=model_id,
        desired_schema=desired_schema,
        reported_schema=reported_schema,
    )
    if row is None:
        raise Conflict(
            f"model {model_id!r} already exists; change its schemas with PUT /customer/models/"
            f"{model_id}"
        )
    return model_document(row)


async def replace_schemas(
    conn: Connection,
    *,
    tenant_id: str,
    model_id: str,
    desired_schema: dict[str, Any],
    reported_schema: dict[str, Any] | None,
    limits: twin.Limits,
) -> dict[str, Any]:
    """Change a model's schemas; refused (409) if a device's desired state would break.

    The model row is locked first: desired writes of its devices hold a share lock on it
    (``schemas_for_desired_write``), so none can slip in between this check and the commit.
    Reported state is not checked: a report that breaks the schema is flagged, never refused.
    """
    _check_schemas(desired_schema, reported_schema, limits)
    if await models_repo.lock_for_change(conn, tenant_id=tenant_id, model_id=model_id) is None:
        raise NotFound(f"model {model_id!r} not found")
    invalid: list[dict[str, Any]] = []
    invalid_count = 0
    after = ""
    while True:
        rows = await models_repo.desired_of_devices(
            conn, tenant_id=tenant_id, model_id=model_id, after=after, limit=_REVALIDATE_BATCH
        )
        for row in rows:
            violations = twin.schema_violations(desired_schema, row["desired_state"])
            if violations:
                invalid_count += 1
                if len(invalid) < _LISTED_INVALID_DEVICES:
                    invalid.append(
                        {
                            "device_id": row["device_id"],
                            "errors": [violation.as_json() for violation in violations],
                        }
                    )
        if len(rows) < _REVALIDATE_BATCH:
            break
        after = rows[-1]["device_id"]
    if invalid_count:
        raise Conflict(
            {
                "message": f"the new desired_schema would make the desired state of "
                f"{invalid_count} device(s) of model {model_id!r} invalid",
                "invalid_count": invalid_count,
                "devices": invalid,
            }
        )
    row = await models_repo.replace_schemas(
        conn,
        tenant_id=tenant_id,
        model_id=model_id,
        desired_schema=desired_schema,
        reported_schema=reported_schema,
    )
    return model_document(row)


async def get_model(conn: Connection, *, tenant_id: str, model_id: str) -> dict[str, Any]:
    row = await models_repo.get(conn, tenant_id=tenant_id, model_id=model_id)
    if row is None:
        raise NotFound(f"model {model_id!r} not found")
    document = model_document(row)
    document["device_count"] = await models_repo.device_count(
        conn, tenant_id=tenant_id, model_id=model_id
    )
    return document


async def list_models(
    conn: Connection, *, tenant_id: str, cursor: str | None, limit: int
) -> dict[str, Any]:
    """A keyset page by model id; the cursor is the last model id of the previous page."""
    rows = await models_repo.page(conn, tenant_id=tenant_id, after=cursor, limit=limit + 1)
    page = rows[:limit]
    return {
        "items": [model_document(row) for row in page],
        "next": page[-1]["model_id"] if len(rows) > limit else None,
    }


async def schemas_for_desired_write(conn: Connection, *, tenant_id: str, model_id: str) -> Schemas:
    """The model's schemas, share-locked until the writing transaction ends."""
    row = await models_repo.lock_for_use(conn, tenant_id=tenant_id, model_id=model_id)
    if row is None:
        raise Unprocessable(f"model {model_id!r} not found")
    return Schemas(row["desired_schema"], row["reported_schema"])


async def reported_schema(
    conn: Connection, *, tenant_id: str, model_id: str
) -> dict[str, Any] | None:
    row = await models_repo.get(conn, tenant_id=tenant_id, model_id=model_id)
    return None if row is None else row["reported_schema"]


def desired_violations_error(
    model_id: str, violations: list[twin.SchemaViolation], *, what: str
) -> DomainError:
    return refusal_error(twin.desired_schema_refusal(model_id, violations, what=what))
