"""Real twofold API servers for the SDK tests: ``twofold serve`` subprocesses on loopback ports.

``api_server`` (session): the embedded mode (SQLite, jobs run in-process, no broker) with the shared tiny
teacher for the presets. ``aux_server`` (session): a second server with a tiny rate limit and upload limit, and
a Celery broker URL that points at a loopback port which a test opens and closes (a TCP relay to the real
Redis), so that ``/readyz`` really answers 503 and then 200. ``client`` is an SDK client of ``api_server`` and
``smoke`` the ``smoke`` preset run there to the end once per session (shared by the SDK and CLI tests).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import twofold_client as tc
from tests.sdk.servers import REDIS, ApiServer, TcpRelay, free_port, start_server, stop_server


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory, tiny_teacher_url: str) -> Iterator[ApiServer]:
    """The embedded server: SQLite, in-process runner, presets pointed at the shared tiny teacher."""
    server = start_server(
        tmp_path_factory.mktemp("api"),
        teacher_base_url=tiny_teacher_url,
        teacher_model="tiny-teacher",
        max_upload_bytes="65536",
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def broker_relay() -> Iterator[TcpRelay]:
    """A relay to the real Redis on a free port, initially closed (the broker is down)."""
    relay = TcpRelay(free_port(), REDIS)
    yield relay
    relay.close()


@pytest.fixture(scope="session")
def aux_server(tmp_path_factory: pytest.TempPathFactory, broker_relay: TcpRelay) -> Iterator[ApiServer]:
    """A server with a broker behind ``broker_relay``, 3 requests a minute per key and 2 KB uploads."""
    server = start_server(
        tmp_path_factory.mktemp("api-aux"),
        broker_url=f"redis://127.0.0.1:{broker_relay.port}/15",
        rate_limit_per_minute="3",
        max_upload_bytes="2048",
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def client(api_server: ApiServer) -> tc.Client:
    """A client of the embedded server."""
    return tc.Client(base_url=api_server.url, api_key=api_server.api_key, timeout=30)


@pytest.fixture(scope="session")
def smoke(client: tc.Client) -> dict[str, Any]:
    """The ``smoke`` preset run to the end: created, its events streamed live, then waited for."""
    job = client.jobs.create(preset="smoke", metadata={"suite": "sdk", "run": uuid.uuid4().hex[:8]})
    assert job.status == "pending" and job.preset == "smoke"
    with client.jobs.events(job.id, stream=True) as stream:
        live = list(stream)
    updates: list[tc.Job] = []
    finished = client.jobs.wait(job.id, poll_interval=0.5, timeout=900, on_update=updates.append)
    return {"created": job, "job": finished, "live": live, "updates": updates}
