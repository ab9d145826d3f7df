"""Cursor pages that fetch the next page on demand.

A list call returns its first page. Iterating a page yields every item of every following page too,
following ``has_more`` with ``after=<id of the last item>``; ``.data`` is just this page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, PrivateAttr

from .types import RewardLabel, RewardLabelSummary

__all__ = ["SyncPage", "AsyncPage", "AsyncPaginator", "RewardLabelPage", "AsyncRewardLabelPage"]

ItemT = TypeVar("ItemT", bound=BaseModel)
PageT = TypeVar("PageT", bound="AsyncPage[Any]")


class BasePage(BaseModel, Generic[ItemT]):
    """``{"object": "list", "data": [...], "has_more": bool}``; extra top-level fields are kept."""

    model_config = ConfigDict(extra="allow")

    object: str = "list"
    data: list[ItemT] = []
    has_more: bool = False

    def next_cursor(self) -> str | None:
        """The ``after`` value for the next page, or None when this is the last page.

        Items without an ``id`` (metric points) cannot be paged past: their list ends here.
        """
        if not self.has_more or not self.data:
            return None
        return getattr(self.data[-1], "id", None)

    def has_next_page(self) -> bool:
        """Whether another page can be fetched."""
        return self.next_cursor() is not None


class SyncPage(BasePage[ItemT], Generic[ItemT]):
    """A page of a list; iterate it to walk every item across all pages."""

    _fetch: Callable[[str], SyncPage[ItemT]] | None = PrivateAttr(default=None)

    def get_next_page(self) -> SyncPage[ItemT]:
        """Fetch the page after this one (raises RuntimeError on the last page)."""
        cursor = self.next_cursor()
        if cursor is None or self._fetch is None:
            raise RuntimeError("no next page: check has_next_page() first")
        return self._fetch(cursor)

    def iter_pages(self) -> Iterator[SyncPage[ItemT]]:
        """Yield this page, then each following page."""
        page = self
        yield page
        while page.has_next_page():
            page = page.get_next_page()
            yield page

    def __iter__(self) -> Generator[ItemT, None, None]:  # type: ignore[override]
        for page in self.iter_pages():
            yield from page.data


class AsyncPage(BasePage[ItemT], Generic[ItemT]):
    """A page of a list; ``async for`` over it walks every item across all pages."""

    _fetch: Callable[[str], Awaitable[AsyncPage[ItemT]]] | None = PrivateAttr(default=None)

    async def get_next_page(self) -> AsyncPage[ItemT]:
        """Fetch the page after this one (raises RuntimeError on the last page)."""
        cursor = self.next_cursor()
        if cursor is None or self._fetch is None:
            raise RuntimeError("no next page: check has_next_page() first")
        return await self._fetch(cursor)

    async def iter_pages(self) -> AsyncIterator[AsyncPage[ItemT]]:
        """Yield this page, then each following page."""
        page = self
        yield page
        while page.has_next_page():
            page = await page.get_next_page()
            yield page

    async def __aiter__(self) -> AsyncIterator[ItemT]:
        async for page in self.iter_pages():
            for item in page.data:
                yield item


class AsyncPaginator(Generic[ItemT, PageT]):
    """What async list methods return: ``await`` it for the first page, or ``async for`` over all items."""

    def __init__(self, first_page: Callable[[], Awaitable[PageT]]) -> None:
        self._first_page = first_page

    def __await__(self) -> Generator[Any, None, PageT]:
        return self._first_page().__await__()

    async def __aiter__(self) -> AsyncIterator[ItemT]:
        page = await self._first_page()
        async for item in page:
            yield item


class RewardLabelPage(SyncPage[RewardLabel]):
    """A page of pseudo-labels; ``summary`` holds the statistics over all labels of the job."""

    summary: RewardLabelSummary | None = None


class AsyncRewardLabelPage(AsyncPage[RewardLabel]):
    """A page of pseudo-labels; ``summary`` holds the statistics over all labels of the job."""

    summary: RewardLabelSummary | None = None
