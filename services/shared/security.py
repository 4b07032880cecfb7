"""Secrets: operator passwords (argon2), operator JWTs (PyJWT, HS256 pinned), device tokens."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
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


# argon2 takes tens of milliseconds of CPU and 64 MiB per hash: on the event loop one sign-in
# would stall every other request of the process. argon2-cffi releases the GIL, so a small
# pool of threads runs them beside the loop, and bounds how many run (and how much memory
# they take) at once; the rest wait their turn.
PASSWORD_HASHING_THREADS = 2
_password_pool = ThreadPoolExecutor(
    max_workers=PASSWORD_HASHING_THREADS, thread_name_prefix="argon2"
)


async def verify_password_off_loop(password_hash: str | None, password: str) -> bool:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_password_pool, verify_password, password_hash, password)


async def hash_password_off_loop(password: str) -> str:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_password_pool, hash_password, password)


def role_at_least(role: str, minimum: Role) -> bool:
    return role in _ROLE_RANK and _ROLE_RANK[role] >= _ROLE_RANK[minimum]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated operator, as the token says."""

    user_id: int
    email: str
    tenant_id: str
    role: Role
    # The user's token_version when the token was issued: a token whose version is not the
    # user's current one has been revoked (password changed, signed out everywhere).
    version: int = 0


@dataclass(frozen=True, slots=True)
class KeyRing:
    """``IOTCLOUD_JWT_SECRET`` as keys: comma-separated, the first signs, every one verifies.

    Each key is named in the token's ``kid`` header by a digest of it, so a verifier picks
    the one key to try and a rotated-out key can be dropped once its tokens have expired.
    """

    signing_kid: str
    keys: dict[str, str]


def key_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def key_ring(secret: str) -> KeyRing:
    keys = [part.strip() for part in secret.split(",") if part.strip()]
    if not keys:
        raise ValueError("the JWT secret holds no key")
    return KeyRing(signing_kid=key_id(keys[0]), keys={key_id(key): key for key in keys})


def issue_token(principal: Principal, *, secret: str, ttl_s: int) -> str:
    now = int(time.time())
    claims = {
        "sub": str(principal.user_id),
        "email": principal.email,
        "tenant": principal.tenant_id,
        "role": principal.role,
        "ver": principal.version,
        "iat": now,
        "exp": now + ttl_s,
    }
    ring = key_ring(secret)
    return jwt.encode(
        claims,
        ring.keys[ring.signing_kid],
        algorithm=JWT_ALGORITHM,
        headers={"kid": ring.signing_kid},
    )


class InvalidToken(Exception):
    pass


def decode_token(token: str, *, secret: str) -> Principal:
    """Validate strictly: pinned algorithm, signature, ``exp`` required, typed claims."""
    return _decode(token, secret)[0]


def _decode(token: str, secret: str) -> tuple[Principal, int]:
    """The principal and the token's expiry (epoch seconds), after :func:`decode_token`'s
    checks."""
    ring = key_ring(secret)
    try:
        kid = jwt.get_unverified_header(token).get("kid", ring.signing_kid)
        key = ring.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise InvalidToken("unknown signing key")
        claims = jwt.decode(
            token,
            key,
            algorithms=[JWT_ALGORITHM],
            options={"require": ["exp", "iat", "sub", "tenant", "role", "email"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from exc
    role, tenant, sub, email = claims["role"], claims["tenant"], claims["sub"], claims["email"]
    # Tokens issued before versions existed stand for version 0, every user's first.
    version = claims.get("ver", 0)
    if role not in _ROLE_RANK or not isinstance(tenant, str) or not isinstance(email, str):
        raise InvalidToken("malformed claims")
    if not isinstance(sub, str) or not sub.isdigit():
        raise InvalidToken("malformed subject")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidToken("malformed version")
    principal = Principal(
        user_id=int(sub), email=email, tenant_id=tenant, role=cast(Role, role), version=version
    )
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
