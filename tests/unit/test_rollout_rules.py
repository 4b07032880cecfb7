"""The pure rules of staged rollouts: revert patches, key overlap, stages, health pointers."""

from __future__ import annotations

import pytest

from shared import twin
from shared.errors import Unprocessable
from shared.services import rollouts


@pytest.mark.parametrize(
    ("before", "patch"),
    [
        ({"fw": "1.0", "keep": 1}, {"fw": "2.0"}),
        ({"fw": "1.0"}, {"fw": "2.0", "new": {"x": 1}}),
        ({"net": {"ch": 1, "tx": 5}, "a": 1}, {"net": {"ch": 11}}),
        ({"net": 3}, {"net": {"ch": 11}}),
        ({"net": {"ch": 1}}, {"net": 7}),
        ({"gone": {"deep": [1, 2]}}, {"gone": None}),
        ({}, {"absent": None}),
        ({"l": [1, 2]}, {"l": [3]}),
    ],
)
def test_revert_patch_puts_every_changed_key_back(before: dict, patch: dict) -> None:  # type: ignore[type-arg]
    after = twin.merge_patch(before, patch)
    assert twin.merge_patch(after, rollouts.revert_patch(before, patch)) == before


def test_keys_overlap_by_path_prefix() -> None:
    assert rollouts.keys_overlap({"net": {"ch": 1}}, {"net": {"ch": 6}})
    assert rollouts.keys_overlap({"net": None}, {"net": {"ch": 6}})
    assert rollouts.keys_overlap({"net": {"ch": 1}}, {"net": 5})
    assert not rollouts.keys_overlap({"net": {"ch": 1}}, {"net": {"tx": 1}})
    assert not rollouts.keys_overlap({"fw": "2"}, {"net2": 1})


def test_stage_ends_cover_the_sample_and_must_grow() -> None:
    stages = [rollouts.parse_stage(value, i) for i, value in enumerate([1, "10%", 50, 100])]
    assert rollouts.stage_ends(stages, 1000) == [10, 100, 500, 1000]
    assert rollouts.stage_ends(stages, 7) == [1, 1, 4, 7]  # rounding up: never an empty first
    counted = [rollouts.parse_stage({"count": 3}, 0), rollouts.parse_stage(100, 1)]
    assert rollouts.stage_ends(counted, 10) == [3, 10]
    with pytest.raises(Unprocessable, match="fewer devices"):
        rollouts.stage_ends([rollouts.parse_stage({"count": 9}, 0), {"percent": 50}], 10)
    with pytest.raises(Unprocessable, match="matches 10"):
        rollouts.stage_ends([{"count": 11}], 10)
    for bad in (0, 101, -1, True, "x%", {"count": 0}, {"count": 1.5}, {"share": 3}, None):
        with pytest.raises(Unprocessable):
            rollouts.parse_stage(bad, 0)


def test_health_pointers_and_operators() -> None:
    health = rollouts.parse_health({"pointer": "/reported/a~1b/c~0d", "op": "in", "value": [1]})
    assert (health.side, health.path) == ("reported", ["a/b", "c~d"])
    assert (
        rollouts.parse_health({"pointer": "/desired/x", "op": ">=", "value": 3}).side == "desired"
    )
    for bad in (
        {"pointer": "reported/x", "op": "==", "value": 1},
        {"pointer": "/reported", "op": "==", "value": 1},
        {"pointer": "/other/x", "op": "==", "value": 1},
        {"pointer": "/reported/a~2", "op": "==", "value": 1},
        {"pointer": "/reported/x", "op": "=~", "value": 1},
        {"pointer": "/reported/x", "op": "<", "value": [1]},
        {"pointer": "/reported/x", "op": "in", "value": 1},
        {"pointer": "/reported/x", "op": "=="},
        {"pointer": "/reported/x", "op": "==", "value": 1, "extra": 1},
    ):
        with pytest.raises(Unprocessable):
            rollouts.parse_health(bad)


def test_rejection_parsing_and_status() -> None:
    assert twin.parse_rejection({"code": 7, "message": "no"}) == twin.Rejection(7, "no")
    assert twin.parse_rejection({"code": "E1"}) == twin.Rejection("E1", "")
    for bad in ({"code": True}, {"code": ""}, {"code": 1, "message": 2}, [], {"code": 1, "x": 1}):
        assert isinstance(twin.parse_rejection(bad), twin.Refusal)
    report = twin.parse_report(
        {"version": 3, "rejected": {"code": 1, "message": "m"}}, twin.Limits()
    )
    assert isinstance(report, twin.Report) and report.reported == {}
    assert twin.rejection_in_effect(3, 2) and not twin.rejection_in_effect(3, 3)
    assert not twin.rejection_in_effect(None, 0)
