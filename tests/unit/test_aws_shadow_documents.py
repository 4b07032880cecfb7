"""The AWS shadow documents (shared.aws_shadow) and the shadow name rule (shared.ids)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ingest_iot.aws_shadow import RateLimiter
from shared import aws_shadow, twin
from shared.aws_shadow import ShadowError, Snapshot
from shared.ids import is_shadow_name
from shared.topics import parse_aws_request, parse_named_reported

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LIMITS = twin.Limits(max_state_bytes=100, max_depth=4)


@pytest.mark.parametrize("name", ["a", "A-b_c:1", "x" * 64])
def test_shadow_names_by_the_aws_rule(name: str) -> None:
    assert is_shadow_name(name)


@pytest.mark.parametrize("name", ["", "x" * 65, "a.b", "a/b", "a b", "é", "a\n", "+", "#"])
def test_not_shadow_names(name: str) -> None:
    assert not is_shadow_name(name)


def test_topics_parse_only_their_own_shapes() -> None:
    assert parse_aws_request("$aws/things/d1/shadow/get") == ("d1", "", "get")
    assert parse_aws_request("$aws/things/d1/shadow/name/cfg/update") == ("d1", "cfg", "update")
    assert parse_aws_request("$aws/things/d1/shadow/update/accepted") is None
    assert parse_aws_request("$aws/things/d1/shadow/name//get") is None
    assert parse_named_reported("tenant/t/device/d/shadow/name/n/reported") == ("t", "d", "n")
    assert parse_named_reported("tenant/t/device/d/shadow/reported") is None


@pytest.mark.parametrize(
    ("document", "code", "message"),
    [
        ([], 400, "Invalid JSON"),
        ({}, 400, "Missing required node: state"),
        ({"state": 1}, 400, "State node must be an object"),
        ({"state": {"desired": []}}, 400, "Desired node must be an object"),
        ({"state": {"reported": "x"}}, 400, "Reported node must be an object"),
        ({"state": {"delta": {}}}, 400, "State contains an invalid node"),
        ({"state": {}, "version": -1}, 400, "Invalid version"),
        ({"state": {}, "version": True}, 400, "Invalid version"),
        ({"state": {}, "other": 1}, 400, "Unexpected top-level node: other"),
        ({"state": {}, "clientToken": "é" * 33}, 400, "Invalid clientToken"),  # 66 bytes
        ({"state": {"reported": {"a": "x" * 100}}}, 413, "exceeds the maximum size"),
        ({"state": {"reported": {"a": {"b": {"c": {"d": {}}}}}}}, 400, "levels of nesting"),
    ],
)
def test_bad_updates(document: object, code: int, message: str) -> None:
    with pytest.raises(ShadowError) as caught:
        aws_shadow.parse_update(document, LIMITS)
    assert caught.value.code == code and message in caught.value.message


def test_an_update_and_its_answers() -> None:
    request = aws_shadow.parse_update(
        {"state": {"desired": None, "reported": {"a": {"b": 1}}}, "clientToken": "t", "version": 3},
        LIMITS,
    )
    assert request.clear_desired and request.reported == {"a": {"b": 1}} and request.version == 3
    meta = twin.merge_metadata({}, {"a": {"b": 1}}, version=1, at=AT)
    after = Snapshot({"a": {"b": 2}}, {"a": {"b": 1}}, meta, meta, 4)
    accepted = aws_shadow.update_accepted(request, after, at=AT)
    assert accepted == {
        "state": {"desired": None, "reported": {"a": {"b": 1}}},
        "metadata": {
            "desired": {"timestamp": 1767323045},
            "reported": {"a": {"b": {"timestamp": 1767323045}}},
        },
        "version": 4,
        "timestamp": 1767323045,
        "clientToken": "t",
    }
    assert aws_shadow.delta_message(after, at=AT) == {
        "state": {"a": {"b": 2}},
        "metadata": {"a": {"b": {"timestamp": 1767323045}}},
        "version": 4,
        "timestamp": 1767323045,
    }
    got = aws_shadow.get_accepted(after, at=AT, token=None)
    assert got["state"]["delta"] == {"a": {"b": 2}} and "clientToken" not in got
    error = aws_shadow.error_body(ShadowError(409, "Version conflict", "t"), at=AT)
    assert error == {
        "code": 409,
        "message": "Version conflict",
        "timestamp": 1767323045,
        "clientToken": "t",
    }


def test_rate_limit_per_thing_per_second() -> None:
    limiter = RateLimiter(2)
    assert limiter.allow("a", 0.0) and limiter.allow("a", 0.1)
    assert not limiter.allow("a", 0.2)
    assert limiter.allow("b", 0.2)  # another thing has its own budget
    assert limiter.allow("a", 1.05)  # the first request left the window


def test_named_shadow_events_carry_the_name() -> None:
    from datetime import timedelta

    from shared.services.events import _frame

    row = {
        "seq": 7,
        "kind": "shadow",
        "shadow": "cfg",
        "device_id": "d1",
        "desired_version": 2,
        "reported_version": 1,
        "last_seen": AT,
        "at": AT,
    }
    frame = _frame(row, stale_after=timedelta(hours=1))  # type: ignore[arg-type]
    assert frame.startswith(b"id: 7\nevent: shadow\ndata: ")
    assert b'"shadow":"cfg"' in frame and b'"sync_status":"pending"' in frame
    deleted = _frame({**row, "desired_version": -1}, stale_after=timedelta(hours=1))  # type: ignore[arg-type]
    assert b'"deleted":true' in deleted and b'"desired_version":0' in deleted
