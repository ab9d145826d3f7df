"""Job events: a paginated list, and a Server-Sent Events stream that follows the job until it finishes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from twofold.api.deps import Page
from twofold.api.errors import InvalidRequest
from twofold.api.events.schemas import EventOut
from twofold.api.pagination import keyset_page
from twofold.store.models import Event, Job
from twofold.store.stages import FINISHED

STREAM_BATCH = 500
KEEPALIVE_S = 15.0


def event_out(row: Event) -> EventOut:
    """The API object of an event."""
    return EventOut(
        id=str(row.id),
        seq=row.seq,
        stage=row.stage,
        level=row.level,
        type=row.type,
        message=row.message,
        data=row.data,
        created_at=row.created_at,
    )


def list_events(*, session: Session, job: Job, page: Page) -> tuple[list[EventOut], bool]:
    """A job's events, oldest first; ``after`` is an event id or a ``seq`` number."""
    stmt = select(Event).where(Event.job_id == job.id)
    if page.after is not None and page.after.isdigit():
        stmt = stmt.where(Event.seq > int(page.after))
        page = Page(limit=page.limit, after=None)
    rows, more = keyset_page(session, stmt, entity=Event, order=(Event.seq,), page=page)
    return [event_out(r) for r in rows], more


def parse_last_event_id(value: str | None) -> int:
    """The ``Last-Event-ID`` header (an event ``seq``) as a number; 0 when absent."""
    if value is None or value.strip() == "":
        return 0
    if not value.strip().isdigit():
        raise InvalidRequest("Last-Event-ID must be the seq number of an event", param="Last-Event-ID")
    return int(value)


def _fetch(factory: sessionmaker[Session], job_id: uuid.UUID, after_seq: int) -> tuple[list[EventOut], bool]:
    with factory() as session:
        rows = session.scalars(
            select(Event)
            .where(Event.job_id == job_id, Event.seq > after_seq)
            .order_by(Event.seq)
            .limit(STREAM_BATCH)
        ).all()
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        return [event_out(r) for r in rows], status in FINISHED or status is None


def sse(event_type: str, data: str, event_id: int | None = None) -> str:
    """One Server-Sent Events message."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event_type}\ndata: {data}\n\n"


async def stream_events(
    *,
    factory: sessionmaker[Session],
    job_id: uuid.UUID,
    after_seq: int,
    is_disconnected: Callable[[], object],
    poll_s: float = 0.5,
) -> AsyncIterator[str]:
    """Events after ``after_seq`` as SSE messages, polling the database, until the job has finished and every
    event was sent (then ``event: end``), or the client goes away."""
    seq = after_seq
    idle = 0.0
    while True:
        events, finished = await run_in_threadpool(_fetch, factory, job_id, seq)
        for e in events:
            yield sse(e.type, e.model_dump_json(), e.seq)
            seq = e.seq
        if finished and len(events) < STREAM_BATCH:
            yield sse("end", '{"object": "end"}')
            return
        if events:
            idle = 0.0
            continue
        if await is_disconnected():  # type: ignore[misc]
            return
        await asyncio.sleep(poll_s)
        idle += poll_s
        if idle >= KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"
