"""One error tree for everything the client raises.

``TwofoldError`` > ``APIError`` > ``APIStatusError`` (one subclass per HTTP status family) and
``APIConnectionError`` > ``APITimeoutError``. Catch ``APIError`` for "the call did not work".
"""

from __future__ import annotations

from typing import Any

import httpx


class TwofoldError(Exception):
    """Base class of every error this package raises."""


class APIError(TwofoldError):
    """A request to the twofold API did not succeed.

    Attributes:
        message: human-readable text (the server's ``error.message`` when it sent one).
        request: the ``httpx.Request`` that failed.
        body: the decoded JSON error body, or None.
    """

    def __init__(self, message: str, *, request: httpx.Request, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request
        self.body = body


class APIStatusError(APIError):
    """The server answered with a 4xx or 5xx status.

    Attributes:
        status_code: the HTTP status.
        code: the stable ``error.code`` (``not_found``, ``validation_error``, ...), or None.
        param: the offending field (``rl.batch_size``, ``line 7``), or None.
        response: the ``httpx.Response``.
    """

    def __init__(self, message: str, *, response: httpx.Response, body: Any = None) -> None:
        super().__init__(message, request=response.request, body=body)
        self.response = response
        self.status_code = response.status_code
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        self.code: str | None = error.get("code")
        self.param: str | None = error.get("param")

    def __str__(self) -> str:
        text = f"{self.status_code} {self.code or 'error'}: {self.message}"
        return f"{text} (param: {self.param})" if self.param else text


class BadRequestError(APIStatusError):
    """400: the request is malformed (``invalid_request``)."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing or wrong (``unauthenticated``)."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this (``forbidden``)."""


class NotFoundError(APIStatusError):
    """404: no such object for this tenant (``not_found``)."""


class ConflictError(APIStatusError):
    """409: the object is in the wrong state, or an Idempotency-Key was reused with another body."""


class PayloadTooLargeError(APIStatusError):
    """413: the upload is over the server's size limit (``payload_too_large``)."""


class UnprocessableEntityError(APIStatusError):
    """422: the body failed validation; ``param`` names the field or ``line N`` (``validation_error``)."""


class RateLimitError(APIStatusError):
    """429: too many requests for this key (``rate_limited``); retried automatically first."""


class InternalServerError(APIStatusError):
    """5xx: the server failed or is unavailable; retried automatically first."""


class APIConnectionError(APIError):
    """The server could not be reached, or the connection broke."""

    def __init__(self, *, request: httpx.Request, message: str = "Connection error.") -> None:
        super().__init__(message, request=request)


class APITimeoutError(APIConnectionError):
    """The request timed out."""

    def __init__(self, *, request: httpx.Request) -> None:
        super().__init__(request=request, message="Request timed out.")


class JobWaitTimeout(TwofoldError, TimeoutError):
    """``jobs.wait`` gave up before the job finished; ``job`` is the last state seen."""

    def __init__(self, message: str, *, job: Any) -> None:
        super().__init__(message)
        self.job = job


class UnsafeArchiveError(TwofoldError):
    """A downloaded checkpoint archive holds a path that would land outside the target directory."""


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def make_status_error(response: httpx.Response) -> APIStatusError:
    """Build the error subclass for a 4xx/5xx response, taking the message from its error body."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        message = str(error["message"])
    else:
        message = response.text.strip()[:500] or response.reason_phrase or f"HTTP {response.status_code}"
    if response.status_code >= 500:
        cls: type[APIStatusError] = InternalServerError
    else:
        cls = _STATUS_ERRORS.get(response.status_code, APIStatusError)
    return cls(message, response=response, body=body)
