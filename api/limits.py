"""Request body size limits enforced while the body streams in, so an oversized upload is refused (413)
without being read into memory or onto disk first."""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twofold.api.errors import error_response


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the limit (FastAPI re-raises HTTP exceptions met while
    parsing a body, so this reaches the error handlers as a 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body is over the {limit}-byte limit")


class BodyLimitMiddleware:
    """Refuses bodies above ``limit_for(scope)`` bytes: at once when ``Content-Length`` says so, else as soon
    as the streamed bytes pass the limit."""

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

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

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)
