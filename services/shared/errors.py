"""Domain errors carry their HTTP status; one handler per app renders them."""

from __future__ import annotations

from typing import Any


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
