"""A real service stack for the worker tests: PostgreSQL (a throwaway schema), Redis (a throwaway key
prefix), the built-in teacher server, ``twofold serve`` and ``twofold worker`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.services import REDIS_URL, free_port, require, temp_schema

REPO = Path(__file__).resolve().parents[2]
TWOFOLD = [sys.executable, "-c", "from twofold.cli.main import cli; cli()"]
FINISHED = {"succeeded", "failed", "cancelled"}


@dataclass
class Stack:
    """The running processes and helpers to drive them over HTTP."""

    env: dict[str, str]
    root: Path
    teacher_url: str
    api_url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def run(self, *args: str) -> str:
        """Run a ``twofold`` command to completion; returns its stdout."""
        out = subprocess.run(
            [*TWOFOLD, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start a ``twofold`` command in its own process group (so it can be killed as a machine would
        die), logging to ``<root>/<name>.log``."""
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [*TWOFOLD, *args],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        """The tail of a process's log."""
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group of ``name`` and reap it."""
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)

    def get(self, path: str, **params: Any) -> Any:
        """GET an API path (asserting 200) and return its JSON."""
        r = httpx.get(f"{self.api_url}{path}", headers=self.headers, params=params, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST to an API path (asserting 2xx) and return its JSON."""
        r = httpx.post(f"{self.api_url}{path}", headers=self.headers, json=body, timeout=30)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def wait(
        self, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float, poll: float = 0.25
    ) -> dict[str, Any]:
        """Poll the job until ``until(job)`` holds; fails with the worker logs after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/v1/jobs/{job_id}")
            if until(job):
                return job
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {n}\n{self.log(n)}" for n in sorted(p.stem for p in self.root.glob("*.log"))
                )
                pytest.fail(
                    f"job {job_id} did not reach the condition in {timeout}s: {job['status']} "
                    f"{[(s['name'], s['status']) for s in job['stages']]}\n{logs}"
                )
            time.sleep(poll)

    def teacher_rows(self) -> int:
        """Completions the stack's own teacher server has generated so far."""
        return int(httpx.get(self.teacher_url.removesuffix("/v1") + "/health", timeout=10).json()["rows"])

    @staticmethod
    def stage(job: dict[str, Any], name: str) -> dict[str, Any]:
        """One stage run of a job object."""
        return next(s for s in job["stages"] if s["name"] == name)

    def all_pages(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a paginated list."""
        items: list[dict[str, Any]] = []
        after = None
        while True:
            page = self.get(path, limit=100, **params, **({"after": after} if after else {}))
            items += page["data"]
            if not page["has_more"]:
                return items
            after = page["data"][-1]["id"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, teacher_server: Any) -> Iterator[Stack]:
    """PostgreSQL + Redis + a private tiny teacher + `twofold serve` (Celery mode) + one worker."""
    require("postgres", "redis")
    root = tmp_path_factory.mktemp("stack")
    prefix = f"tf-test-{uuid.uuid4().hex[:8]}:"
    teacher_url = teacher_server(None, name="tiny-teacher")
    with temp_schema(prefix="tf_workers") as db_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWOFOLD_")}
        env.update(
            TWOFOLD_DATABASE_URL=db_url,
            TWOFOLD_BROKER_URL=REDIS_URL,
            TWOFOLD_BROKER_KEY_PREFIX=prefix,
            TWOFOLD_ARTIFACTS_URL=str(root / "artifacts"),
            TWOFOLD_TEACHER_BASE_URL=teacher_url,
            TWOFOLD_TEACHER_MODEL="tiny-teacher",
            TWOFOLD_HEARTBEAT_INTERVAL_S="0.5",
            TWOFOLD_STALE_AFTER_S="4",
            TWOFOLD_SWEEP_INTERVAL_S="1",
            TWOFOLD_RATE_LIMIT_PER_MINUTE="0",
            PYTHONPATH=str(REPO),
        )
        s = Stack(env=env, root=root, teacher_url=teacher_url)
        try:
            s.run("db", "upgrade")
            key = s.run("apikey", "create", "--tenant", "workers-test").strip().splitlines()[-1]
            s.headers = {"Authorization": f"Bearer {key}"}
            port = free_port()
            s.api_url = f"http://127.0.0.1:{port}"
            s.spawn("api", "serve", "--port", str(port), "--log-level", "warning")
            s.spawn("worker-1", "worker", "--queues", "gpu,io,default", "--loglevel", "info")
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{s.api_url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, s.log("api")
                time.sleep(0.2)
            yield s
        finally:
            for name in list(s.procs):
                s.kill(name, signal.SIGTERM if name == "api" else signal.SIGKILL)
            r = redis.Redis.from_url(REDIS_URL)
            for k in r.scan_iter(f"{prefix}*"):
                r.delete(k)
