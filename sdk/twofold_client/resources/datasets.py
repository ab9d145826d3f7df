"""``client.datasets``: upload, retrieve and list JSONL datasets."""

from __future__ import annotations

from typing import Any, Unpack

from .._base_client import RequestOptions
from ..pagination import AsyncPage, AsyncPaginator, SyncPage
from ..types import Dataset
from ._shared import AsyncAPIResource, FileInput, SyncAPIResource, list_params, read_file_input

__all__ = ["Datasets", "AsyncDatasets"]


def _upload(file: FileInput, name: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    filename, content = read_file_input(file)
    return {"file": (filename, content, "application/jsonl")}, ({"name": name} if name else {})


class Datasets(SyncAPIResource):
    """Datasets: JSONL files of questions (and optional answers) to distil on."""

    def create(
        self,
        *,
        file: FileInput,
        name: str | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> Dataset:
        """Upload a JSONL dataset.

        Args:
            file: a path, bytes, a binary file object, or ``(filename, bytes)``. Each line is
                ``{"question": ..., "answer"?: ..., "id"?: ...}`` or ``{"messages": [...], "answer"?: ...}``.
            name: display name; defaults to the file name.
            idempotency_key: reuse to make a retried upload return the first dataset instead of a copy.

        Returns:
            The stored :class:`Dataset`. Raises ``UnprocessableEntityError`` (``param="line N"``) on a bad
            line and ``PayloadTooLargeError`` over the server's size limit.
        """
        files, data = _upload(file, name)
        return self._client.post(
            "/v1/datasets", Dataset, files=files, data=data, idempotency_key=idempotency_key, options=options
        )

    def retrieve(self, dataset_id: str, **options: Unpack[RequestOptions]) -> Dataset:
        """Get one dataset by id (``gsm8k``, ``mmlu_pro`` and ``arithmetic`` are built in)."""
        return self._client.get(f"/v1/datasets/{dataset_id}", Dataset, options=options)

    def list(
        self, *, limit: int | None = None, after: str | None = None, **options: Unpack[RequestOptions]
    ) -> SyncPage[Dataset]:
        """List datasets, newest first; iterate the page to walk all of them."""
        params = list_params(limit=limit, after=after)
        return self._client.get_page("/v1/datasets", SyncPage[Dataset], params=params, options=options)


class AsyncDatasets(AsyncAPIResource):
    """Datasets: JSONL files of questions (and optional answers) to distil on."""

    async def create(
        self,
        *,
        file: FileInput,
        name: str | None = None,
        idempotency_key: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> Dataset:
        """Upload a JSONL dataset; see :meth:`Datasets.create`."""
        files, data = _upload(file, name)
        return await self._client.post(
            "/v1/datasets", Dataset, files=files, data=data, idempotency_key=idempotency_key, options=options
        )

    async def retrieve(self, dataset_id: str, **options: Unpack[RequestOptions]) -> Dataset:
        """Get one dataset by id."""
        return await self._client.get(f"/v1/datasets/{dataset_id}", Dataset, options=options)

    def list(
        self, *, limit: int | None = None, after: str | None = None, **options: Unpack[RequestOptions]
    ) -> AsyncPaginator[Dataset, AsyncPage[Dataset]]:
        """List datasets, newest first: ``await`` for the first page or ``async for`` over all of them."""
        params = list_params(limit=limit, after=after)
        return AsyncPaginator(
            lambda: self._client.get_page("/v1/datasets", AsyncPage[Dataset], params=params, options=options)
        )
