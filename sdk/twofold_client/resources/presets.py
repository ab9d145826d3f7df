"""``client.presets``: the named job specs the server offers (``smoke``, ``demo``)."""

from __future__ import annotations

from typing import Unpack

from .._base_client import RequestOptions
from ..pagination import AsyncPage, AsyncPaginator, SyncPage
from ..types import Preset
from ._shared import AsyncAPIResource, SyncAPIResource

__all__ = ["Presets", "AsyncPresets"]


class Presets(SyncAPIResource):
    """Ready-to-run job specs."""

    def list(self, **options: Unpack[RequestOptions]) -> SyncPage[Preset]:
        """List the presets with their descriptions and full specs."""
        return self._client.get_page("/v1/presets", SyncPage[Preset], options=options)


class AsyncPresets(AsyncAPIResource):
    """Ready-to-run job specs."""

    def list(self, **options: Unpack[RequestOptions]) -> AsyncPaginator[Preset, AsyncPage[Preset]]:
        """List the presets with their descriptions and full specs."""
        return AsyncPaginator(
            lambda: self._client.get_page("/v1/presets", AsyncPage[Preset], options=options)
        )
