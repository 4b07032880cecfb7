"""Bulk provisioning (issue 12 items 7 and 9): ``POST /customer/devices/batch`` and
``iotcloud device import``, against real PostgreSQL and Mosquitto."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt

from tests.conftest import Stack
from tests.support import ROOT

BATCH = "/customer/devices/batch"


async def summary_total(stack: Stack, headers: dict[str, str]) -> int:
    response = await stack.ui.get("/customer/fleet/summary", headers=headers)
    assert response.status_code == 200, response.text
    total: int = response.json()["total"]
    return total


async def device_ids(stack: Stack, headers: dict[str, str]) -> set[str]:
    response = await stack.ui.get("/customer/devices", params={"limit": 1000}, headers=headers)
    assert response.status_code == 200, response.text
    return {item["device_id"] for item in response.json()["items"]}


async def test_batch_registers_devices_whose_tokens_work(stack: Stack) -> None:
    tenant_id, admin = await stack.tenant("admin")
    model = await stack.ui.post(
        "/customer/models",
        json={"model_id": "thermo", "desired_schema": {"type": "object"}},
        headers=admin,
    )
    assert model.status_code == 201, model.text
    body = {
        "devices": [
            {
                "device_id": "batch-a",
                "name": "Hall",
                "tags": {"site": "lyon"},
                "model_id": "thermo",
            },
            {},
            {"device_id": "batch-c"},
        ]
    }
    response = await stack.ui.post(BATCH, json=body, headers=admin)
    assert response.status_code == 201, response.text
    items = response.json()["items"]
    assert [item["device_id"] for item in items][::2] == ["batch-a", "batch-c"]
    assert items[1]["device_id"].startswith("dev-")
    assert all(item["provision_token"].startswith("tok-") for item in items)
    assert len({item["provision_token"] for item in items}) == 3

    profile = (await stack.ui.get("/customer/devices/batch-a", headers=admin)).json()
    assert (profile["name"], profile["tags"], profile["model_id"]) == (
        "Hall",
        {"site": "lyon"},
        "thermo",
    )
    unnamed = await stack.ui.get(f"/customer/devices/{items[1]['device_id']}", headers=admin)
    assert unnamed.json()["name"] == items[1]["device_id"]

    for item in items:
        shadow = await stack.ingest.get(
            "/device/v1/shadow", headers={"X-Provision-Token": item["provision_token"]}
        )
        assert shadow.status_code == 200, shadow.text
        assert shadow.json() == {"desired": {}, "version": 0}

    # The broker asks the database at CONNECT: a device of the batch logs in, with its id
    # as client id, and publishes into its own tree.
    device = items[2]
    async with aiomqtt.Client(
        "127.0.0.1",
        stack.broker.port,
        username=device["device_id"],
        password=device["provision_token"],
        identifier=device["device_id"],
        timeout=5,
    ) as client:
        await client.subscribe(f"tenant/{tenant_id}/device/{device['device_id']}/#", qos=1)

    assert await summary_total(stack, admin) == 3
    full = {"devices": [{"device_id": f"bulk-{i:04d}"} for i in range(1000)]}
    response = await stack.ui.post(BATCH, json=full, headers=admin)
    assert response.status_code == 201, response.text
    assert len(response.json()["items"]) == 1000
    summary = (await stack.ui.get("/customer/fleet/summary", headers=admin)).json()
    assert summary["total"] == 1003
    assert summary["stale"] == 1000  # never seen; the first three have pulled their shadow
    assert summary["pending"] == 0


async def test_batch_is_all_or_nothing_and_names_the_entries(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    _, other = await stack.tenant("admin")
    await stack.device(admin, device_id="mine")
    await stack.device(admin, device_id="gone")
    assert (await stack.ui.delete("/customer/devices/gone", headers=admin)).status_code == 204
    await stack.device(other, device_id="theirs")
    strict = await stack.ui.post(
        "/customer/models",
        json={"model_id": "strict", "desired_schema": {"type": "object", "required": ["fan"]}},
        headers=admin,
    )
    assert strict.status_code == 201, strict.text
    before = await device_ids(stack, admin)
    total = await summary_total(stack, admin)

    def batch(*entries: dict[str, Any]) -> dict[str, Any]:
        return {"devices": [{"device_id": "fresh-0"}, *entries]}

    conflicts = {
        "repeated": (batch({"device_id": "x"}, {"device_id": "x"}), [(2, "x")]),
        "live": (batch({"device_id": "mine"}), [(1, "mine")]),
        "revoked": (batch({"device_id": "gone"}), [(1, "gone")]),
        "another tenant's": (batch({"device_id": "theirs"}), [(1, "theirs")]),
    }
    for case, (body, named) in conflicts.items():
        response = await stack.ui.post(BATCH, json=body, headers=admin)
        assert response.status_code == 409, (case, response.text)
        detail = response.json()["detail"]
        assert [(c["index"], c["device_id"]) for c in detail["conflicts"]] == named, case
        assert "message" in detail
    # Another tenant's id reads exactly like a taken one of the caller's: nothing more.
    mine = await stack.ui.post(BATCH, json=batch({"device_id": "mine"}), headers=admin)
    theirs = await stack.ui.post(BATCH, json=batch({"device_id": "theirs"}), headers=admin)
    assert theirs.text.replace("theirs", "mine") == mine.text
    assert theirs.json()["detail"]["conflicts"][0]["message"] == "already taken"

    invalid = {
        "trailing newline": ({"device_id": "abc\n"}, "device_id must match"),
        "slash": ({"device_id": "a/b"}, "device_id must match"),
        "wildcard": ({"device_id": "a+b"}, "device_id must match"),
        "bad tag key": ({"tags": {"a:b": "x"}}, "tag key"),
        "tag key newline": ({"tags": {"key\n": "x"}}, "tag key"),
        "long tag value": ({"tags": {"k": "v" * 257}}, "at most 256"),
        "too many tags": ({"tags": {f"k{i}": "v" for i in range(65)}}, "at most 64 tags"),
        "long name": ({"name": "n" * 201}, "name must be"),
        "unknown model": ({"model_id": "nope"}, "model 'nope' not found"),
    }
    for case, (entry, message) in invalid.items():
        response = await stack.ui.post(BATCH, json=batch(entry), headers=admin)
        assert response.status_code == 422, (case, response.text)
        errors = response.json()["detail"]["errors"]
        assert [e["index"] for e in errors] == [1], (case, errors)
        assert message in errors[0]["message"], (case, errors)

    refused_model = await stack.ui.post(BATCH, json=batch({"model_id": "strict"}), headers=admin)
    assert refused_model.status_code == 422, refused_model.text
    assert refused_model.json()["detail"]["model_id"] == "strict"

    sizes = {
        "empty": {"devices": []},
        "1001": {"devices": [{"device_id": f"d-{i}"} for i in range(1001)]},
        "not a list": {"devices": {"device_id": "x"}},
        "unknown field": {"devices": [{"device_id": "x", "model": "m"}]},
        "tag not a string": {"devices": [{"tags": {"k": 1}}]},
    }
    for case, body in sizes.items():
        response = await stack.ui.post(BATCH, json=body, headers=admin)
        assert response.status_code == 422, (case, response.text)

    assert await device_ids(stack, admin) == before
    assert await summary_total(stack, admin) == total
    assert (await stack.ui.get("/customer/devices/fresh-0", headers=admin)).status_code == 404
    # The refused batches left their ids free.
    retry = await stack.ui.post(BATCH, json=batch({"device_id": "x"}), headers=admin)
    assert retry.status_code == 201, retry.text


async def test_overlapping_batches_one_wins_and_none_deadlocks(stack: Stack) -> None:
    _, admin = await stack.tenant("admin")
    ids = [f"race-{i:04d}" for i in range(1000)]
    bodies = [{"devices": [{"device_id": i} for i in order]} for order in (ids, ids[::-1])]
    responses = await asyncio.gather(
        *(stack.ui.post(BATCH, json=body, headers=admin) for body in bodies)
    )
    assert sorted(r.status_code for r in responses) == [201, 409], [r.text for r in responses]
    assert await summary_total(stack, admin) == 1000


async def test_batch_needs_an_admin(stack: Stack) -> None:
    tenant_id, _ = await stack.tenant("admin")
    body = {"devices": [{"device_id": "nope-1"}]}
    for role in ("viewer", "operator"):
        _, headers = await stack.tenant(role, tenant_id=tenant_id)
        response = await stack.ui.post(BATCH, json=body, headers=headers)
        assert response.status_code == 403, (role, response.text)
    assert (await stack.ui.post(BATCH, json=body)).status_code == 401
    _, admin = await stack.tenant("admin", tenant_id=tenant_id)
    assert await device_ids(stack, admin) == set()


# --- iotcloud device import ------------------------------------------------------------------


def run_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": stack.settings.database_url,
        "MQTT_URL": stack.settings.mqtt_url,
    }
    return subprocess.run(
        [sys.executable, "-m", "iotcloud.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_import_registers_a_csv_and_writes_tokens_once(stack: Stack, tmp_path: Path) -> None:
    tenant_id, admin = await stack.tenant("admin")
    source = tmp_path / "fleet.csv"
    lines = ["device_id,name,tags", "imp-a,Hall sensor,site=lyon;floor=2", "imp-b,,", "imp-c,C,"]
    lines += [f"imp-{i:04d},,batch=big" for i in range(1500)]
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "tokens.csv"

    result = run_cli(
        stack, "device", "import", "--tenant", tenant_id, str(source), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert "imported 1503 devices" in result.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    tokens = list(csv.DictReader(out.open()))
    assert [row["device_id"] for row in tokens[:3]] == ["imp-a", "imp-b", "imp-c"]
    assert len(tokens) == 1503

    profile = (await stack.ui.get("/customer/devices/imp-a", headers=admin)).json()
    assert (profile["name"], profile["tags"]) == ("Hall sensor", {"site": "lyon", "floor": "2"})
    assert (await stack.ui.get("/customer/devices/imp-b", headers=admin)).json()["name"] == "imp-b"
    for row in (tokens[0], tokens[-1]):
        shadow = await stack.ingest.get(
            "/device/v1/shadow", headers={"X-Provision-Token": row["provision_token"]}
        )
        assert shadow.status_code == 200, shadow.text
    assert await summary_total(stack, admin) == 1503

    # The tokens are shown once: an existing --out is refused and left as it was.
    written = out.read_text()
    again = run_cli(
        stack, "device", "import", "--tenant", tenant_id, str(source), "--out", str(out)
    )
    assert again.returncode == 2
    assert "exists" in again.stderr and "--force" in again.stderr
    assert out.read_text() == written

    # Without --out the tokens CSV is standard output; the summary goes to stderr.
    small = tmp_path / "small.csv"
    small.write_text("device_id,name,tags\nimp-stdout,,\n")
    printed = run_cli(stack, "device", "import", "--tenant", tenant_id, str(small))
    assert printed.returncode == 0, printed.stderr
    rows = list(csv.DictReader(io.StringIO(printed.stdout)))
    assert [row["device_id"] for row in rows] == ["imp-stdout"]
    assert rows[0]["provision_token"].startswith("tok-")
    assert "imported 1 devices" in printed.stderr

    # Ids already registered (here, by the first import) are refused with their lines.
    taken = run_cli(stack, "device", "import", "--tenant", tenant_id, str(source))
    assert taken.returncode == 2
    assert "line 2: device id 'imp-a' is already taken" in taken.stderr
    assert await summary_total(stack, admin) == 1504


async def test_import_refuses_a_malformed_file_and_writes_nothing(
    stack: Stack, tmp_path: Path
) -> None:
    tenant_id, admin = await stack.tenant("admin")
    source = tmp_path / "bad.csv"
    source.write_text(
        "device_id,name,tags\n"
        "good-1,One,site=a\n"
        "bad/id,Two,\n"
        "good-3,Three,site\n"
        "good-1,Again,\n"
        "good-5,Five,a=1,extra\n"
        ",Six,\n"
        "good-7,Seven,bad:key=1\n"
    )
    out = tmp_path / "tokens.csv"
    result = run_cli(
        stack, "device", "import", "--tenant", tenant_id, str(source), "--out", str(out)
    )
    assert result.returncode == 2, result.stderr
    for expected in (
        "line 3: device_id must match",
        "line 4: tag 'site' is not key=value",
        "line 5: device id 'good-1' is also on line 2",
        "line 6: 4 fields, expected 3",
        "line 7: device_id is empty",
        "line 8: tag key 'bad:key'",
        "nothing imported",
    ):
        assert expected in result.stderr, (expected, result.stderr)
    assert "line 2" not in result.stderr.replace("also on line 2", "")
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert await summary_total(stack, admin) == 0

    header = tmp_path / "header.csv"
    header.write_text("id,name\nx,y\n")
    refused = run_cli(stack, "device", "import", "--tenant", tenant_id, str(header))
    assert refused.returncode == 2
    assert "line 1: the header must be device_id,name,tags" in refused.stderr

    unknown = run_cli(stack, "device", "import", "--tenant", "no-such-tenant", str(header))
    assert unknown.returncode == 2
    good = tmp_path / "good.csv"
    good.write_text("device_id,name,tags\nok-1,,\n")
    no_tenant = run_cli(stack, "device", "import", "--tenant", "no-such-tenant", str(good))
    assert no_tenant.returncode == 2
    assert "no tenant 'no-such-tenant'" in no_tenant.stderr
    assert await summary_total(stack, admin) == 0
