"""Per-leaf metadata and JSON Schema checks of the twin core: pure, no services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.twin import (
    SchemaViolation,
    check_schema,
    is_leaf_metadata,
    json_pointer,
    merge_metadata,
    merge_patch,
    schema_violations,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def stamp(version: int, at: datetime) -> dict[str, Any]:
    return {"updated_at": at.isoformat(), "version": version}


def state_leaves(state: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Paths of a state's leaves: scalars, arrays and empty objects."""
    if isinstance(state, dict) and state:
        return {leaf for key, value in state.items() for leaf in state_leaves(value, (*path, key))}
    return {path}


def metadata_leaves(metadata: Any, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if is_leaf_metadata(metadata):
        return {path}
    assert isinstance(metadata, dict) and metadata, f"not a mirror at {path}: {metadata!r}"
    return {
        leaf for key, value in metadata.items() for leaf in metadata_leaves(value, (*path, key))
    }


def test_first_write_stamps_every_leaf() -> None:
    patch = {"interval": 30, "net": {"ssid": "a", "dns": ["1.1.1.1"]}, "empty": {}}
    assert merge_metadata({}, patch, version=1, at=T0) == {
        "interval": stamp(1, T0),
        "net": {"ssid": stamp(1, T0), "dns": stamp(1, T0)},
        "empty": stamp(1, T0),
    }


def test_only_written_leaves_change() -> None:
    first = merge_metadata({}, {"a": 1, "net": {"ssid": "x", "ch": 6}}, version=1, at=T0)
    second = merge_metadata(first, {"net": {"ch": 11}}, version=2, at=T1)
    assert second == {
        "a": stamp(1, T0),
        "net": {"ssid": stamp(1, T0), "ch": stamp(2, T1)},
    }
    assert first["net"]["ch"] == stamp(1, T0), "the input was mutated"


def test_null_removes_leaf_and_subtree_metadata() -> None:
    first = merge_metadata({}, {"a": 1, "net": {"ssid": "x"}}, version=1, at=T0)
    assert merge_metadata(first, {"a": None, "net": None}, version=2, at=T1) == {}
    assert merge_metadata(first, {"missing": None}, version=2, at=T1) == first


def test_object_emptied_by_null_becomes_a_leaf() -> None:
    first = merge_metadata({}, {"net": {"ssid": "x"}}, version=1, at=T0)
    assert merge_metadata(first, {"net": {"ssid": None}}, version=2, at=T1) == {"net": stamp(2, T1)}


def test_scalar_replaced_by_object_and_back() -> None:
    first = merge_metadata({}, {"x": 5}, version=1, at=T0)
    nested = merge_metadata(first, {"x": {"y": 1}}, version=2, at=T1)
    assert nested == {"x": {"y": stamp(2, T1)}}
    assert merge_metadata(nested, {"x": [1, 2]}, version=3, at=T1) == {"x": stamp(3, T1)}


def test_empty_patch_object_leaves_an_existing_object_alone() -> None:
    first = merge_metadata({}, {"net": {"ssid": "x"}}, version=1, at=T0)
    assert merge_metadata(first, {"net": {}}, version=2, at=T1) == first


def test_state_keys_named_like_a_stamp_are_not_confused_with_one() -> None:
    state_patch = {"cfg": {"updated_at": "yesterday", "version": 3}}
    metadata = merge_metadata({}, state_patch, version=1, at=T0)
    assert metadata == {"cfg": {"updated_at": stamp(1, T0), "version": stamp(1, T0)}}
    again = merge_metadata(metadata, {"cfg": {"version": 4}}, version=2, at=T1)
    assert again == {"cfg": {"updated_at": stamp(1, T0), "version": stamp(2, T1)}}


# --- property: the metadata tree has exactly the leaves of the state tree ------------------

_keys = st.sampled_from(["a", "b", "c", "updated_at", "version"])
_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
_values = st.recursive(
    _scalars | st.lists(st.integers(), max_size=2),
    lambda children: st.dictionaries(_keys, children, max_size=3),
    max_leaves=8,
)
_patches = st.dictionaries(_keys, _values, max_size=4)


@given(st.lists(_patches, min_size=1, max_size=6))
def test_metadata_mirrors_state_after_any_sequence_of_patches(
    patches: list[dict[str, Any]],
) -> None:
    state: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    for version, patch in enumerate(patches, start=1):
        state = merge_patch(state, patch)
        metadata = merge_metadata(metadata, patch, version=version, at=T0)
        if state:
            assert metadata_leaves(metadata) == state_leaves(state)
        else:
            assert metadata == {}


def _stamp_at(metadata: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        metadata = metadata[key]
    return metadata


@given(_patches, _patches)
def test_leaves_a_patch_does_not_reach_keep_their_stamp(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    before = merge_metadata({}, first, version=1, at=T0)
    after = merge_metadata(before, second, version=2, at=T1)
    state = merge_patch(merge_patch({}, first), second)
    reached = state_leaves(second) if second else set()
    for leaf in state_leaves(state) if state else set():
        if not any(leaf[: len(p)] == p or p[: len(leaf)] == leaf for p in reached):
            assert _stamp_at(after, leaf) == _stamp_at(before, leaf)


# --- JSON Schema ---------------------------------------------------------------------------

THERMOSTAT = {
    "type": "object",
    "properties": {
        "interval_s": {"type": "integer", "minimum": 1},
        "net": {
            "type": "object",
            "properties": {"dns": {"type": "array", "items": {"$ref": "#/$defs/ip"}}},
        },
        "a/b": {"enum": ["x", "y"]},
    },
    "required": ["interval_s"],
    "additionalProperties": False,
    "$defs": {"ip": {"type": "string", "pattern": "^[0-9.]+$"}},
}


def test_json_pointer_escapes() -> None:
    assert json_pointer([]) == ""
    assert json_pointer(["a", 0, "b/c", "d~e"]) == "/a/0/b~1c/d~0e"


def test_a_good_schema_passes() -> None:
    assert check_schema(THERMOSTAT) == []


@pytest.mark.parametrize(
    ("schema", "pointer", "rule"),
    [
        ({"type": "thing"}, "/desired_schema/type", "anyOf"),
        ({"properties": {"x": {"minimum": "1"}}}, "/desired_schema/properties/x/minimum", "type"),
        ({"pattern": "("}, "/desired_schema/pattern", "format"),
        (
            {"properties": {"x": {"$ref": "#/$defs/nope"}}},
            "/desired_schema/properties/x/$ref",
            "$ref",
        ),
        ({"$ref": "https://example.com/s.json"}, "/desired_schema/$ref", "$ref"),
        ([1, 2], "/desired_schema", "type"),
    ],
)
def test_bad_schemas_name_the_failing_place(schema: Any, pointer: str, rule: str) -> None:
    violations = check_schema(schema, where="desired_schema")
    assert (violations[0].pointer, violations[0].rule) == (pointer, rule), violations


def test_valid_document_has_no_violations() -> None:
    assert schema_violations(THERMOSTAT, {"interval_s": 5, "net": {"dns": ["1.1.1.1"]}}) == []


def test_violations_name_pointer_and_rule() -> None:
    violations = schema_violations(
        THERMOSTAT, {"interval_s": 0, "net": {"dns": ["10.0.0.1", "bad!"]}, "a/b": "z", "extra": 1}
    )
    assert [(v.pointer, v.rule) for v in violations] == [
        ("", "additionalProperties"),
        ("/a~1b", "enum"),
        ("/interval_s", "minimum"),
        ("/net/dns/1", "pattern"),
    ]
    assert "minimum of 1" in violations[2].message


def test_required_points_at_the_object_missing_it() -> None:
    assert schema_violations(THERMOSTAT, {}) == [
        SchemaViolation("", "required", "'interval_s' is a required property")
    ]


def test_violations_are_capped() -> None:
    schema = {"additionalProperties": {"type": "integer"}}
    document = {f"k{i:02}": "no" for i in range(40)}
    violations = schema_violations(schema, document)
    assert len(violations) == 10
    assert violations[0].pointer == "/k00"


def test_integer_type_follows_json_not_python() -> None:
    schema = {"properties": {"on": {"type": "boolean"}, "n": {"type": "integer"}}}
    assert schema_violations(schema, {"on": True, "n": 1.0}) == []
    assert [v.pointer for v in schema_violations(schema, {"on": 1, "n": True})] == ["/n", "/on"]
