"""Staged, health-gated rollouts (SPEC §11): one merge patch, stage by stage.

A rollout fixes its devices when it is created: the filter's matches in a stable random order
(md5 of the rollout id and the device id), each placed in the first stage whose cumulative
size covers its position. A stage is written like a bulk job, through
:func:`shared.services.bulk_desired.patch_desired_many`, in batches; each batch runs in one
transaction that holds the rollout's row lock, writes the twins and records each device's
outcome, its new desired version and the merge patch that would put its changed keys back
(the values its desired state held just before: what its history says they were). A crash
rolls back a batch whole; a runner that takes over finds those devices still unwritten. So
no device is written twice for one stage, whatever is killed when.

When a stage is written its gate opens: the next stage starts once the share of the stage's
written devices that applied their version, have no refusal in effect and meet the health
condition reaches ``synced_ratio``. A rejection is final, so the gate fails as soon as the
ratio can no longer be met; otherwise it fails when ``within_s`` has passed. On failure the
rollout pauses, or reverts every device it wrote (a new desired version each, with the
rollout as the actor).
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from shared import db, twin
from shared.aio import raise_if_cancelled, wait_event
from shared.db import Connection
from shared.errors import Conflict, DomainError, NotFound, Unprocessable, raise_if_refused
from shared.mqtt import backoff_delays
from shared.repositories import rollouts as repo
from shared.services import bulk_desired, fleet
from shared.services.history import Actor

log = logging.getLogger(__name__)

BATCH_SIZE = 500
MAX_STAGES = 20
MAX_WITHIN_S = 7 * 24 * 3600
POLL_INTERVAL_S = 1.0
_EPSILON = 1e-9  # synced_ratio x devices in floating point: 0.1 * 3 is 0.30000000000000004
HEALTH_OPS = ("==", "!=", "<", "<=", ">", ">=", "in")
_BODY_KEYS = frozenset({"filter", "desired", "stages", "success", "on_failure"})


# --- the request ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Health:
    """``{"pointer": "/reported/...", "op": ..., "value": ...}`` on the twin document."""

    side: str
    path: list[str]
    op: str
    value: Any

    def as_sql(self) -> tuple[str, list[str], str, Any]:
        return (self.side, self.path, self.op, self.value)


@dataclass(frozen=True, slots=True)
class RolloutRequest:
    filter_document: dict[str, Any]
    patch: dict[str, Any]
    stages: list[dict[str, float]]
    success: dict[str, Any]
    on_failure: str


def audit_detail(request: RolloutRequest) -> dict[str, Any]:
    """What the audit log keeps of a new rollout: where, which keys, how (not the values)."""
    return {
        "filter": request.filter_document,
        "keys": sorted(request.patch),
        "stages": request.stages,
        "on_failure": request.on_failure,
    }


def parse_pointer(pointer: Any) -> tuple[str, list[str]]:
    """An RFC 6901 pointer into ``/reported/...`` or ``/desired/...``: the side, the path."""
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        raise Unprocessable("success.health.pointer must be a JSON pointer such as /reported/x")
    tokens = pointer[1:].split("/")
    path: list[str] = []
    for token in tokens:
        stripped = token.replace("~0", "").replace("~1", "")
        if "~" in stripped:
            raise Unprocessable(
                f"success.health.pointer {pointer!r}: '~' must be followed by 0 or 1 (RFC 6901)"
            )
        path.append(token.replace("~1", "/").replace("~0", "~"))
    side, rest = path[0], path[1:]
    if side not in {"reported", "desired"} or not rest:
        raise Unprocessable(
            f"success.health.pointer {pointer!r} must point inside /reported or /desired"
        )
    return side, rest


def parse_health(value: Any) -> Health:
    if not isinstance(value, dict) or set(value) - {"pointer", "op", "value"}:
        raise Unprocessable('success.health must be {"pointer", "op", "value"}')
    side, path = parse_pointer(value.get("pointer"))
    op = value.get("op")
    if op not in HEALTH_OPS:
        raise Unprocessable(f"success.health.op must be one of {' '.join(HEALTH_OPS)}")
    if "value" not in value:
        raise Unprocessable("success.health.value is missing")
    operand = value["value"]
    if op == "in" and not isinstance(operand, list):
        raise Unprocessable("success.health.value must be a list for 'in'")
    if op in {"<", "<=", ">", ">="} and (
        isinstance(operand, bool) or not isinstance(operand, int | float | str)
    ):
        raise Unprocessable(f"success.health.value must be a number or a string for {op!r}")
    return Health(side, path, op, operand)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_stage(value: Any, index: int) -> dict[str, float]:
    """A number (a percentage), ``"25%"``, ``{"percent": p}`` or ``{"count": n}``."""
    where = f"stages[{index}]"
    if isinstance(value, str) and value.endswith("%"):
        try:
            value = {"percent": float(value[:-1])}
        except ValueError as exc:
            raise Unprocessable(f"{where} must be a percentage such as '25%'") from exc
    elif _number(value):
        value = {"percent": value}
    if not isinstance(value, dict) or len(value) != 1:
        raise Unprocessable(f'{where} must be a percentage or {{"count": n}}')
    kind, amount = next(iter(value.items()))
    if kind == "percent":
        if not _number(amount) or not 0 < amount <= 100:
            raise Unprocessable(f"{where} must be a percentage over 0 and at most 100")
        return {"percent": amount}
    if kind == "count":
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
            raise Unprocessable(f"{where}.count must be a positive integer")
        return {"count": amount}
    raise Unprocessable(f'{where} must be a percentage or {{"count": n}}')


def parse_request(body: Any, limits: twin.Limits) -> RolloutRequest:
    """The POST body, every rule checked before anything starts (422 otherwise)."""
    if not isinstance(body, dict):
        raise Unprocessable("body must be an object")
    unknown = set(body) - _BODY_KEYS
    if unknown:
        raise Unprocessable(f"unknown keys: {', '.join(sorted(unknown))}")
    filter_document, patch = body.get("filter", {}), body.get("desired")
    if not isinstance(filter_document, dict):
        raise Unprocessable("'filter' must be an object")
    fleet.filter_from_document(filter_document)
    if not isinstance(patch, dict) or not patch:
        raise Unprocessable("'desired' must be a non-empty object: a JSON merge patch")
    raise_if_refused(twin.limits_refusal(patch, limits, what="desired patch"))
    raise_if_refused(twin.nul_refusal(patch, what="desired patch"))
    stages_in = body.get("stages")
    if not isinstance(stages_in, list) or not 1 <= len(stages_in) <= MAX_STAGES:
        raise Unprocessable(f"'stages' must be a list of 1 to {MAX_STAGES} stages")
    stages = [parse_stage(value, index) for index, value in enumerate(stages_in)]
    for index in range(1, len(stages)):
        before, now = stages[index - 1], stages[index]
        if before.keys() == now.keys() and next(iter(now.values())) <= next(iter(before.values())):
            raise Unprocessable(
                f"stages must grow: stages[{index}] is not above stages[{index - 1}]"
            )
    success = body.get("success")
    if not isinstance(success, dict) or set(success) - {"synced_ratio", "within_s", "health"}:
        raise Unprocessable('\'success\' must be {"synced_ratio", "within_s", "health"?}')
    ratio: Any = success.get("synced_ratio")
    within: Any = success.get("within_s")
    if not _number(ratio) or not 0 < ratio <= 1:
        raise Unprocessable("success.synced_ratio must be a number over 0 and at most 1")
    if not _number(within) or not 0 < within <= MAX_WITHIN_S:
        raise Unprocessable(f"success.within_s must be over 0 and at most {MAX_WITHIN_S}")
    stored: dict[str, Any] = {"synced_ratio": ratio, "within_s": within}
    if success.get("health") is not None:
        parse_health(success["health"])
        stored["health"] = success["health"]
    on_failure = body.get("on_failure", "pause")
    if on_failure not in {"pause", "revert"}:
        raise Unprocessable("'on_failure' must be 'pause' or 'revert'")
    return RolloutRequest(filter_document, patch, stages, stored, on_failure)


def stage_ends(stages: list[dict[str, float]], matched: int) -> list[int]:
    """Each stage's cumulative device count over ``matched`` devices; 422 where they do not
    grow or a count is more than the filter matched."""
    ends: list[int] = []
    for index, stage in enumerate(stages):
        if "count" in stage:
            end = int(stage["count"])
            if end > matched:
                raise Unprocessable(
                    f"stages[{index}] asks for {end} devices; the filter matches {matched}"
                )
        else:
            end = math.ceil(stage["percent"] * matched / 100 - 1e-9)
        if ends and end < ends[-1]:
            raise Unprocessable(f"stages must grow: stages[{index}] covers fewer devices")
        ends.append(end)
    return ends


# --- key paths and revert patches ----------------------------------------------------------


def leaf_paths(patch: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths a merge patch writes: an object recurses, anything else is a leaf."""
    paths: list[tuple[str, ...]] = []
    for key, value in patch.items():
        if isinstance(value, dict) and value:
            paths.extend(leaf_paths(value, (*prefix, key)))
        else:
            paths.append((*prefix, key))
    return paths


