"""Secrets: operator passwords (argon2), operator JWTs (PyJWT, HS256 pinned), device tokens."""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Literal, cast

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
_ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}

JWT_ALGORITHM = "HS256"
TOKEN_PREFIX = "tok-"  # noqa: S105 - a prefix, not a secret

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


_DUMMY_HASH = _hasher.hash("not a password anybody has")


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whether or not the account exists, so timing reveals no e-mails."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def role_at_least(role: str, minimum: Role) -> bool:
    return role in _ROLE_RANK and _ROLE_RANK[role] >= _ROLE_RANK[minimum]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated operator, as the token says."""

    user_id: int
    email: str
    tenant_id: str
    role: Role


def issue_token(principal: Principal, *, secret: str, ttl_s: int) -> str:
    now = int(time.time())
    claims = {
        "sub": str(principal.user_id),
        "email": principal.email,
        "tenant": principal.tenant_id,
        "role": principal.role,
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


class InvalidToken(Exception):
    pass


def decode_token(token: str, *, secret: str) -> Principal:
    """Validate strictly: pinned algorithm, signature, ``exp`` required, typed claims."""
    return _decode(token, secret)[0]


def _decode(token: str, secret: str) -> tuple[Principal, int]:
    """The principal and the token's expiry (epoch seconds), after :func:`decode_token`'s
    checks."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["exp", "iat", "sub", "tenant", "role", "email"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from exc
    role, tenant, sub, email = claims["role"], claims["tenant"], claims["sub"], claims["email"]
    if role not in _ROLE_RANK or not isinstance(tenant, str) or not isinstance(email, str):
        raise InvalidToken("malformed claims")
    if not isinstance(sub, str) or not sub.isdigit():
        raise InvalidToken("malformed subject")
    principal = Principal(user_id=int(sub), email=email, tenant_id=tenant, role=cast(Role, role))
    return principal, int(claims["exp"])  # PyJWT has checked that it is an integer


VERIFIED_TOKENS_CACHED = 4096


@functools.lru_cache(maxsize=VERIFIED_TOKENS_CACHED)
def _verified(token: str, secret: str) -> tuple[Principal, int]:
    # Only tokens that passed every check are kept (an exception is never cached), keyed by
    # the exact token string and secret: any other string, forged or not, is decoded anew.
    return _decode(token, secret)


def verify_token(token: str, *, secret: str) -> Principal:
    """:func:`decode_token` for the request path: a token that passed once is not decoded
    and its signature not recomputed again while it is cached, but its expiry is still
    checked on every use (as PyJWT does: expired once ``exp <= now``). Nothing else about a
    verified token can change with time (``iat`` and ``nbf`` only ever become more valid)."""
    principal, expires_at = _verified(token, secret)
    if expires_at <= time.time():
        raise InvalidToken("Signature has expired")
    return principal


def new_provision_token() -> str:
    """``tok-`` and 32 random bytes (256 bits), URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_provision_token(token: str) -> bytes:
    """Tokens carry 256 random bits, so a fast unsalted hash is safe and allows lookup by hash."""
    return hashlib.sha256(token.encode()).digest()
