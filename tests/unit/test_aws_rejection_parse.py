"""``state.rejected`` on an AWS update (SPEC §11): parsed with the twin's rule, echoed on
``update/accepted``; anything else is AWS's 400."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared import aws_shadow, twin
from shared.aws_shadow import ShadowError

LIMITS = twin.Limits(max_state_bytes=100, max_depth=4)


def test_a_rejection_is_parsed_and_echoed() -> None:
    request = aws_shadow.parse_update(
        {"state": {"rejected": {"code": "E1", "message": "no"}, "reported": {"a": 1}}}, LIMITS
    )
    assert request.rejected == twin.Rejection("E1", "no")
    assert request.reported == {"a": 1} and request.desired is None
    after = aws_shadow.Snapshot({}, {"a": 1}, {}, {}, 3)
    body = aws_shadow.update_accepted(request, after, at=datetime(2026, 1, 1, tzinfo=UTC))
    assert body["state"] == {"reported": {"a": 1}, "rejected": {"code": "E1", "message": "no"}}
    assert aws_shadow.parse_update({"state": {"rejected": None}}, LIMITS).rejected is None


@pytest.mark.parametrize(
    "state",
    [
        {"rejected": {"code": 1, "message": "x"}, "desired": {"a": 1}},
        {"rejected": {"code": 1, "message": "x"}, "desired": None},
        {"rejected": "no"},
        {"rejected": {"code": True}},
        {"rejected": {"code": ""}},
        {"rejected": {"code": 1, "message": "x", "extra": 1}},
        {"rejected": {"code": 1, "message": "m" * 1001}},
    ],
)
def test_bad_rejections_are_400(state: dict[str, object]) -> None:
    with pytest.raises(ShadowError) as raised:
        aws_shadow.parse_update({"state": state, "clientToken": "t"}, LIMITS)
    assert raised.value.code == 400 and raised.value.client_token == "t"
