"""A fault-injecting OpenAI-compatible teacher: a real HTTP server on loopback that forwards every request to
an upstream teacher (the built-in server) and, instead, fails some of them the way real endpoints do.

Modes:

- ``ok``: a plain counting proxy (every request forwarded).
- ``flaky``: of all calls, ``error_rate`` (20%) answer 500 or 429 with ``Retry-After``, ``hang_rate`` (5%) hang
  until the client gives up (past its timeout), ``malformed_rate`` (2%) answer 200 with a truncated JSON body;
  the rest are forwarded. The choice is a pure function of (seed, method, path, body, how many times this
  exact request was seen), so a run is reproducible whatever order concurrent requests arrive in, and a retry
  of the same request gets a fresh draw.
- ``down``: every call answers 503 (an endpoint that stays down).

``down_after=N`` switches to ``down`` once N POSTs have been forwarded (an endpoint that dies mid-stage).

Use from tests: ``with FaultyTeacher(upstream_url, seed=0) as ft: ft.url`` (base URL ending in ``/v1``);
``ft.mode = "down"``; ``ft.stats()``. From a shell:
``python -m tests.reliability.faulty_teacher --upstream http://127.0.0.1:8000/v1 --port 8001``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import socket
import threading
import time
from collections import Counter
from typing import Any, Literal

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Mode = Literal["ok", "flaky", "down"]
MODES: tuple[str, ...] = ("ok", "flaky", "down")


class FaultyTeacher:
    """The proxy server; runs uvicorn in a background thread of the calling process."""

    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        mode: Mode = "flaky",
        error_rate: float = 0.20,
        hang_rate: float = 0.05,
        malformed_rate: float = 0.02,
        hang_s: float = 60.0,
        retry_after_s: int = 1,
        down_after: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.upstream = upstream.rstrip("/")
        self.seed, self.mode = seed, mode
        self.error_rate, self.hang_rate, self.malformed_rate = error_rate, hang_rate, malformed_rate
        self.hang_s, self.retry_after_s, self.down_after = hang_s, retry_after_s, down_after
        self.host = host
        self.port = port or _free_port(host)
        self.url = f"http://{host}:{self.port}/v1"
        self._seen: Counter[str] = Counter()
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None

    # --- control -----------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counters: ``calls`` (all), ``forwarded``, ``forwarded_post``, and one per injected fault kind
        (``error_500``, ``error_429``, ``hang``, ``malformed``, ``down``); ``faults`` is their sum."""
        with self._lock:
            out = dict(self._counts)
        for key in (
            "calls",
            "forwarded",
            "forwarded_post",
            "error_500",
            "error_429",
            "hang",
            "malformed",
            "down",
        ):
            out.setdefault(key, 0)
        out["faults"] = sum(out[k] for k in ("error_500", "error_429", "hang", "malformed", "down"))
        return out

    def start(self) -> FaultyTeacher:
        """Start serving and wait until the port accepts connections."""
        app = Starlette(
            routes=[
                Route("/_faults", self._control, methods=["GET", "POST"]),
                Route("/{path:path}", self._handle, methods=["GET", "POST"]),
            ]
        )
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="faulty-teacher", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"faulty teacher did not start on {self.host}:{self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Stop the server (hanging requests end at once)."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)

    def __enter__(self) -> FaultyTeacher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- serving -----------------------------------------------------------------------------------------------
    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _draw(self, request: Request, body: bytes) -> float:
        digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode() + body).hexdigest()
        with self._lock:
            occurrence = self._seen[digest]
            self._seen[digest] += 1
        return random.Random(f"{self.seed}:{digest}:{occurrence}").random()

    async def _control(self, request: Request) -> Response:
        """GET: the counters and mode; POST ``{"mode": ...}``: switch mode (for use from other processes)."""
        if request.method == "POST":
            mode = (await request.json()).get("mode")
            if mode not in MODES:
                return JSONResponse({"error": f"mode must be one of {MODES}"}, status_code=400)
            self.mode = mode
        return JSONResponse({"mode": self.mode, **self.stats()})

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        self._count("calls")
        if self.mode == "down":
            self._count("down")
            return _error(503, "the teacher is down (injected)")
        if self.mode == "flaky":
            u = self._draw(request, body)
            if u < self.error_rate:
                if u < self.error_rate / 2:
                    self._count("error_500")
                    return _error(500, "internal error (injected)")
                self._count("error_429")
                return _error(429, "slow down (injected)", {"Retry-After": str(self.retry_after_s)})
            if u < self.error_rate + self.hang_rate:
                self._count("hang")
                deadline = time.monotonic() + self.hang_s
                while time.monotonic() < deadline and not await request.is_disconnected():
                    await asyncio.sleep(0.1)
                return _error(504, "hung (injected)")
            if u < self.error_rate + self.hang_rate + self.malformed_rate:
                self._count("malformed")
                return Response(b'{"id": "cmpl-x", "choices": [{"text": "4', media_type="application/json")
        return await self._forward(request, body)

    async def _forward(self, request: Request, body: bytes) -> Response:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(600.0))
        path = request.url.path.removeprefix("/v1")
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        upstream = await self._client.request(
            request.method,
            f"{self.upstream}{path}",
            content=body,
            headers=headers,
            params=request.query_params,
        )
        self._count("forwarded")
        if request.method == "POST":
            self._count("forwarded_post")
            if self.down_after is not None and self.stats()["forwarded_post"] >= self.down_after:
                self.mode, self.down_after = "down", None
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type"),
        )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "error": {"message": message, "type": "server_error", "param": None, "code": None}
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def main() -> None:
    """Run the proxy in the foreground until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="upstream base URL, ending in /v1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=MODES, default="flaky")
    args = parser.parse_args()
    ft = FaultyTeacher(args.upstream, seed=args.seed, mode=args.mode, port=args.port).start()
    print(
        f"faulty teacher on {ft.url} -> {ft.upstream} (mode {ft.mode}); GET /_faults for counters", flush=True
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        ft.stop()


if __name__ == "__main__":
    main()
