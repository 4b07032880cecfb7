"""The chaos soak, a short run with a fixed seed (``make soak`` runs 30 minutes)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tests.chaos.soak import FAULTS, Soak, render_report


async def test_every_kind_of_fault_breaks_no_invariant() -> None:
    # Not under pytest's tmp_path: the embedded PostgreSQL runs as an unprivileged user when
    # the suite runs as root, and must reach its data directory.
    home = Path(tempfile.mkdtemp(prefix="iotcloud-chaos-"))
    soak = Soak(duration=80, seed=20261201, devices=10, home=home)
    result = await soak.run()
    report = render_report(result, "tests/chaos/test_soak.py")
    assert set(result["faults"]) == set(FAULTS), report
    assert result["problems"] == [], report
    assert all(result["invariants"].values()), report
    shutil.rmtree(home, ignore_errors=True)
