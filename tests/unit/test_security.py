"""Operator JWTs: strict validation, and the verified-token cache of the request path."""

from __future__ import annotations

import time

import jwt
import pytest

from shared.security import InvalidToken, Principal, decode_token, issue_token, verify_token

SECRET = "s" * 64
WHO = Principal(user_id=7, email="op@t.test", tenant_id="t", role="operator")


def claims_of(token: str) -> dict[str, object]:
    decoded: dict[str, object] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def test_a_cached_token_is_the_only_string_it_vouches_for() -> None:
    good = issue_token(WHO, secret=SECRET, ttl_s=600)
    assert verify_token(good, secret=SECRET) == WHO
    assert verify_token(good, secret=SECRET) == WHO  # from the cache
    claims = claims_of(good)
    header, _, signature = good.split(".")
    admin_payload = jwt.encode({**claims, "role": "admin"}, "x" * 48).split(".")[1]
    refused = {
        "alg none": jwt.encode(claims, key=None, algorithm="none"),
        "other key": jwt.encode(claims, "k" * 48, algorithm="HS256"),
        "HS512": jwt.encode(claims, SECRET, algorithm="HS512"),
        "signature cut": good[:-2],
        "payload swapped": f"{header}.{admin_payload}.{signature}",
        "expired": jwt.encode({**claims, "exp": int(time.time()) - 1}, SECRET),
        "no exp": jwt.encode({k: v for k, v in claims.items() if k != "exp"}, SECRET),
        "bad role": jwt.encode({**claims, "role": "root"}, SECRET),
        "numeric tenant": jwt.encode({**claims, "tenant": 5}, SECRET),
        "subject not a number": jwt.encode({**claims, "sub": "me"}, SECRET),
    }
    for token in refused.values():
        with pytest.raises(InvalidToken):
            verify_token(token, secret=SECRET)
        with pytest.raises(InvalidToken):
            decode_token(token, secret=SECRET)
    # The same string under another secret (another service's) is decoded anew: refused.
    with pytest.raises(InvalidToken):
        verify_token(good, secret="o" * 48)
    assert verify_token(good, secret=SECRET) == WHO


def test_a_cached_token_still_expires() -> None:
    token = issue_token(WHO, secret=SECRET, ttl_s=1)
    assert verify_token(token, secret=SECRET) == WHO
    expires_at = int(claims_of(token)["exp"])  # type: ignore[call-overload]
    while time.time() < expires_at:
        time.sleep(0.05)
    with pytest.raises(InvalidToken):
        verify_token(token, secret=SECRET)
    with pytest.raises(InvalidToken):
        decode_token(token, secret=SECRET)
