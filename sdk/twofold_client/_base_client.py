"""HTTP machinery shared by :class:`Client` and :class:`AsyncClient`: configuration, request building,
retries with exponential backoff and jitter (honouring ``Retry-After``), Idempotency-Keys, error mapping, and
the reconnect budget of calls that outlive a server restart (``jobs.wait``, event streams)."""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any, TypedDict, TypeVar

import httpx
from pydantic import BaseModel

from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    TwofoldError,
    make_status_error,
)
from ._version import __version__
from .pagination import AsyncPage, SyncPage

ModelT = TypeVar("ModelT", bound=BaseModel)
SyncPageT = TypeVar("SyncPageT", bound=SyncPage[Any])
AsyncPageT = TypeVar("AsyncPageT", bound=AsyncPage[Any])

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2
#: How long ``jobs.wait`` and event streams keep reconnecting while the server cannot be reached (seconds).
DEFAULT_RECONNECT_TIMEOUT = 300.0
INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
#: The longest pause between two reconnects during an outage.
MAX_RECONNECT_DELAY = 5.0
#: A server's Retry-After above this is not waited for (the error is raised instead).
MAX_RETRY_AFTER = 60.0
# 409 is not here: the API answers it for a state (a finished job, a reused key) that a retry cannot change.
RETRY_STATUSES = frozenset({408, 429})
#: What a server that is restarting, or a proxy in front of it, answers.
OUTAGE_STATUSES = frozenset({502, 503, 504})


class RequestOptions(TypedDict, total=False):
    """Per-call overrides accepted by every resource method as keyword arguments."""

    timeout: float | httpx.Timeout | None
    max_retries: int
    extra_headers: Mapping[str, str]


class PollOptions(TypedDict, total=False):
    """Per-request overrides of ``jobs.wait`` (whose own ``timeout`` bounds the whole wait)."""

    max_retries: int
    extra_headers: Mapping[str, str]


class ClientOptions(TypedDict, total=False):
    """What :meth:`Client.with_options` may change."""

    timeout: float | httpx.Timeout | None
    max_retries: int
    reconnect_timeout: float


def _resolve(value: str | None, env: str, what: str) -> str:
    value = value or os.environ.get(env)
    if not value:
        raise TwofoldError(
            f"no {what} given: pass `{what}=` to the client or set the {env} environment variable"
        )
    return value


