"""Request body limits enforced while the body streams in: a size limit per route, and a length limit per line
of an uploaded file, so an oversized body or line is refused (413) without being read into memory or onto disk
first."""

from __future__ import annotations

from collections.abc import Callable

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twofold.api.errors import error_response


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the limit (FastAPI re-raises HTTP exceptions met while
    parsing a body, so this reaches the error handlers as a 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body is over the {limit}-byte limit")


class LineTooLong(HTTPException):
    """Raised from ``receive`` when a line of an uploaded file passes the per-line limit (a 413 whose
    ``param`` names the line)."""

    def __init__(self, line: int, limit: int) -> None:
        super().__init__(
            status_code=413,
            detail=f"line {line} is over the {limit}-byte line limit; each line must be one JSON object",
        )
        self.param = f"line {line}"


class LineCounter:
    """Numbers the lines of bytes fed in pieces and raises :class:`LineTooLong` as soon as the current line
    (its newline not counted) passes ``limit`` bytes, before the rest of it arrives."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.line = 1
        self.length = 0

    def feed(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        """Count ``data[start:end]``."""
        end = len(data) if end is None else end
        first = data.find(b"\n", start, end)
        if first < 0:
            self._grow(end - start)
            return
        self._grow(first - start)  # the rest of the current line
        last = data.rfind(b"\n", start, end)
        if last - first - 1 > self.limit:  # a whole line inside this piece may be too long: walk them
            pos = first + 1
            while pos <= last:
                nl = data.find(b"\n", pos, last + 1)
                self.line += 1
                self.length = 0
                self._grow(nl - pos)
                pos = nl + 1
            self.line += 1
        else:
            self.line += data.count(b"\n", first, last + 1)
        self.length = 0
        self._grow(end - last - 1)  # the start of the line that continues in the next piece

    def _grow(self, n: int) -> None:
        self.length += n
        if self.length > self.limit:
            raise LineTooLong(self.line, self.limit)


class MultipartLineGuard:
    """Follows a ``multipart/form-data`` body as it streams in and counts the lines of each file part with a
    :class:`LineCounter`. It only watches: the route parses the body itself, and a body that is not valid
    multipart is left for that parser to refuse."""

    def __init__(self, boundary: bytes, limit: int) -> None:
        self.limit = limit
        self.counter: LineCounter | None = None
        self._header = b""
        self._disposition = b""
        self._parser: MultipartParser | None = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
            },
        )

    @classmethod
    def for_request(cls, scope: Scope, limit: int | None) -> MultipartLineGuard | None:
        """A guard for this request when it has a multipart body and a line limit applies."""
        if limit is None:
            return None
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            return None
        return cls(boundary, limit)

    def feed(self, chunk: bytes) -> None:
        """Watch the next piece of the body (raises :class:`LineTooLong`)."""
        if self._parser is None or not chunk:
            return
        try:
            self._parser.write(chunk)
        except MultipartParseError:
            self._parser = None

    def _part_begin(self) -> None:
        self.counter = None
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition += data[start:end]

    def _header_end(self) -> None:
        self._header = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        self.counter = LineCounter(self.limit) if b"filename" in options else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.counter is not None:
            self.counter.feed(data, start, end)


class BodyLimitMiddleware:
    """Refuses bodies above ``limit_for(scope)`` bytes: at once when ``Content-Length`` says so, else as soon
    as the streamed bytes pass the limit. Where ``line_limit_for(scope)`` gives a number, each file of a
    multipart body is also held to that many bytes a line while it streams."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit_for: Callable[[Scope], int],
        line_limit_for: Callable[[Scope], int | None] = lambda scope: None,
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.line_limit_for = line_limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = error_response(
                413, "payload_too_large", f"request body is over the {limit}-byte limit"
            )
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        received = 0
        guard = MultipartLineGuard.for_request(scope, self.line_limit_for(scope))

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                received += len(body)
                if received > limit:
                    raise BodyTooLarge(limit)
                if guard is not None:
                    guard.feed(body)
            return message

        await self.app(scope, limited, send)