def keys_overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two patches touch a common key: one's path is a prefix of (or equal to) the other's."""
    return any(x[: len(y)] == y or y[: len(x)] == x for x in leaf_paths(a) for y in leaf_paths(b))


def revert_patch(before: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that puts back what ``patch`` changes in ``before``: each written key
    gets its earlier value, or ``null`` (removed) where it had none."""
    result: dict[str, Any] = {}
    for key, value in patch.items():
        had = before.get(key)
        if isinstance(value, dict) and isinstance(had, dict):
            nested = revert_patch(had, value)
            if nested:
                result[key] = nested
        elif key in before or value is not None:
            result[key] = had
    return result


# --- creating and reading ------------------------------------------------------------------


def _parse_id(rollout_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(rollout_id)
    except ValueError as exc:
        raise NotFound(f"rollout {rollout_id!r} not found") from exc


async def create(
    conn: Connection,
    *,
    tenant_id: str,
    request: RolloutRequest,
    created_by: str,
    stale_after: timedelta,
) -> str:
    """Record the rollout and its devices; 422 for an empty match or stages that do not grow
    over it, 409 (with the other rollout's id) when an active rollout has overlapping devices
    and keys. Call inside the request's transaction: a refusal leaves nothing behind."""
    await repo.lock_tenant(conn, tenant_id=tenant_id)
    device_filter = fleet.filter_from_document(request.filter_document)
    matched = await repo.count_matches(
        conn, tenant_id=tenant_id, device_filter=device_filter, stale_after=stale_after
    )
    if matched == 0:
        raise Unprocessable("the filter matches no device: nothing to roll out")
    ends = stage_ends(request.stages, matched)
    rollout_id = uuid.uuid4()
    await repo.insert(
        conn,
        rollout_id=rollout_id,
        tenant_id=tenant_id,
        filter_document=request.filter_document,
        patch=request.patch,
        stages=request.stages,
        stage_ends=ends,
        success=request.success,
        on_failure=request.on_failure,
        created_by=created_by,
        device_filter=device_filter,
        stale_after=stale_after,
    )
    candidates = [
        row["rollout_id"]
        for row in await repo.active(conn, tenant_id=tenant_id)
        if row["rollout_id"] != rollout_id and keys_overlap(row["patch"], request.patch)
    ]
    other = await repo.overlapping(
        conn, tenant_id=tenant_id, rollout_id=rollout_id, candidates=candidates
    )
    if other is not None:
        raise Conflict(
            {
                "message": f"rollout {other} is active on some of these devices and keys",
                "rollout_id": str(other),
            }
        )
    await conn.execute("SELECT pg_notify('iot_rollout', $1)", str(rollout_id))
    return str(rollout_id)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def _document(conn: Connection, row: asyncpg.Record) -> dict[str, Any]:
    health = row["success"].get("health")
    counts = {
        r["stage"]: r
        for r in await repo.stage_counts(
            conn,
            rollout_id=row["rollout_id"],
            health=parse_health(health).as_sql() if health else None,
        )
    }
    stages = []
    for index, spec in enumerate(row["stages"]):
        found = counts.get(index)
        written = found["written"] if found else 0
        if row["state"] in {"done"} or index < row["stage"]:
            status = "passed"
        elif index > row["stage"]:
            status = "waiting"
        elif row["state"] == "running":
            status = "writing" if row["stage_written_at"] is None else "gating"
        else:
            status = row["state"]
        stages.append(
            {
                "stage": index,
                "target": spec,
                "devices": found["devices"] if found else 0,
                "written": written,
                "not_written": found["not_written"] if found else 0,
                "synced": found["synced"] if found else 0,
                "rejected": found["rejected"] if found else 0,
                "unhealthy": found["unhealthy"] if found else 0,
                "reverted": found["reverted"] if found else 0,
                "status": status,
            }
        )
    return {
        "rollout_id": str(row["rollout_id"]),
        "state": row["state"],
        "stage": row["stage"],
        "stages": stages,
        "matched": row["matched"],
        "filter": row["filter"],
        "desired": row["patch"],
        "success": row["success"],
        "on_failure": row["on_failure"],
        "reason": row["reason"],
        "created_by": row["created_by"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
        "stage_written_at": _iso(row["stage_written_at"]),
        "finished_at": _iso(row["finished_at"]),
    }


async def get(conn: Connection, *, tenant_id: str, rollout_id: str) -> dict[str, Any]:
    row = await repo.get(conn, tenant_id=tenant_id, rollout_id=_parse_id(rollout_id))
    if row is None:
        raise NotFound(f"rollout {rollout_id!r} not found")
    return await _document(conn, row)


async def recent(conn: Connection, *, tenant_id: str, limit: int) -> dict[str, Any]:
    rows = await repo.recent(conn, tenant_id=tenant_id, limit=limit)
    return {"items": [await _document(conn, row) for row in rows]}


_TRANSITIONS = {
    "resume": ({"paused"}, "running"),
    "pause": ({"running"}, "paused"),
    "abort": ({"running", "paused", "reverting"}, "aborted"),
}


async def act(
    conn: Connection, *, tenant_id: str, rollout_id: str, action: str, who: str
) -> dict[str, Any]:
    """resume (a paused rollout: its current stage's gate opens again from now), pause, or
    abort (stops where it is; nothing is reverted). 409 from a state that does not allow it."""
    row = await repo.get(conn, tenant_id=tenant_id, rollout_id=_parse_id(rollout_id), lock=True)
    if row is None:
        raise NotFound(f"rollout {rollout_id!r} not found")
    allowed, target = _TRANSITIONS[action]
    if row["state"] not in allowed:
        raise Conflict(f"cannot {action} a rollout that is {row['state']}")
    await repo.update_state(
        conn,
        rollout_id=row["rollout_id"],
        state=target,
        reason=f"{action} by {who}" if action != "resume" else None,
        finished=target == "aborted",
        clear_written_at=action == "resume",
    )
    await conn.execute("SELECT pg_notify('iot_rollout', $1)", rollout_id)
    updated = await repo.get(conn, tenant_id=tenant_id, rollout_id=row["rollout_id"])
    assert updated is not None
    return await _document(conn, updated)


# --- running -------------------------------------------------------------------------------


async def _write_batch(
    conn: Connection, row: asyncpg.Record, device_ids: list[str], limits: twin.Limits
) -> None:
    before = await repo.desired_states(conn, tenant_id=row["tenant_id"], device_ids=device_ids)
    outcomes = await bulk_desired.patch_desired_many(
        conn,
        tenant_id=row["tenant_id"],
        device_ids=device_ids,
        patch=row["patch"],
        limits=limits,
        actor=Actor.rollout(str(row["rollout_id"])),
    )
    await repo.record_writes(
        conn,
        rollout_id=row["rollout_id"],
        device_ids=device_ids,
        outcomes=[outcomes[d].outcome for d in device_ids],
        versions=[outcomes[d].version for d in device_ids],
        reverts=[
            revert_patch(before[d], row["patch"]) if outcomes[d].outcome == "written" else None
            for d in device_ids
        ],
        errors=[outcomes[d].error for d in device_ids],
    )


async def _revert_batch(
    conn: Connection, row: asyncpg.Record, limits: twin.Limits, batch_size: int
) -> bool:
    pending = await repo.unreverted(conn, rollout_id=row["rollout_id"], limit=batch_size)
    if not pending:
        return False
    groups: dict[bytes, list[str]] = {}
    patches: dict[bytes, dict[str, Any]] = {}
    for device in pending:
        key = orjson.dumps(device["revert"], option=orjson.OPT_SORT_KEYS)
        groups.setdefault(key, []).append(device["device_id"])
        patches[key] = device["revert"]
    ids: list[str] = []
    versions: list[int | None] = []
    for key, device_ids in groups.items():
        outcomes = (
            await bulk_desired.patch_desired_many(
                conn,
                tenant_id=row["tenant_id"],
                device_ids=device_ids,
                patch=patches[key],
                limits=limits,
                actor=Actor.rollout(str(row["rollout_id"])),
            )
            if patches[key]
            else {}
        )
        for device_id in device_ids:
            ids.append(device_id)
            outcome = outcomes.get(device_id)
            versions.append(outcome.version if outcome is not None else None)
    await repo.record_reverts(conn, rollout_id=row["rollout_id"], device_ids=ids, versions=versions)
    return True


async def _gate(conn: Connection, row: asyncpg.Record) -> bool:
    """Judge the current stage; True when the rollout moved (next stage, done or failed)."""
    success = row["success"]
    health = success.get("health")
    counts = {
        r["stage"]: r
        for r in await repo.stage_counts(
            conn,
            rollout_id=row["rollout_id"],
            health=parse_health(health).as_sql() if health else None,
        )
    }
    found = counts.get(row["stage"])
    # A write the twin refused (its model's schema) counts against the stage; a device
    # deleted since the rollout started does not count at all.
    written = (found["written"] + found["failed"]) if found else 0
    good = found["good"] if found else 0
    ratio = success["synced_ratio"]
    if written == 0 or good >= ratio * written - _EPSILON:
        last = row["stage"] + 1 >= len(row["stages"])
        await repo.update_state(
            conn,
            rollout_id=row["rollout_id"],
            state="done" if last else "running",
            stage=row["stage"] if last else row["stage"] + 1,
            finished=last,
            clear_written_at=True,
        )
        return True
    rejected = found["rejected"] if found else 0
    refused = rejected + (found["failed"] if found else 0)
    hopeless = written - refused < ratio * written - _EPSILON
    if not hopeless and not await repo.gate_expired(
        conn, rollout_id=row["rollout_id"], within_s=float(success["within_s"])
    ):
        return False
    reason = (
        f"stage {row['stage']}: {good} of {written} devices synced and healthy"
        f" ({rejected} rejected, {found['unhealthy'] if found else 0} unhealthy,"
        f" {found['failed'] if found else 0} refused the write);"
        f" {ratio} needed within {success['within_s']} s"
    )
    failed_state = "reverting" if row["on_failure"] == "revert" else "paused"
    await repo.update_state(conn, rollout_id=row["rollout_id"], state=failed_state, reason=reason)
    return True


async def step(
    conn: Connection,
    rollout_id: uuid.UUID,
    *,
    limits: twin.Limits,
    batch_size: int = BATCH_SIZE,
) -> bool:
    """One step of one rollout, in the caller's transaction; False when it has nothing to do
    right now (locked by another runner, or waiting on its devices)."""
    row = await repo.claim(conn, rollout_id=rollout_id)
    if row is None:
        return False
    if row["state"] == "reverting":
        if await _revert_batch(conn, row, limits, batch_size):
            return True
        await repo.update_state(conn, rollout_id=rollout_id, state="reverted", finished=True)
        return True
    if row["stage_written_at"] is None:
        device_ids = await repo.unwritten(
            conn, rollout_id=rollout_id, stage=row["stage"], limit=batch_size
        )
        if device_ids:
            await _write_batch(conn, row, device_ids, limits)
        else:
            await repo.mark_stage_written(conn, rollout_id=rollout_id)
        return True
    return await _gate(conn, row)


async def run_step(
    pool: asyncpg.Pool,
    *,
    limits: twin.Limits,
    only: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> bool:
    """A step of every runnable rollout (or of one); True if any of them moved."""
    async with pool.acquire() as conn:
        ids = await repo.runnable_ids(conn)
    moved = False
    for rollout_id in ids:
        if only is not None and str(rollout_id) != only:
            continue
        async with db.transaction(pool) as conn:
            moved = await step(conn, rollout_id, limits=limits, batch_size=batch_size) or moved
    return moved


class RolloutRunner:
    """Drives the database's rollouts, in every ui_iot replica: the rollout's row lock
    (``SKIP LOCKED``) gives each step to one runner; a rollout left by a crashed process is
    simply picked up. Woken by LISTEN, polling every second for the gates."""

    def __init__(self, pool: asyncpg.Pool, database_url: str, *, limits: twin.Limits) -> None:
        self._pool = pool
        self._database_url = database_url
        self._limits = limits
        self._wake = asyncio.Event()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._listen(), name="rollouts-listen")
            tasks.create_task(self._work(), name="rollouts-worker")

    async def _listen(self) -> None:
        next_delay = backoff_delays()
        while True:
            try:
                conn = await db.connect(self._database_url, application_name="ui_iot-rollouts")
                try:
                    await conn.add_listener("iot_rollout", lambda *_: self._wake.set())
                    self._wake.set()
                    next_delay = backoff_delays()
                    while True:
                        await asyncio.sleep(5.0)
                        await conn.fetchval("SELECT 1")
                finally:
                    conn.terminate()
            except db.RETRYABLE_ERRORS as exc:
                log.warning("rollout listener lost the database: %r", exc)
            except Exception:
                raise_if_cancelled()
                log.exception("rollout listener failed unexpectedly, restarting it")
            await asyncio.sleep(next_delay())

    async def _work(self) -> None:
        next_delay = backoff_delays()
        while True:
            await wait_event(self._wake, POLL_INTERVAL_S)
            self._wake.clear()
            try:
                while await run_step(self._pool, limits=self._limits):
                    pass
                next_delay = backoff_delays()
            except db.RETRYABLE_ERRORS as exc:
                log.warning("rollout step failed, retrying: %r", exc)
                await asyncio.sleep(next_delay())
            except DomainError as exc:
                log.warning("rollout step refused: %r", exc)
                await asyncio.sleep(next_delay())
            except Exception:
                raise_if_cancelled()
                log.exception("rollout step failed unexpectedly, retrying")
                await asyncio.sleep(next_delay())


async def follow(
    pool: asyncpg.Pool,
    rollout_id: str,
    *,
    tenant_id: str,
    limits: twin.Limits,
    on_progress: Callable[[dict[str, Any]], None],
    drive: bool = True,
    interval: float = 0.5,
    batch_size: int = BATCH_SIZE,
) -> dict[str, Any]:
    """Watch (and, with ``drive``, run) one rollout until it is no longer running: the CLI.
    Progress is shown between batches and while a stage's gate is open."""

    async def show() -> dict[str, Any]:
        async with pool.acquire() as conn:
            document = await get(conn, tenant_id=tenant_id, rollout_id=rollout_id)
        on_progress(document)
        return document

    last_shown = 0.0
    loop = asyncio.get_running_loop()
    while True:
        while drive and await run_step(pool, limits=limits, only=rollout_id, batch_size=batch_size):
            if loop.time() - last_shown >= interval:
                await show()
                last_shown = loop.time()
        document = await show()
        last_shown = loop.time()
        if document["state"] not in {"running", "reverting"}:
            return document
        await asyncio.sleep(interval)
