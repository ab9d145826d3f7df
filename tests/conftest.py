"""Shared fixtures: the built-in teacher server as a real subprocess on a free loopback port.

``teacher_server`` (session) starts servers on demand: ``url = teacher_server(model_dir, name="my-teacher")``
serves a local HF checkpoint (``model_dir=None``: a freshly initialised tiny-teacher) and returns its base URL
(ending in ``/v1``); ``teacher_server.stop(url)`` stops one early; all are stopped at the end of the session.
``tiny_teacher_url`` is the base URL of one shared tiny-teacher server (model name ``tiny-teacher``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from twofold.teacher_server.process import TeacherProcess, start


class TeacherServers:
    """Starts teacher servers for tests and stops them all at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, TeacherProcess] = {}

    def __call__(
        self, model_dir: str | os.PathLike[str] | None = None, *, name: str | None = None, **kw: object
    ) -> str:
        """Start a server for ``model_dir`` (None: tiny-teacher) and return its base URL; ``kw`` go to
        ``teacher_server.process.start`` (threads, max_batch_size, seed, timeout_s, ...)."""
        log_path = self.log_dir / f"teacher-{len(self.running)}.log"
        server = start(model_dir, name=name, log_path=log_path, **kw)  # type: ignore[arg-type]
        self.running[server.url] = server
        return server.url

    def process(self, url: str) -> TeacherProcess:
        """The running server behind ``url`` (its log, its process)."""
        return self.running[url]

    def stop(self, url: str) -> None:
        """Stop the server behind ``url``."""
        self.running.pop(url).stop()

    def stop_all(self) -> None:
        """Stop every server this helper started."""
        for url in list(self.running):
            self.stop(url)


@pytest.fixture(scope="session")
def teacher_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeacherServers]:
    """A factory of real teacher servers, torn down at the end of the session."""
    servers = TeacherServers(tmp_path_factory.mktemp("teacher-servers"))
    yield servers
    servers.stop_all()


@pytest.fixture(scope="session")
def tiny_teacher_url(teacher_server: TeacherServers) -> str:
    """Base URL (``http://127.0.0.1:PORT/v1``) of a shared server with a random tiny-teacher."""
    return teacher_server(None, name="tiny-teacher")


@pytest.fixture(scope="session")
def arith_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny arithmetic teacher trained on 3,000 worked solutions (about a minute on one CPU thread), once per
    session; low accuracy, but its answers parse, so every pipeline stage has data."""
    import torch

    from twofold.core.tiny_teacher import ensure_tiny_teacher

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy 2-core machine are several times slower than one
    try:
        return ensure_tiny_teacher(
            tmp_path_factory.mktemp("arith-teacher"), recipe={"examples": 3000, "target_accuracy": None}
        )
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def arith_teacher_url(teacher_server: TeacherServers, arith_teacher_dir: Path) -> str:
    """Base URL of a built-in teacher server serving :func:`arith_teacher_dir` as ``arith-teacher``."""
    return teacher_server(arith_teacher_dir, name="arith-teacher")
