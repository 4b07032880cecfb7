"""Secrets: operator passwords (argon2), operator JWTs (PyJWT, HS256 pinned), device tokens."""

from __future__ import annotations

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
    return Principal(user_id=int(sub), email=email, tenant_id=tenant, role=cast(Role, role))


def new_provision_token() -> str:
    """``tok-`` and 32 random bytes (256 bits), URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_provision_token(token: str) -> bytes:
    """Tokens carry 256 random bits, so a fast unsalted hash is safe and allows lookup by hash."""
    return hashlib.sha256(token.encode()).digest()