def _normalise_base_url(url: str) -> str:
    """Accept ``http://host:8000``, ``http://host:8000/`` or ``http://host:8000/v1``; paths carry ``/v1``."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def retry_after_seconds(response: httpx.Response | None) -> float | None:
    """The wait a response asks for in ``Retry-After`` (seconds or an HTTP date), or None."""
    if response is None:
        return None
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        return None if parsed is None else max(0.0, parsed.timestamp() - time.time())


def should_retry(response: httpx.Response) -> bool:
    """Whether a failed response is worth retrying: 408, 429 and every 5xx (never 409)."""
    return response.status_code in RETRY_STATUSES or response.status_code >= 500


def retry_delay(retries_taken: int, response: httpx.Response | None = None) -> float:
    """Seconds to wait before retry number ``retries_taken + 1``.

    The server's ``Retry-After`` wins when it is sane (0..60 s); otherwise exponential backoff from 0.5 s,
    capped at 8 s, with up to 25% jitter so that many clients do not retry in step.
    """
    after = retry_after_seconds(response)
    if after is not None and after <= MAX_RETRY_AFTER:
        return after
    delay = min(INITIAL_RETRY_DELAY * 2.0**retries_taken, MAX_RETRY_DELAY)
    return delay * (1.0 - 0.25 * random.random())


def is_outage(exc: BaseException) -> bool:
    """Whether an error means the server cannot be reached for now: a connection error or timeout, or a 502,
    503 or 504 (a server restarting, or a proxy in front of one)."""
    if isinstance(exc, APIConnectionError):
        return True
    return isinstance(exc, APIStatusError) and exc.status_code in OUTAGE_STATUSES


class Reconnect:
    """The reconnect budget of one long-lived call: after a failure that :func:`is_outage` accepts, wait
    (0.5 s doubling to 5 s, with jitter) and try again, for up to ``timeout`` seconds from the first failure of
    the current outage; :meth:`ok` ends the outage."""

    def __init__(self, timeout: float) -> None:
        if timeout < 0:
            raise TwofoldError(f"reconnect_timeout must be >= 0, got {timeout}")
        self.timeout = timeout
        self.since: float | None = None
        self.failures = 0

    def ok(self) -> None:
        """The server answered: the next failure starts a new outage."""
        self.since = None
        self.failures = 0

    def delay(self, exc: Exception, *, base: float | None = None) -> float:
        """Seconds to wait before trying again after ``exc``, or raise when ``exc`` is not an outage or the
        budget is spent. ``base`` (a stream's ``retry:`` field) replaces the first delay."""
        if not is_outage(exc):
            raise exc
        now = time.monotonic()
        if self.since is None:
            self.since = now
        left = self.since + self.timeout - now
        if left <= 0:
            if isinstance(exc, APIConnectionError):
                raise APIConnectionError(
                    request=exc.request,
                    message=f"the server did not answer for {now - self.since:.0f}s (reconnect_timeout="
                    f"{self.timeout:g}s); last error: {exc.message}",
                ) from exc
            raise exc
        first = INITIAL_RETRY_DELAY if base is None else base
        wait = min(first * 2.0**self.failures, MAX_RECONNECT_DELAY) * (1.0 - 0.25 * random.random())
        self.failures += 1
        return min(wait, left)


def parse(response: httpx.Response, cast_to: type[ModelT]) -> ModelT:
    """The JSON body of a successful response as ``cast_to``; a body that is not that object is an APIError
    (a proxy's HTML page, another service on the port), not a bare ValueError."""
    try:
        return cast_to.model_validate(response.json())
    except ValueError as exc:  # JSONDecodeError and pydantic's ValidationError are both ValueErrors
        raise APIError(
            f"unexpected response from {response.request.method} {response.request.url.path} "
            f"(HTTP {response.status_code}): not a {cast_to.__name__}: {str(exc)[:300]}",
            request=response.request,
            body=response.text[:2000],
        ) from exc


class BaseClient:
    """Configuration and request building common to the sync and async clients."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
        default_headers: Mapping[str, str] | None,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
    ) -> None:
        self.base_url = _normalise_base_url(_resolve(base_url, "TWOFOLD_BASE_URL", "base_url"))
        self.api_key = _resolve(api_key, "TWOFOLD_API_KEY", "api_key")
        if max_retries < 0:
            raise TwofoldError("max_retries must be >= 0")
        if reconnect_timeout < 0:
            raise TwofoldError("reconnect_timeout must be >= 0")
        self.timeout = timeout
        self.max_retries = max_retries
        self.reconnect_timeout = reconnect_timeout
        self._default_headers = dict(default_headers or {})

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "User-Agent": f"twofold-client/{__version__}",
            **self._default_headers,
            **(extra or {}),
        }

    def _build_request(
        self,
        http: httpx.Client | httpx.AsyncClient,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None,
        json: Any,
        files: Any,
        data: Mapping[str, Any] | None,
        idempotency_key: str | None,
        options: RequestOptions,
    ) -> httpx.Request:
        headers = self._headers(options.get("extra_headers"))
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return http.build_request(
            method,
            self.base_url + path,
            params=clean,
            json=json,
            files=files,
            data=data,
            headers=headers,
            timeout=options.get("timeout", self.timeout),
        )

    def _idempotency_key(self, method: str, given: str | None) -> str | None:
        """Every POST carries a key, generated once per call so that its own retries reuse it."""
        if method != "POST":
            return given
        return given or f"twofold-{uuid.uuid4()}"

    def _retry_or_raise(
        self,
        request: httpx.Request,
        retries_taken: int,
        max_retries: int,
        *,
        response: httpx.Response | None = None,
        exc: httpx.TransportError | None = None,
    ) -> float:
        """After a failed attempt: the seconds to wait before retrying, or raise the error to give up with."""
        if response is not None:
            if retries_taken < max_retries and should_retry(response):
                return retry_delay(retries_taken, response)
            raise make_status_error(response)
        if retries_taken < max_retries:
            return retry_delay(retries_taken)
        if isinstance(exc, httpx.TimeoutException):
            raise APITimeoutError(request=request) from exc
        raise APIConnectionError(request=request) from exc

    def _settings(self) -> dict[str, Any]:
        """The constructor arguments that reproduce this client (for ``with_options``)."""
        return {
            "base_url": self.base_url,
            "api_key": self.api_key,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "reconnect_timeout": self.reconnect_timeout,
            "default_headers": self._default_headers,
        }

    def _max_retries(self, options: RequestOptions) -> int:
        return options.get("max_retries", self.max_retries)


class SyncAPIClient(BaseClient):
    """Blocking transport over ``httpx.Client``."""

    def __init__(self, *, http_client: httpx.Client | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self._http = http_client or httpx.Client(follow_redirects=True)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        files: Any = None,
        data: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        stream: bool = False,
        options: RequestOptions | None = None,
    ) -> httpx.Response:
        """Send a request, retrying transient failures; return the successful response or raise APIError."""
        options = options or {}
        key = self._idempotency_key(method, idempotency_key)
        max_retries = self._max_retries(options)
        retries_taken = 0
        while True:
            request = self._build_request(
                self._http, method, path, params=params, json=json, files=files, data=data,
                idempotency_key=key, options=options,
            )  # fmt: skip
            try:
                response = self._http.send(request, stream=stream)
                if not response.is_error:
                    return response
                response.read()  # the error body, for the message (small)
                response.close()
                delay = self._retry_or_raise(request, retries_taken, max_retries, response=response)
            except httpx.TransportError as exc:
                delay = self._retry_or_raise(request, retries_taken, max_retries, exc=exc)
            time.sleep(delay)
            retries_taken += 1

    def get(self, path: str, cast_to: type[ModelT], *, params: Any = None, options: Any = None) -> ModelT:
        """GET ``path`` and parse the JSON body as ``cast_to``."""
        return parse(self.request("GET", path, params=params, options=options), cast_to)

    def post(
        self,
        path: str,
        cast_to: type[ModelT],
        *,
        json: Any = None,
        files: Any = None,
        data: Any = None,
        idempotency_key: str | None = None,
        options: Any = None,
    ) -> ModelT:
        """POST to ``path`` (with an Idempotency-Key) and parse the JSON body as ``cast_to``."""
        response = self.request(
            "POST", path, json=json, files=files, data=data, idempotency_key=idempotency_key, options=options
        )
        return parse(response, cast_to)

    def get_page(
        self,
        path: str,
        page_cls: type[SyncPageT],
        *,
        params: Mapping[str, Any] | None = None,
        options: RequestOptions | None = None,
    ) -> SyncPageT:
        """GET a list endpoint; the page fetches its successors itself with ``after=<last id>``."""
        params = dict(params or {})
        page = parse(self.request("GET", path, params=params, options=options), page_cls)
        page._fetch = lambda after: self.get_page(
            path, page_cls, params={**params, "after": after}, options=options
        )
        return page

    def close(self) -> None:
        """Close the underlying HTTP connections."""
        self._http.close()


class AsyncAPIClient(BaseClient):
    """Asyncio transport over ``httpx.AsyncClient``."""

    def __init__(self, *, http_client: httpx.AsyncClient | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self._http = http_client or httpx.AsyncClient(follow_redirects=True)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        files: Any = None,
        data: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        stream: bool = False,
        options: RequestOptions | None = None,
    ) -> httpx.Response:
        """Send a request, retrying transient failures; return the successful response or raise APIError."""
        options = options or {}
        key = self._idempotency_key(method, idempotency_key)
        max_retries = self._max_retries(options)
        retries_taken = 0
        while True:
            request = self._build_request(
                self._http, method, path, params=params, json=json, files=files, data=data,
                idempotency_key=key, options=options,
            )  # fmt: skip
            try:
                response = await self._http.send(request, stream=stream)
                if not response.is_error:
                    return response
                await response.aread()  # the error body, for the message (small)
                await response.aclose()
                delay = self._retry_or_raise(request, retries_taken, max_retries, response=response)
            except httpx.TransportError as exc:
                delay = self._retry_or_raise(request, retries_taken, max_retries, exc=exc)
            await asyncio.sleep(delay)
            retries_taken += 1

    async def get(
        self, path: str, cast_to: type[ModelT], *, params: Any = None, options: Any = None
    ) -> ModelT:
        """GET ``path`` and parse the JSON body as ``cast_to``."""
        response = await self.request("GET", path, params=params, options=options)
        return parse(response, cast_to)

    async def post(
        self,
        path: str,
        cast_to: type[ModelT],
        *,
        json: Any = None,
        files: Any = None,
        data: Any = None,
        idempotency_key: str | None = None,
        options: Any = None,
    ) -> ModelT:
        """POST to ``path`` (with an Idempotency-Key) and parse the JSON body as ``cast_to``."""
        response = await self.request(
            "POST", path, json=json, files=files, data=data, idempotency_key=idempotency_key, options=options
        )
        return parse(response, cast_to)

    async def get_page(
        self,
        path: str,
        page_cls: type[AsyncPageT],
        *,
        params: Mapping[str, Any] | None = None,
        options: RequestOptions | None = None,
    ) -> AsyncPageT:
        """GET a list endpoint; the page fetches its successors itself with ``after=<last id>``."""
        params = dict(params or {})
        response = await self.request("GET", path, params=params, options=options)
        page = parse(response, page_cls)
        page._fetch = lambda after: self.get_page(
            path, page_cls, params={**params, "after": after}, options=options
        )
        return page

    async def close(self) -> None:
        """Close the underlying HTTP connections."""
        await self._http.aclose()
