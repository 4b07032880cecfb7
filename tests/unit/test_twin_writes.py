"""The pure write sequence (shared.twin.apply_desired / apply_report) and NUL detection."""

from __future__ import annotations

from datetime import UTC, datetime

from shared import twin
from shared.errors import Conflict, PreconditionFailed, TooLarge, Unprocessable, refusal_error

AT = datetime(2026, 1, 1, tzinfo=UTC)
LIMITS = twin.Limits(max_state_bytes=60, max_depth=3)
EMPTY = twin.Side({}, {}, 0)


def test_apply_desired_writes_version_metadata_and_history() -> None:
    first = twin.apply_desired(EMPTY, {"a": 1, "n": {"b": 2}}, limits=LIMITS, at=AT)
    assert isinstance(first, twin.Written)
    assert first.side.state == {"a": 1, "n": {"b": 2}} and first.side.version == 1
    assert first.side.metadata == {
        "a": {"updated_at": AT.isoformat(), "version": 1},
        "n": {"b": {"updated_at": AT.isoformat(), "version": 1}},
    }
    assert first.history == twin.HistoryEntry("desired", 1, {"a": 1, "n": {"b": 2}}, AT)
    second = twin.apply_desired(first.side, {"a": None}, limits=LIMITS, at=AT, if_match=1)
    assert isinstance(second, twin.Written)
    assert second.side.state == {"n": {"b": 2}} and second.side.version == 2
    assert "a" not in second.side.metadata


def test_apply_desired_refusals_in_order_and_their_statuses() -> None:
    side = twin.Side({"a": 1}, {}, 4)
    stale = twin.apply_desired(side, {"x": "y" * 100}, limits=LIMITS, at=AT, if_match=3)
    assert isinstance(stale, twin.Refusal) and stale.kind == "precondition"
    assert isinstance(refusal_error(stale), PreconditionFailed)
    big = twin.apply_desired(side, {"x": "y" * 100}, limits=LIMITS, at=AT)
    assert isinstance(big, twin.Refusal) and big.kind == "too_large"
    assert "desired patch" in big.message and isinstance(refusal_error(big), TooLarge)
    deep = twin.apply_desired(side, {"x": {"y": {"z": {}}}}, limits=LIMITS, at=AT)
    assert isinstance(deep, twin.Refusal) and deep.kind == "malformed"
    assert isinstance(refusal_error(deep), Unprocessable)
    filled = twin.Side({"pad": "p" * 40}, {}, 4)
    merged = twin.apply_desired(filled, {"more": "m" * 20}, limits=LIMITS, at=AT)
    assert isinstance(merged, twin.Refusal) and "desired state" in merged.message
    model = twin.ModelSchema("m", {"properties": {"a": {"type": "string"}}})
    schema = twin.apply_desired(side, {"b": 2}, limits=LIMITS, at=AT, model=model)
    assert isinstance(schema, twin.Refusal) and schema.kind == "schema"
    error = refusal_error(schema)
    assert isinstance(error, Unprocessable)
    assert error.detail["model_id"] == "m" and error.detail["errors"][0]["pointer"] == "/a"


def test_apply_report_version_rule_merge_and_schema_flags() -> None:
    report = twin.Report({"t": 1}, 1)
    assert twin.apply_report(EMPTY, 0, report, limits=LIMITS, at=AT) == twin.Refusal(
        "version", "unknown version 1: desired version is only 0"
    )
    written = twin.apply_report(
        EMPTY, 2, report, limits=LIMITS, at=AT, schema={"properties": {"t": {"type": "string"}}}
    )
    assert isinstance(written, twin.Written)
    assert written.side == twin.Side(
        {"t": 1}, {"t": {"updated_at": AT.isoformat(), "version": 1}}, 1
    )
    assert written.history == twin.HistoryEntry("reported", 1, {"t": 1}, AT)
    assert [v.pointer for v in written.schema_violations] == ["/t"]
    stale = twin.apply_report(written.side, 2, twin.Report({}, 0), limits=LIMITS, at=AT)
    assert isinstance(stale, twin.Refusal) and stale.kind == "version"
    assert isinstance(refusal_error(stale), Conflict)
    again = twin.apply_report(written.side, 2, twin.Report({"u": None}, 1), limits=LIMITS, at=AT)
    assert isinstance(again, twin.Written) and again.side.version == 1


def test_parse_report() -> None:
    assert twin.parse_report({"reported": {}, "version": 0, "clientToken": "c"}, LIMITS) == (
        twin.Report({}, 0, "c")
    )
    for bad in ([], {"reported": 1, "version": 0}, {"reported": {}, "version": True}):
        refused = twin.parse_report(bad, LIMITS)
        assert isinstance(refused, twin.Refusal) and refused.kind == "malformed", bad
    assert twin.parse_report({"reported": {}, "version": 0, "clientToken": "c" * 65}, LIMITS) == (
        twin.Refusal("malformed", "'clientToken' must be a string of at most 64 characters")
    )


def test_a_report_not_newer_by_seq_is_superseded_never_applied() -> None:
    side = twin.Side({"n": 5}, {}, 1)
    for seq in (5, 4, 0):  # the same state again, or an older one, arriving late
        older = twin.Report({"n": seq}, 1, seq=seq)
        result = twin.apply_report(side, 2, older, limits=LIMITS, at=AT, last_seq=5)
        assert result == twin.Superseded(1), seq
    # Superseded wins over the version rule: a late report of an old version is no error.
    late = twin.Report({"n": 3}, 0, seq=3)
    assert twin.apply_report(side, 2, late, limits=LIMITS, at=AT, last_seq=5) == (
        twin.Superseded(1)
    )
    newer = twin.apply_report(
        side, 2, twin.Report({"n": 6}, 2, seq=6), limits=LIMITS, at=AT, last_seq=5
    )
    assert isinstance(newer, twin.Written) and newer.side.state == {"n": 6}
    # Without a seq on either side, the version rule alone decides, as before.
    for report, last in ((twin.Report({"n": 1}, 1), 5), (twin.Report({"n": 1}, 1, seq=1), None)):
        applied = twin.apply_report(side, 2, report, limits=LIMITS, at=AT, last_seq=last)
        assert isinstance(applied, twin.Written)


def test_parse_report_seq() -> None:
    body = {"reported": {}, "version": 0, "seq": 7}
    assert twin.parse_report(body, LIMITS) == twin.Report({}, 0, None, 7)
    for bad in (True, -1, 1.5, "7", 2**63):
        refused = twin.parse_report({**body, "seq": bad}, LIMITS)
        assert refused == twin.Refusal(
            "malformed", "'seq' must be a non-negative 64-bit integer"
        ), bad


def test_nul_anywhere_is_found_with_its_pointer() -> None:
    assert twin.nul_pointer({"a": ["x", {"b": "ok"}], "c": 1}) is None
    assert twin.nul_pointer({"a": ["x", {"b": "o\x00k"}]}) == "/a/1/b"
    assert twin.nul_pointer({"a/\x00": 1}) == "/a~1\x00"
    assert twin.nul_pointer("\x00") == ""
    raw = b'{"k": "\\\\u0000"}'  # an escaped backslash, then "u0000": no NUL
    assert twin.nul_refusal_in_json(raw, {"k": "\\u0000"}) is None
    refused = twin.nul_refusal_in_json(b'{"k": "\\u0000"}', {"k": "\x00"})
    assert refused is not None and refused.kind == "malformed" and "'/k'" in refused.message
