"""Job events: a paginated list, and a Server-Sent Events stream that follows the job until it finishes (fed by
the process's :class:`~twofold.api.events.hub.EventHub`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from twofold.api.deps import Page
from twofold.api.errors import InvalidRequest
from twofold.api.events.hub import EventHub, Subscription, event_out
from twofold.api.events.schemas import EventOut
from twofold.api.pagination import keyset_page
from twofold.store.models import Event, Job

KEEPALIVE_S = 15.0


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


def sse(event_type: str, data: str, event_id: int | None = None) -> str:
    """One Server-Sent Events message."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event_type}\ndata: {data}\n\n"


async def stream_events(*, hub: EventHub, sub: Subscription) -> AsyncIterator[str]:
    """The subscription's events as SSE messages until the job has finished and every event was sent (then
    ``event: end``); a comment every ``KEEPALIVE_S`` while nothing happens. Ends without ``end`` when the key
    is revoked, so that the client's reconnect meets the 401."""
    hub.ensure_running()
    while True:
        while sub.buffer:
            event = sub.buffer.popleft()
            yield sse(event.type, event.model_dump_json(), event.seq)
        if sub.behind:
            hub.nudge()  # sent all it held and more is waiting: the next round now
        if sub.finished:
            yield sse("end", '{"object": "end"}')
            return
        if sub.revoked:
            return
        try:
            await asyncio.wait_for(sub.wake.wait(), timeout=KEEPALIVE_S)
        except TimeoutError:
            yield ": keep-alive\n\n"
        sub.wake.clear()


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response that gives its stream slot back however the response ends (finished,
    client gone, server stopping)."""

    def __init__(self, *, hub: EventHub, sub: Subscription) -> None:
        super().__init__(
            stream_events(hub=hub, sub=sub),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.hub = hub
        self.sub = sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream, then release the slot."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.hub.close(self.sub)
