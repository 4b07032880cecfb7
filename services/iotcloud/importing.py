"""``iotcloud device import``: the devices of a CSV file, registered through the batch call.

The file is ``device_id,name,tags`` with a header row; ``tags`` is ``key=value;key2=value2``
(docs/operations.md). Every row is checked, and every id looked up, before anything is
written; then the devices go in batches of ``MAX_BATCH``, one transaction each, and each
batch's tokens are written out as soon as it commits.
"""

from __future__ import annotations

import contextlib
import csv
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from iotcloud.provisioning import ProvisioningError
from shared import db
from shared.errors import DomainError
from shared.repositories import bulk_devices, tenants
from shared.services import device_batches
from shared.services.device_batches import MAX_BATCH, DeviceSpec

COLUMNS = ("device_id", "name", "tags")
# How many row errors a refused file lists before "... and N more".
_LISTED_ERRORS = 50
_LOOKUP_CHUNK = 10_000


class ImportRefused(ProvisioningError):
    """The file cannot be imported as it is; nothing was written."""

    def __init__(self, errors: list[str]) -> None:
        listed = errors[:_LISTED_ERRORS]
        more = len(errors) - len(listed)
        lines = [f"{len(errors)} problem(s), nothing imported:", *listed]
        if more:
            lines.append(f"... and {more} more")
        super().__init__("\n".join(lines))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class ImportRow:
    line: int
    spec: DeviceSpec


def parse_tags(text: str) -> dict[str, str]:
    """``key=value;key2=value2`` (empty for no tags; a trailing ``;`` is allowed). A value
    runs to the next ``;``, so it cannot contain one; keys and values keep their spaces."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"tag {part!r} is not key=value")
        if key in tags:
            raise ValueError(f"tag {key!r} is given twice")
        tags[key] = value
    return tags


def _header_errors(header: list[str] | None) -> list[str]:
    if header is None:
        return ["line 1: the file is empty; it needs the header row device_id,name,tags"]
    if tuple(column.strip().lower() for column in header) != COLUMNS:
        return [f"line 1: the header must be device_id,name,tags, not {','.join(header)!r}"]
    return []


def parse_rows(lines: Iterator[str]) -> list[ImportRow]:
    """The rows of a CSV, checked as the batch call checks them, plus ids repeated in the
    file; raises ``ImportRefused`` listing every problem by line number."""
    reader = csv.reader(lines, strict=True)
    errors: list[str] = []
    rows: list[ImportRow] = []
    try:
        errors.extend(_header_errors(next(reader, None)))
        first_line: dict[str, int] = {}
        for fields in reader:
            line = reader.line_num
            if not fields or fields == [""]:
                continue
            if len(fields) != len(COLUMNS):
                errors.append(f"line {line}: {len(fields)} fields, expected {len(COLUMNS)}")
                continue
            device_id, name, tags_text = fields
            if not device_id:
                errors.append(f"line {line}: device_id is empty")
                continue
            try:
                tags = parse_tags(tags_text)
            except ValueError as exc:
                errors.append(f"line {line}: {exc}")
                continue
            spec = DeviceSpec(device_id=device_id, name=name or None, tags=tags)
            errors.extend(
                f"line {line}: {problem}" for problem in device_batches.spec_problems(spec)
            )
            if device_id in first_line:
                errors.append(
                    f"line {line}: device id {device_id!r} is also on line {first_line[device_id]}"
                )
            first_line.setdefault(device_id, line)
            rows.append(ImportRow(line, spec))
    except csv.Error as exc:
        errors.append(f"line {reader.line_num}: {exc}")
    except UnicodeDecodeError as exc:
        errors.append(f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})")
    if not errors and not rows:
        errors.append("the file has no devices")
    if errors:
        raise ImportRefused(errors)
    return rows


def read_rows(path: Path) -> list[ImportRow]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return parse_rows(iter(handle))
    except OSError as exc:
        raise ProvisioningError(f"cannot read {path}: {exc.strerror}") from exc


@contextlib.contextmanager
def tokens_output(path: Path | None, *, force: bool) -> Iterator[TextIO]:
    """Where the tokens go: a new file readable by its owner alone (an existing one only
    with ``force``), or standard output."""
    if path is None:
        yield sys.stdout
        return
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise ProvisioningError(f"{path} exists; pass --force to overwrite it") from exc
    except OSError as exc:
        raise ProvisioningError(f"cannot write {path}: {exc.strerror}") from exc
    os.fchmod(fd, 0o600)  # an overwritten file keeps its old mode otherwise
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
        yield handle


async def import_devices(
    database_url: str,
    *,
    tenant_id: str,
    rows: list[ImportRow],
    out: TextIO,
    on_progress: Callable[[int], None],
) -> int:
    """Register the rows, writing ``device_id,provision_token`` lines to ``out`` batch by
    batch; how many were registered. Refuses (nothing written) an unknown tenant or ids
    already taken. A batch that still fails (an id taken meanwhile) stops the import:
    the batches before it stay registered, and their tokens are in ``out``."""
    conn = await db.connect(database_url, application_name="iotcloud-import")
    try:
        if not await tenants.exists(conn, tenant_id):
            raise ProvisioningError(f"no tenant {tenant_id!r}")
        taken: set[str] = set()
        for start in range(0, len(rows), _LOOKUP_CHUNK):
            chunk = rows[start : start + _LOOKUP_CHUNK]
            taken |= await bulk_devices.taken_ids(conn, [row.spec.device_id or "" for row in chunk])
        if taken:
            raise ImportRefused(
                [
                    f"line {row.line}: device id {row.spec.device_id!r} is already taken"
                    for row in rows
                    if row.spec.device_id in taken
                ]
            )
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(("device_id", "provision_token"))
        done = 0
        for start in range(0, len(rows), MAX_BATCH):
            batch = rows[start : start + MAX_BATCH]
            try:
                async with conn.transaction():
                    created = await device_batches.create_devices(
                        conn, tenant_id=tenant_id, specs=[row.spec for row in batch]
                    )
            except DomainError as exc:
                raise ProvisioningError(
                    f"lines {batch[0].line}-{batch[-1].line} refused, {done} devices imported "
                    f"before them (their tokens are written): {exc.detail}"
                ) from exc
            writer.writerows((device.device_id, device.provision_token) for device in created)
            out.flush()
            done += len(created)
            on_progress(len(created))
        return done
    finally:
        await conn.close()
