"""The entry points: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Unpack

import httpx

from ._base_client import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_RECONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    AsyncAPIClient,
    ClientOptions,
    SyncAPIClient,
)
from .resources import AsyncDatasets, AsyncJobs, AsyncPresets, Datasets, Jobs, Presets

__all__ = ["Client", "AsyncClient"]


class Client(SyncAPIClient):
    """A blocking client of the twofold API.

    Args:
        base_url: the server, e.g. ``http://localhost:8080``; defaults to ``$TWOFOLD_BASE_URL``.
        api_key: a key from ``twofold apikey create``; defaults to ``$TWOFOLD_API_KEY``.
        timeout: seconds (or an ``httpx.Timeout``) per request; None for no limit.
        max_retries: how often to retry connection errors, 408, 429 and 5xx (with backoff); never 409.
        reconnect_timeout: how long ``jobs.wait`` and event streams keep reconnecting, with backoff, while
            the server cannot be reached (a restart, a deploy), before they raise ``APIConnectionError``.
        default_headers: headers to send on every request.
        http_client: an ``httpx.Client`` to use (proxies, transports); the client closes it on ``close()``.

    Example::

        client = Client(base_url="http://localhost:8080", api_key="tf_...")
        job = client.jobs.wait(client.jobs.create(preset="smoke").id)
    """

    datasets: Datasets
    jobs: Jobs
    presets: Presets

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            reconnect_timeout=reconnect_timeout,
            default_headers=default_headers,
            http_client=http_client,
        )
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.presets = Presets(self)

    def with_options(self, **options: Unpack[ClientOptions]) -> Client:
        """A copy with another ``timeout``, ``max_retries`` or ``reconnect_timeout``, sharing this client's
        connections.

        Example: ``client.with_options(max_retries=0).jobs.cancel(job_id)``.
        """
        return Client(**{**self._settings(), **options}, http_client=self._http)

    def health(self) -> dict[str, Any]:
        """``GET /readyz``: whether the server's database and broker are ready (raises on 503)."""
        return dict(self.request("GET", "/readyz").json())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(AsyncAPIClient):
    """An asyncio client of the twofold API; same arguments as :class:`Client`, methods are awaitable.

    Example::

        async with AsyncClient() as client:
            job = await client.jobs.create(preset="smoke")
            async for event in client.jobs.events(job.id, stream=True):
                print(event.message)
    """

    datasets: AsyncDatasets
    jobs: AsyncJobs
    presets: AsyncPresets

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        reconnect_timeout: float = DEFAULT_RECONNECT_TIMEOUT,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            reconnect_timeout=reconnect_timeout,
            default_headers=default_headers,
            http_client=http_client,
        )
        self.datasets = AsyncDatasets(self)
        self.jobs = AsyncJobs(self)
        self.presets = AsyncPresets(self)

    def with_options(self, **options: Unpack[ClientOptions]) -> AsyncClient:
        """A copy with another ``timeout``, ``max_retries`` or ``reconnect_timeout``, sharing this client's
        connections."""
        return AsyncClient(**{**self._settings(), **options}, http_client=self._http)

    async def health(self) -> dict[str, Any]:
        """``GET /readyz``: whether the server's database and broker are ready (raises on 503)."""
        response = await self.request("GET", "/readyz")
        return dict(response.json())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
