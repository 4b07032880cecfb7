"""The checks of bulk provisioning that need no database: batch entries and CSV rows."""

from __future__ import annotations

import pytest

from iotcloud.importing import ImportRefused, parse_rows, parse_tags
from shared.errors import Conflict, Unprocessable
from shared.services.device_batches import (
    MAX_BATCH,
    DeviceSpec,
    check_batch,
    duplicate_entries,
    spec_problems,
)


@pytest.mark.parametrize("device_id", ["a", "A.b_c:d-1", "x" * 128, "0"])
def test_valid_ids_pass(device_id: str) -> None:
    assert spec_problems(DeviceSpec(device_id=device_id)) == []


@pytest.mark.parametrize(
    "device_id",
    ["", "abc\n", "\nabc", "a/b", "a+b", "a#b", "a\x00b", "-a", "x" * 129, "é", "a b"],
)
def test_invalid_ids_fail(device_id: str) -> None:
    assert any("device_id must match" in p for p in spec_problems(DeviceSpec(device_id=device_id)))


def test_tags_name_and_model_follow_the_patch_rules() -> None:
    assert spec_problems(DeviceSpec(tags={"site": "lyon", "a/b.c-d": ""})) == []
    assert spec_problems(DeviceSpec(tags={"a:b": "x"}))[0].startswith("tag key 'a:b'")
    assert spec_problems(DeviceSpec(tags={"key\n": "x"}))[0].startswith("tag key")
    assert "at most 256" in spec_problems(DeviceSpec(tags={"k": "v" * 257}))[0]
    assert "at most 64 tags" in spec_problems(DeviceSpec(tags={f"k{i}": "" for i in range(65)}))[0]
    assert "NUL" in spec_problems(DeviceSpec(tags={"k": "a\x00"}))[0]
    assert "name must be" in spec_problems(DeviceSpec(name="n" * 201))[0]
    assert "not a model id" in spec_problems(DeviceSpec(model_id="m/1"))[0]


def test_batch_size_entries_and_duplicates() -> None:
    for size in (0, MAX_BATCH + 1):
        with pytest.raises(Unprocessable):
            check_batch([DeviceSpec()] * size)
    check_batch([DeviceSpec()] * MAX_BATCH)  # ids to be generated are never duplicates
    with pytest.raises(Unprocessable) as invalid:
        check_batch([DeviceSpec(device_id="ok"), DeviceSpec(device_id="a/b"), DeviceSpec()])
    assert [e["index"] for e in invalid.value.detail["errors"]] == [1]
    specs = [DeviceSpec(device_id=i) for i in ("a", "b", "a", "c", "b", "a")]
    assert [(d.index, d.device_id) for d in duplicate_entries(specs)] == [
        (2, "a"),
        (4, "b"),
        (5, "a"),
    ]
    with pytest.raises(Conflict) as conflict:
        check_batch(specs)
    assert [c["index"] for c in conflict.value.detail["conflicts"]] == [2, 4, 5]


def test_tags_column() -> None:
    assert parse_tags("") == {}
    assert parse_tags("site=lyon;floor=2;") == {"site": "lyon", "floor": "2"}
    assert parse_tags("note=a=b") == {"note": "a=b"}
    assert parse_tags("k=") == {"k": ""}
    for bad in ("site", "=v", "k=1;k=2"):
        with pytest.raises(ValueError, match="tag"):
            parse_tags(bad)


def test_rows_are_checked_with_line_numbers() -> None:
    rows = parse_rows(iter(["device_id,name,tags\n", "a,A,k=v\n", "\n", 'b,"B, b",\n']))
    assert [(row.line, row.spec) for row in rows] == [
        (2, DeviceSpec(device_id="a", name="A", tags={"k": "v"})),
        (4, DeviceSpec(device_id="b", name="B, b", tags={})),
    ]
    with pytest.raises(ImportRefused) as refused:
        parse_rows(iter(["device_id,name,tags\n", "a,,\n", "a/b,,\n", "a,,x\n", "c,,,\n"]))
    assert refused.value.errors == [
        "line 3: device_id must match [A-Za-z0-9][A-Za-z0-9._:-]{0,127} (no '/', '+' or '#')",
        "line 4: tag 'x' is not key=value",
        "line 5: 4 fields, expected 3",
    ]
    for lines, message in (
        ([], "line 1: the file is empty"),
        (["id,name\n"], "line 1: the header must be"),
        (["device_id,name,tags\n"], "the file has no devices"),
        (["device_id,name,tags\n", 'a,"unterminated\n'], "line 2"),
    ):
        with pytest.raises(ImportRefused) as empty:
            parse_rows(iter(lines))
        assert message in str(empty.value), (lines, str(empty.value))
