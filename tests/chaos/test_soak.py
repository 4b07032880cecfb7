"""The chaos soak, a short run with a fixed seed (``make soak`` runs 30 minutes)."""

from __future__ import annotations

from pathlib import Path

from tests.chaos.soak import FAULTS, Soak, render_report


async def test_every_kind_of_fault_breaks_no_invariant(tmp_path: Path) -> None:
    soak = Soak(duration=80, seed=20261201, devices=10, home=tmp_path / "soak")
    result = await soak.run()
    report = render_report(result, "tests/chaos/test_soak.py")
    assert set(result["faults"]) == set(FAULTS), report
    assert result["problems"] == [], report
    assert all(result["invariants"].values()), report
