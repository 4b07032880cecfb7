"""Our own tests of the twin core, beyond the seed's seven (kept verbatim in test_twin.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.twin import (
    Limits,
    check_report_version,
    compute_delta,
    json_depth,
    json_equal,
    limits_refusal,
    merge_patch,
    sync_status,
)

# --- JSON types ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (True, 1, False),
        (False, 0, False),
        (1, 1.0, True),
        ([True], [1], False),
        ({"x": [1, 2]}, {"x": [1, 2]}, True),
        ([1, 2], [2, 1], False),
        ("1", 1, False),
        (None, None, True),
        ({"a": 1}, {"a": 1, "b": None}, False),
    ],
)
def test_json_equal_follows_json_types(a: Any, b: Any, equal: bool) -> None:
    assert json_equal(a, b) is equal
    assert json_equal(b, a) is equal


def test_delta_true_is_not_one() -> None:
    assert compute_delta({"on": True}, {"on": 1}) == {"on": True}


def test_delta_int_equals_float() -> None:
    assert compute_delta({"t": 1}, {"t": 1.0}) == {}


def test_delta_arrays_compare_whole() -> None:
    assert compute_delta({"l": [1, 2, 3]}, {"l": [1, 2]}) == {"l": [1, 2, 3]}
    assert compute_delta({"l": [1, 2]}, {"l": [1, 2]}) == {}


def test_delta_recurses_into_objects() -> None:
    desired = {"net": {"wifi": {"ssid": "a", "channel": 6}, "dhcp": True}}
    reported = {"net": {"wifi": {"ssid": "a", "channel": 11}, "dhcp": True}, "uptime": 5}
    assert compute_delta(desired, reported) == {"net": {"wifi": {"channel": 6}}}


def test_delta_object_versus_scalar_differs() -> None:
    assert compute_delta({"a": {"x": 1}}, {"a": 5}) == {"a": {"x": 1}}
    assert compute_delta({"a": 5}, {"a": {"x": 1}}) == {"a": 5}


def test_delta_leaves_out_empty_objects() -> None:
    assert compute_delta({"a": {}}, {}) == {}
    assert compute_delta({"a": {"b": {}}}, {"a": 3}) == {}


# --- merge patch (RFC 7386 appendix A examples) --------------------------------------------


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_rfc7386_examples(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


def test_merge_patch_does_not_mutate() -> None:
    target = {"a": {"b": 1}}
    merge_patch(target, {"a": {"b": 2, "c": 3}})
    assert target == {"a": {"b": 1}}


# --- versions, status, limits -------------------------------------------------------------


def test_report_version_rule() -> None:
    assert check_report_version(3, 3, 5).accepted  # equal to reported: re-delivery
    assert check_report_version(5, 3, 5).accepted
    stale = check_report_version(2, 3, 5)
    assert not stale.accepted and "stale" in (stale.error or "")
    unknown = check_report_version(6, 3, 5)
    assert not unknown.accepted and "unknown" in (unknown.error or "")


def test_sync_status_honours_stale_after_and_now() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    seen = now - timedelta(minutes=10)
    assert sync_status(2, 2, seen, now=now, stale_after=timedelta(minutes=5)) == "stale"
    assert sync_status(2, 1, seen, now=now, stale_after=timedelta(minutes=15)) == "pending"
    assert sync_status(2, 3, seen, now=now) == "synced"


def test_depth() -> None:
    assert json_depth(1) == 0
    assert json_depth({}) == 1
    assert json_depth({"a": [{"b": 1}]}) == 3


def test_limits() -> None:
    limits = Limits(max_state_bytes=20, max_depth=2)
    assert limits_refusal({"a": {"b": 1}}, limits, what="doc") is None
    deep = limits_refusal({"a": {"b": {"c": 1}}}, limits, what="doc")
    assert deep is not None and deep.kind == "malformed" and "3 levels" in deep.message
    big = limits_refusal({"a": "x" * 30}, limits, what="doc")
    assert big is not None and big.kind == "too_large" and "doc is 38 bytes" in big.message


# --- properties -----------------------------------------------------------------------------

scalars = st.one_of(
    st.booleans(), st.integers(-3, 3), st.sampled_from([0.0, 1.0, 2.5]), st.sampled_from(["", "x"])
)
keys = st.sampled_from(["a", "b", "c", "d"])
# Documents as merge patches leave them: no null inside objects (arrays may hold anything).
documents = st.recursive(
    scalars | st.lists(scalars | st.none(), max_size=3),
    lambda children: st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(keys, documents, max_size=4)
patches = st.recursive(
    scalars | st.none(),
    lambda children: st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


def _no_empty_objects(value: Any, top: bool = True) -> bool:
    if isinstance(value, dict):
        return (top or bool(value)) and all(_no_empty_objects(v, False) for v in value.values())
    return True


def _no_null_members(value: Any) -> bool:
    if isinstance(value, dict):
        return all(v is not None and _no_null_members(v) for v in value.values())
    return True


@given(objects, objects)
def test_merging_the_delta_into_reported_leaves_no_delta(desired: Any, reported: Any) -> None:
    delta = compute_delta(desired, reported)
    assert compute_delta(desired, merge_patch(reported, delta)) == {}


@given(objects, patches)
def test_merge_patch_never_leaves_a_null_member(target: Any, patch: Any) -> None:
    merged = merge_patch(target, {"root": patch})
    assert _no_null_members(merged)


@given(objects, objects)
def test_delta_never_holds_an_empty_object(desired: Any, reported: Any) -> None:
    assert _no_empty_objects(compute_delta(desired, reported))


@given(objects)
def test_delta_of_a_document_with_itself_is_empty(document: Any) -> None:
    assert compute_delta(document, document) == {}
