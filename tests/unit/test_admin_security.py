"""Key rotation (``kid``, several keys) and the RE2 patterns of model schemas, without
services."""

from __future__ import annotations

import time

import jwt
import pytest

from shared import safe_regex
from shared.security import InvalidToken, Principal, decode_token, issue_token, key_id, key_ring

OLD, NEW = "o" * 40, "n" * 40
WHO = Principal(user_id=3, email="a@t.test", tenant_id="t", role="admin", version=2)


def test_the_first_key_signs_and_every_key_verifies() -> None:
    ring = key_ring(f" {NEW} , {OLD} ")
    assert ring.signing_kid == key_id(NEW) and set(ring.keys) == {key_id(NEW), key_id(OLD)}
    old_token = issue_token(WHO, secret=OLD, ttl_s=60)
    new_token = issue_token(WHO, secret=f"{NEW},{OLD}", ttl_s=60)
    assert jwt.get_unverified_header(new_token)["kid"] == key_id(NEW)
    for token in (old_token, new_token):
        assert decode_token(token, secret=f"{NEW},{OLD}") == WHO
    assert decode_token(new_token, secret=NEW) == WHO
    with pytest.raises(InvalidToken):
        decode_token(old_token, secret=NEW)  # the old key is gone
    claims = jwt.decode(new_token, options={"verify_signature": False})
    refused = [
        # The kid of a key we hold, signed by another key.
        jwt.encode(claims, "x" * 40, algorithm="HS256", headers={"kid": key_id(NEW)}),
        jwt.encode(claims, NEW, algorithm="HS256", headers={"kid": "unknown"}),
        jwt.encode({**claims, "ver": "2"}, NEW, algorithm="HS256"),
        jwt.encode({**claims, "ver": True}, NEW, algorithm="HS256"),
    ]
    for token in refused:
        with pytest.raises(InvalidToken):
            decode_token(token, secret=f"{NEW},{OLD}")


def test_a_token_from_before_versions_is_version_zero() -> None:
    now = int(time.time())
    claims = {"sub": "3", "email": "a@t.test", "tenant": "t", "role": "admin"}
    token = jwt.encode({**claims, "iat": now, "exp": now + 60}, NEW, algorithm="HS256")
    assert decode_token(token, secret=f"{NEW},{OLD}").version == 0


def test_patterns_run_by_re2_in_linear_time() -> None:
    started = time.monotonic()
    assert not safe_regex.search("^(a+)+$", "a" * 100_000 + "b")
    assert time.monotonic() - started < 1.0
    assert safe_regex.search("^(a+)+$", "aaa")
    for pattern in ("(?=a)", "(a)\\1", "(?<!x)y", "(", "a" * 1001):
        with pytest.raises(safe_regex.PatternError):
            safe_regex.compile_pattern(pattern)
    validator = safe_regex.SafeValidator(
        {
            "properties": {"s": {"pattern": "^x"}},
            "patternProperties": {"^n_": {"type": "integer"}},
            "additionalProperties": False,
        }
    )
    assert validator.is_valid({"s": "xy", "n_1": 1})
    errors = sorted(e.validator for e in validator.iter_errors({"s": "y", "n_1": "a", "z": 1}))
    assert errors == ["additionalProperties", "pattern", "type"]
