"""The id rules (shared.ids): whole-string matches, in both the Python and schema forms."""

from __future__ import annotations

import re

import pytest

from shared import ids


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (ids.is_tenant_id, ["acme", "a", "0-x", "a" * 63], ["", "-a", "A", "a" * 64, "a_b"]),
        (
            ids.is_device_id,
            ["d", "Sensor-1", "a.b:c_d-e", "x" * 128],
            ["", ".a", "a/b", "a+b", "a#b", "x" * 129, "a b"],
        ),
        (ids.is_tag_key, ["site", "k8s/zone", "a.b_c-d"], ["", "/a", "a:b", "k" * 65]),
    ],
)
def test_ids_accept_the_rule_and_nothing_around_it(
    check: object, good: list[str], bad: list[str]
) -> None:
    assert callable(check)
    for value in good:
        assert check(value), value
    for value in bad:
        assert not check(value), value
    # What Python's "$" would let through, and what PostgreSQL or MQTT cannot carry.
    for value in good:
        for suffix in ("\n", "\r\n", "\x00", "\u00e9", "\u0661", "\u200b"):
            assert not check(value + suffix), repr(value + suffix)
        assert not check("\n" + value), repr(value)
        assert not check(value[:1] + "\x00" + value[1:]), repr(value)


def test_the_schema_patterns_are_the_same_rules() -> None:
    for pattern, check in (
        (ids.TENANT_ID_PATTERN, ids.is_tenant_id),
        (ids.DEVICE_ID_PATTERN, ids.is_device_id),
        (ids.MODEL_ID_PATTERN, ids.is_model_id),
    ):
        assert pattern.startswith("^") and pattern.endswith("$")
        for value in ("acme", "Sensor-1", "a.b", "-x", "", "x" * 200):
            # fullmatch: "$" in JSON Schema's dialects means the end of the text.
            assert (re.fullmatch(pattern[1:-1], value) is not None) == check(value), value


def test_bigint_ids() -> None:
    assert ids.parse_bigint_id("0") == 0
    assert ids.parse_bigint_id("9223372036854775807") == 2**63 - 1
    for bad in ("", "-1", "+1", " 1", "1\n", "\u00b2", "\u0661", "9223372036854775808", "1e3"):
        assert ids.parse_bigint_id(bad) is None, repr(bad)
    assert ids.parse_bigint_id("9" * 19) is None
    assert ids.parse_bigint_id("1" * 20) is None
