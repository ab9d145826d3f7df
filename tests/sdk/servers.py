"""Real twofold API servers for the SDK tests: ``twofold serve`` subprocesses on loopback ports, and a TCP relay
that takes a real service (Redis) down and brings it back."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
REDIS = ("127.0.0.1", 6379)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ApiServer:
    """A running ``twofold serve`` and two API keys of different tenants."""

    url: str
    api_key: str
    other_key: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """The server's output so far (for failure messages)."""
        return self.log_path.read_text(errors="replace")[-5000:]


def _create_key(database_url: str, tenant: str) -> str:
    from twofold.store.db import make_engine, make_session_factory, transaction
    from twofold.store.keys import create_api_key

    engine = make_engine(database_url)
    try:
        with transaction(make_session_factory(engine)) as session:
            return create_api_key(session, tenant_name=tenant)[1]
    finally:
        engine.dispose()


def start_server(root: Path, **settings: str) -> ApiServer:
    """``twofold serve`` with ``TWOFOLD_<NAME>`` settings on a free port; waits for /healthz."""
    root.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{root / 'twofold.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOFOLD_")}
    env.update(
        {
            "TWOFOLD_DATABASE_URL": database_url,
            "TWOFOLD_ARTIFACTS_URL": str(root / "artifacts"),
            "TWOFOLD_RATE_LIMIT_PER_MINUTE": "0",
            **{f"TWOFOLD_{k.upper()}": v for k, v in settings.items()},
        }
    )
    port = free_port()
    log_path = root / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "from twofold.cli.main import cli; cli()", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--migrate", "--log-level", "warning"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"twofold serve exited {process.returncode}:\n{log_path.read_text()[-5000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"twofold serve did not start in 120 s:\n{log_path.read_text()[-5000:]}")
        time.sleep(0.2)
    return ApiServer(
        url,
        _create_key(database_url, "sdk-tests"),
        _create_key(database_url, "other-tenant"),
        process,
        log_path,
    )


def stop_server(server: ApiServer) -> None:
    """Stop the server (SIGTERM, then SIGKILL)."""
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


class TcpRelay:
    """Forwards connections from a loopback port to a real service while open; refuses them once closed."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []

    def open(self) -> None:
        """Start accepting and relaying."""
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        """Stop accepting and cut every relayed connection."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in self._conns:
            conn.close()
        self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.target)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
