"""One poller per API process for every open event stream.

A stream registers a :class:`Subscription` (job, key, the last event sent) and waits on it; it holds no
database connection. Every ``poll_s`` the hub reads, in one short session, the status of each watched job, the
next events past each distinct cursor (at most 500, through the ``(job_id, seq)`` index) and which watching keys
are still live, then hands each stream its events. Hundreds of streams cost one pooled connection a few times a
second, so the pool stays free for the requests of every tenant. A stream that is behind asks for the next
round as soon as it has sent what it holds, so catching up is as fast as the client reads. Streams are capped
per key and per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Integer, Select, literal, select, union_all
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from twofold.api.errors import RateLimited, Unavailable
from twofold.api.events.schemas import EventOut
from twofold.store.models import ApiKey, Event, Job
from twofold.store.stages import FINISHED

log = logging.getLogger(__name__)

#: Events read past one cursor per round, and the most a stream buffers (a client that stops reading waits
#: here, not in the database).
BATCH = 500
#: Cursors (and jobs) per statement of a round.
PER_QUERY = 100
#: The Retry-After of a refused stream.
RETRY_AFTER_S = 5
#: The shortest time between two rounds, however hungry the streams.
MIN_GAP_S = 0.05

Window = tuple[uuid.UUID, int]  # (job, cursor): the events of a job after a seq
T = TypeVar("T")


@dataclass(eq=False)
class Subscription:
    """One open stream: what it watches, what it has been handed, and how it is woken."""

    job_id: uuid.UUID
    key_id: uuid.UUID
    cursor: int
    buffer: deque[EventOut] = field(default_factory=deque)
    finished: bool = False  # the job finished and every event has been handed over
    revoked: bool = False  # the key that opened the stream is no longer valid
    behind: bool = False  # the last round left events past what it handed over
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def room(self) -> int:
        """How many more events the buffer takes."""
        return BATCH - len(self.buffer)


@dataclass
class Snapshot:
    """What one round read: job statuses, the events after each cursor (oldest first, at most ``BATCH``), and
    the keys still valid."""

    status: dict[uuid.UUID, str]
    windows: dict[Window, list[EventOut]]
    live_keys: set[uuid.UUID]

    def complete(self, window: Window) -> bool:
        """Whether every event after the cursor was read."""
        return len(self.windows.get(window, ())) < BATCH


class EventHub:
    """The shared poller; ``open``/``close`` are called by the stream route, ``run`` by the app's lifespan (or
    lazily by the first stream)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        max_per_key: int,
        max_total: int,
        poll_s: float = 0.5,
    ) -> None:
        self.factory = factory
        self.max_per_key = max_per_key
        self.max_total = max_total
        self.poll_s = poll_s
        self.polls = 0  # rounds that read the database (for /metrics and the tests)
        self._subs: set[Subscription] = set()
        self._per_key: Counter[uuid.UUID] = Counter()
        self._lock = threading.Lock()  # `open` runs in the threadpool, the rest on the event loop
        self._task: asyncio.Task[None] | None = None
        self._nudge = asyncio.Event()

    @property
    def open_streams(self) -> int:
        """Streams open now."""
        return len(self._subs)

    def open(self, *, job_id: uuid.UUID, key_id: uuid.UUID, after_seq: int) -> Subscription:
        """Register a stream of ``job_id``'s events after ``after_seq``.

        Raises:
            RateLimited: the key already has ``max_per_key`` streams open (429).
            Unavailable: the process already serves ``max_total`` streams (503).
        """
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        with self._lock:
            if self._per_key[key_id] >= self.max_per_key:
                raise RateLimited(
                    f"this API key already has {self.max_per_key} open event streams, the most it may hold; "
                    "close one, or read GET /v1/jobs/{job_id}/events without stream=true",
                    param="stream",
                    headers=retry,
                )
            if len(self._subs) >= self.max_total:
                raise Unavailable(
                    f"this server already serves {self.max_total} event streams; try again shortly, or read "
                    "GET /v1/jobs/{job_id}/events without stream=true",
                    param="stream",
                    headers=retry,
                )
            sub = Subscription(job_id=job_id, key_id=key_id, cursor=after_seq)
            self._subs.add(sub)
            self._per_key[key_id] += 1
        return sub

    def close(self, sub: Subscription) -> None:
        """Forget a stream (idempotent)."""
        with self._lock:
            if sub in self._subs:
                self._subs.discard(sub)
                self._per_key[sub.key_id] -= 1
                if self._per_key[sub.key_id] <= 0:
                    del self._per_key[sub.key_id]

    def ensure_running(self) -> None:
        """Start the poller on the running event loop unless it already runs there."""
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            self._nudge = asyncio.Event()
            self._task = loop.create_task(self.run(), name="twofold-event-hub")

    def nudge(self) -> None:
        """Run the next round now rather than at the next tick (a stream that was behind has drained)."""
        self._nudge.set()

    async def stop(self) -> None:
        """Stop the poller (at shutdown)."""
        task, self._task = self._task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        """Poll every ``poll_s`` while any stream is open, or sooner when nudged."""
        failing = False
        while True:
            started = time.monotonic()
            with self._lock:
                subs = [s for s in self._subs if not s.finished and not s.revoked and s.room > 0]
            if subs:
                try:
                    windows = {(s.job_id, s.cursor) for s in subs}
                    snapshot = await run_in_threadpool(self._read, windows, {s.key_id for s in subs})
                except Exception:  # a database outage: streams keep their keep-alives and wait
                    if not failing:
                        log.exception("event hub: reading events failed; retrying every %.1fs", self.poll_s)
                    failing = True
                else:
                    failing = False
                    self.polls += 1
                    self._deliver(subs, snapshot)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), self.poll_s)
            self._nudge.clear()
            await asyncio.sleep(max(0.0, started + MIN_GAP_S - time.monotonic()))

    def _read(self, windows: set[Window], keys: set[uuid.UUID]) -> Snapshot:
        """The statuses, the events after each cursor and the keys still valid (neither revoked nor deleted),
        in one short session. Statuses come before events, so that a job read as finished has all its events
        visible to the event query that follows."""
        jobs = sorted({job for job, _ in windows})
        out: dict[Window, list[EventOut]] = defaultdict(list)
        status: dict[uuid.UUID, str] = {}
        with self.factory() as session:
            for ids in _chunks(jobs, PER_QUERY):
                rows = session.execute(select(Job.id, Job.status).where(Job.id.in_(ids)))
                status.update({job_id: value for job_id, value in rows})
            seen: dict[uuid.UUID, EventOut] = {}  # one object per event, however many windows hold it
            for chunk in _chunks(sorted(windows), PER_QUERY):
                for row, cursor in session.execute(_windows_query(chunk)).tuples():
                    event = seen.get(row.id)
                    if event is None:
                        event = seen[row.id] = event_out(row)
                    out[(row.job_id, cursor)].append(event)
            live = select(ApiKey.id).where(ApiKey.id.in_(keys), ApiKey.revoked_at.is_(None))
            live_keys = set(session.scalars(live))
        return Snapshot(status=status, windows=out, live_keys=live_keys)

    def _deliver(self, subs: list[Subscription], snapshot: Snapshot) -> None:
        """Hand each stream the events after its cursor, mark the finished and the revoked, wake them."""
        for sub in subs:
            if sub.key_id not in snapshot.live_keys:
                sub.revoked = True
                sub.wake.set()
                continue
            window = (sub.job_id, sub.cursor)
            fresh = snapshot.windows.get(window, [])
            taken = fresh[: sub.room]
            if taken:
                sub.buffer.extend(taken)
                sub.cursor = taken[-1].seq
            status = snapshot.status.get(sub.job_id)
            sub.behind = not (snapshot.complete(window) and len(taken) == len(fresh))
            if not sub.behind and (status is None or status in FINISHED):
                sub.finished = True
            if taken or sub.finished:
                sub.wake.set()


def _chunks(items: list[T], size: int) -> Iterable[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _windows_query(windows: list[Window]) -> Select[Event, int]:
    """For each (job, cursor): at most ``BATCH`` events of the job after the cursor, with the cursor they
    answer. Each window is its own ``ORDER BY seq LIMIT`` on the ``(job_id, seq)`` index, so a cursor far
    behind costs one batch, not a scan of the job's events."""
    parts = []
    for job, cursor in windows:
        window = (
            select(Event.id, literal(cursor, Integer).label("cursor"))
            .where(Event.job_id == job, Event.seq > cursor)
            .order_by(Event.seq)
            .limit(BATCH)
            .subquery()
        )
        parts.append(select(window.c.id, window.c.cursor))
    found = union_all(*parts).subquery()
    return (
        select(Event, found.c.cursor)
        .join(found, Event.id == found.c.id)
        .order_by(Event.job_id, found.c.cursor, Event.seq)
    )


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
