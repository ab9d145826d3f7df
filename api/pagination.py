"""Keyset (cursor) pagination: ``?after=<id>`` continues after that item in a fixed order."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from twofold.api.deps import Page
from twofold.api.errors import InvalidRequest

T = TypeVar("T")


def parse_id(value: str) -> uuid.UUID | None:
    """``value`` as a UUID, or None if it is not one."""
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _after(columns: Sequence[InstrumentedAttribute[Any]], values: Sequence[Any], descending: bool) -> Any:
    """Rows strictly after ``values`` in the order of ``columns`` (lexicographic)."""
    col, value = columns[0], values[0]
    beyond = col < value if descending else col > value
    if len(columns) == 1:
        return beyond
    return or_(beyond, and_(col == value, _after(columns[1:], values[1:], descending)))


def keyset_page(
    session: Session,
    stmt: Select[T],
    *,
    entity: Any,
    order: Sequence[InstrumentedAttribute[Any]],
    page: Page,
    descending: bool = False,
) -> tuple[list[T], bool]:
    """One page of ``stmt`` (already filtered to what the caller may see) ordered by ``order`` (ending in a
    unique column); returns the rows and whether more follow. ``page.after`` must be the id of a row of
    ``stmt``, or 400 ``invalid_request``."""
    if page.after is not None:
        cursor_id = parse_id(page.after)
        cursor = (
            session.execute(stmt.where(entity.id == cursor_id).with_only_columns(*order)).first()
            if cursor_id
            else None
        )
        if cursor is None:
            raise InvalidRequest(
                f"`after` must be the id of an item of this list; got {page.after!r}", param="after"
            )
        stmt = stmt.where(_after(order, tuple(cursor), descending))
    ordering = [c.desc() for c in order] if descending else list(order)
    rows = list(session.scalars(stmt.order_by(*ordering).limit(page.limit + 1)))
    return rows[: page.limit], len(rows) > page.limit
