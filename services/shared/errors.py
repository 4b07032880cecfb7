"""Domain errors carry their HTTP status; one handler per app renders them."""

from __future__ import annotations

from typing import Any

from shared.twin import Refusal


class DomainError(Exception):
    status_code = 400

    def __init__(self, detail: Any) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    status_code = 409


class PreconditionFailed(DomainError):
    status_code = 412


class TooLarge(DomainError):
    status_code = 413


class Unprocessable(DomainError):
    status_code = 422


class Unauthorized(DomainError):
    status_code = 401


class Forbidden(DomainError):
    status_code = 403


class ServiceUnavailable(DomainError):
    status_code = 503


_REFUSAL_ERRORS: dict[str, type[DomainError]] = {
    "malformed": Unprocessable,
    "too_large": TooLarge,
    "schema": Unprocessable,
    "precondition": PreconditionFailed,
    "version": Conflict,
}


def refusal_error(refusal: Refusal) -> DomainError:
    """The HTTP error of a refused twin write: the one place a refusal gets its status."""
    detail = refusal.detail if refusal.detail is not None else refusal.message
    return _REFUSAL_ERRORS[refusal.kind](detail)


def raise_if_refused(refusal: Refusal | None) -> None:
    if refusal is not None:
        raise refusal_error(refusal)
