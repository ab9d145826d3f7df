"""Server-Sent Events: a line decoder (WHATWG rules) and event streams that reconnect with Last-Event-ID, through
server restarts, within a reconnect budget."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from ._base_client import Reconnect
from ._exceptions import APIConnectionError, APIError, APITimeoutError
from .types import Event

__all__ = ["ServerSentEvent", "SSEDecoder", "EventStream", "AsyncEventStream"]

#: The event type the server sends when the job has finished and the stream is over.
END_EVENT = "end"


@dataclass(frozen=True)
class ServerSentEvent:
    """One decoded SSE message."""

    event: str | None
    data: str
    id: str | None
    retry: int | None

    def json(self) -> Any:
        """The ``data`` field parsed as JSON."""
        return json.loads(self.data)


class SSEDecoder:
    """Turns lines of a ``text/event-stream`` body into :class:`ServerSentEvent` objects.

    Feed it every line (without its line ending); a blank line ends a message. ``last_event_id`` survives
    across messages, as the spec requires, so it is what a reconnect sends back.
    """

    def __init__(self, last_event_id: str | None = None) -> None:
        self.last_event_id = last_event_id
        self.retry: int | None = None
        self._event: str | None = None
        self._data: list[str] = []
        self._has_id = False

    def decode(self, line: str) -> ServerSentEvent | None:
        """Consume one line; return a message when ``line`` is the blank line that ends it."""
        if not line:
            if self._event is None and not self._data and not self._has_id:
                return None
            sse = ServerSentEvent(self._event, "\n".join(self._data), self.last_event_id, self.retry)
            self._event, self._data, self._has_id = None, [], False
            return sse
        if line.startswith(":"):  # a comment, used as a keep-alive
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id, self._has_id = value, True
        elif name == "retry" and value.isdigit():
            self.retry = int(value)
        return None

    def iter_lines(self, lines: Iterator[str]) -> Iterator[ServerSentEvent]:
        """Decode a whole sequence of lines."""
        for line in lines:
            sse = self.decode(line)
            if sse is not None:
                yield sse


class _StreamState:
    """Bookkeeping shared by the sync and async streams: what to yield, when to stop, how long to wait."""

    def __init__(self, reconnect_timeout: float, last_event_id: str | None) -> None:
        self.reconnect = Reconnect(reconnect_timeout)
        self.finished = False
        self.decoder = SSEDecoder(last_event_id)

    def headers(self) -> dict[str, str]:
        """The headers of the next (re)connection: ``Last-Event-ID`` once an event has been seen."""
        last = self.decoder.last_event_id
        return {"Last-Event-ID": last} if last else {}

    def on_line(self, line: str) -> Event | None:
        """Decode a line; return the Event it completes, if any (END and keep-alives give None)."""
        sse = self.decoder.decode(line)
        if line.startswith(":") or sse is not None:
            self.reconnect.ok()  # a message or a keep-alive: the connection is healthy
        if sse is None:
            return None
        if sse.event == END_EVENT:
            self.finished = True
            return None
        if not sse.data:
            return None
        return Event.model_validate_json(sse.data)

    def on_failure(self, exc: Exception) -> float:
        """The stream could not connect, or ended before ``end``: the delay before reconnecting (the server's
        ``retry:`` first, then doubling), or raise when ``exc`` is not an outage or the budget is spent."""
        base = self.decoder.retry / 1000.0 if self.decoder.retry is not None else None
        return self.reconnect.delay(exc, base=base)


def _dropped(request: httpx.Request, exc: httpx.TransportError | None) -> APIConnectionError:
    """The error of a stream that ended before ``end`` (``exc``: how, when the transport says)."""
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(request=request)
    reason = f"{type(exc).__name__}: {exc}" if exc is not None else "closed by the server"
    return APIConnectionError(
        request=request, message=f"event stream ended before the job finished ({reason})"
    )


class EventStream:
    """An iterator over a job's events, live. Reconnects with ``Last-Event-ID`` when the connection drops or
    the server cannot be reached, with backoff, for up to ``reconnect_timeout`` seconds of outage, and stops
    when the server sends ``event: end`` (the job finished). Use it as a context manager or call
    :meth:`close` to stop early."""

    def __init__(
        self,
        connect: Callable[[dict[str, str]], httpx.Response],
        *,
        reconnect_timeout: float,
        last_event_id: str | None = None,
    ) -> None:
        self._connect = connect
        self._state = _StreamState(reconnect_timeout, last_event_id)
        self._response: httpx.Response | None = None
        self._closed = False

    def __iter__(self) -> Iterator[Event]:
        state = self._state
        while not state.finished and not self._closed:
            try:
                self._response = response = self._connect(state.headers())
            except APIError as exc:  # the server is down or restarting (else this raises it)
                time.sleep(state.on_failure(exc))
                continue
            error: httpx.TransportError | None = None
            try:
                for line in response.iter_lines():
                    event = state.on_line(line)
                    if event is not None:
                        yield event
                    if state.finished or self._closed:
                        return
            except httpx.TransportError as exc:
                error = exc
            finally:
                response.close()
            if not self._closed:
                time.sleep(state.on_failure(_dropped(response.request, error)))

    @property
    def last_event_id(self) -> str | None:
        """The ``id`` (sequence number) of the last event received."""
        return self._state.decoder.last_event_id

    def close(self) -> None:
        """Stop the stream and release its connection."""
        self._closed = True
        if self._response is not None:
            self._response.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEventStream:
    """The asyncio twin of :class:`EventStream`: ``async for event in stream``."""

    def __init__(
        self,
        connect: Callable[[dict[str, str]], Awaitable[httpx.Response]],
        *,
        reconnect_timeout: float,
        last_event_id: str | None = None,
    ) -> None:
        self._connect = connect
        self._state = _StreamState(reconnect_timeout, last_event_id)
        self._response: httpx.Response | None = None
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[Event]:
        state = self._state
        while not state.finished and not self._closed:
            try:
                self._response = response = await self._connect(state.headers())
            except APIError as exc:  # the server is down or restarting (else this raises it)
                await asyncio.sleep(state.on_failure(exc))
                continue
            error: httpx.TransportError | None = None
            try:
                async for line in response.aiter_lines():
                    event = state.on_line(line)
                    if event is not None:
                        yield event
                    if state.finished or self._closed:
                        return
            except httpx.TransportError as exc:
                error = exc
            finally:
                await response.aclose()
            if not self._closed:
                await asyncio.sleep(state.on_failure(_dropped(response.request, error)))

    @property
    def last_event_id(self) -> str | None:
        """The ``id`` (sequence number) of the last event received."""
        return self._state.decoder.last_event_id

    async def close(self) -> None:
        """Stop the stream and release its connection."""
        self._closed = True
        if self._response is not None:
            await self._response.aclose()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
