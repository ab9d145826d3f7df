"""Domain exceptions and the one place that maps them (and FastAPI's own errors) to HTTP.

Every error answers ``{"error": {"code", "message", "param"}}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from twofold.core.configs import ConfigError
from twofold.store.artifacts import ArtifactPathError
from twofold.store.flows import TransitionError

log = logging.getLogger(__name__)


class DomainError(Exception):
    """Base of the API's domain errors: a message for people and the offending field (``param``)."""

    def __init__(
        self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers


class InvalidRequest(DomainError):
    """The request is malformed in a way validation does not cover."""


class Unauthenticated(DomainError):
    """No API key, or one that is unknown or revoked."""


class Forbidden(DomainError):
    """The key is valid but may not do this."""


class NotFound(DomainError):
    """The object does not exist for this tenant (another tenant's objects do not exist either)."""


class Conflict(DomainError):
    """The object is in a state that forbids this (cancel a finished job, reuse an idempotency key)."""


class PayloadTooLarge(DomainError):
    """The request body is over the configured limit."""


class ValidationFailed(DomainError):
    """A field or an uploaded line is invalid; ``param`` names it."""


class RateLimited(DomainError):
    """Too many requests for this key; ``Retry-After`` says when to come back."""


class Unavailable(DomainError):
    """A dependency (database, broker, optional module) is not available."""


# The one mapping from domain errors to HTTP status and error code.
HTTP_ERRORS: dict[type[Exception], tuple[int, str]] = {
    InvalidRequest: (400, "invalid_request"),
    Unauthenticated: (401, "unauthenticated"),
    Forbidden: (403, "forbidden"),
    NotFound: (404, "not_found"),
    Conflict: (409, "conflict"),
    TransitionError: (409, "conflict"),
    PayloadTooLarge: (413, "payload_too_large"),
    ValidationFailed: (422, "validation_error"),
    ConfigError: (422, "validation_error"),
    RateLimited: (429, "rate_limited"),
    Unavailable: (503, "unavailable"),
    ArtifactPathError: (404, "not_found"),
}
_STATUS_CODES = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The error object every failure answers with."""
    return {"error": {"code": code, "message": message, "param": param}}


def error_response(
    status: int, code: str, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON error response."""
    return JSONResponse(error_body(code, message, param), status_code=status, headers=headers)


def _domain(_: Request, exc: Exception) -> JSONResponse:
    status, code = next(v for k, v in HTTP_ERRORS.items() if isinstance(exc, k))
    if isinstance(exc, DomainError):
        return error_response(status, code, exc.message, exc.param, exc.headers)
    if isinstance(exc, ConfigError):
        return error_response(status, code, exc.message, exc.param)
    if isinstance(exc, ArtifactPathError):
        return error_response(status, code, "artifact not found")
    return error_response(status, code, str(exc))


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts) or None


def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    message = str(first.get("msg", "invalid request"))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_response(422, "validation_error", message, _param(tuple(first.get("loc", ()))))


def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(
        exc.status_code, "internal_error" if exc.status_code >= 500 else "invalid_request"
    )
    message = str(exc.detail) if exc.detail else code.replace("_", " ")
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = "no such route"
    return error_response(
        exc.status_code, code, message, getattr(exc, "param", None), headers=getattr(exc, "headers", None)
    )


def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal error; the server log has the details")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the one error body."""
    for exc_type in HTTP_ERRORS:
        app.add_exception_handler(exc_type, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
