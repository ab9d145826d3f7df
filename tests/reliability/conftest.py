"""One real service stack for the reliability tests, shared by the whole directory: PostgreSQL (a throwaway
schema), a private ``redis-server`` on its own port (so that restarting it disturbs nobody else), the
built-in tiny teacher behind :class:`FaultyTeacher` (a counting, fault-injecting proxy), ``twofold serve``
and one ``twofold worker --beat`` whose database connections carry their own ``application_name`` (so a test
can terminate exactly those).

Jobs use :func:`rel_spec`: a micro student and one prompt per teacher request, so that a crash loses at most
one in-flight request out of ~160 and each stage lasts a few seconds on two busy cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.reliability.faulty_teacher import FaultyTeacher
from tests.services import free_port, require, temp_schema
from tests.workers.conftest import Stack
from twofold.store.db import make_engine

WORKER_APP = "tf-reliability-worker"
SECRET = "sk-reliability-" + uuid.uuid4().hex  # a teacher API key that must never come back out
FINISHED = ("succeeded", "failed", "cancelled")


def rel_spec(teacher_url: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """A small job spec on ``teacher_url`` (with the secret teacher key), ``sections`` merged in."""
    spec: dict[str, Any] = {
        "teacher": {
            "base_url": teacher_url,
            "model": "tiny-teacher",
            "api_key": SECRET,
            "temperatures": [0.7, 1.0],
            "n": 2,
            "max_tokens": 24,
            "prompts_per_request": 1,
            "concurrency": 1,
            "seed": None,  # unseeded requests share the teacher server's batches
            "timeout_s": 2.0,
            "max_retries": 8,
            "backoff_s": 0.05,
            "backoff_max_s": 0.5,
        },
        "student": {"preset": "micro"},
        "data": {"task": "arithmetic", "train_size": 64, "test_size": 32, "seed": 0},
        "sft": {"epochs": 20, "batch_size": 4, "max_length": 96},
        "labels": {"student_samples": 24, "min_vote_share": 0.0, "max_new_tokens": 32},
        "reward_model": {"init": "sft", "epochs": 2, "batch_size": 16, "max_length": 96},
        "rl": {
            "algo": "ppo",
            "reward": "reward_model",
            "steps": 30,
            "batch_size": 8,
            "mini_batch_size": 4,
            "ppo_epochs": 1,
            "max_new_tokens": 24,
            "save_every": 5,
        },
        "evaluation": {"max_new_tokens": 24, "batch_size": 2},  # many small batches: a kill lands mid-stage
        "threads": 1,
        "seed": 0,
    }
    for name, values in sections.items():
        spec[name] = {**spec[name], **values}
    return spec


class RedisServer:
    """A private ``redis-server`` on a loopback port, without persistence (as the machine's own runs)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        import redis

        log = (self.root / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
                return
            except redis.RedisError:
                assert self.proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        """Kill the server (its queues are lost: it keeps nothing on disk)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class RelStack(Stack):
    """The workers' test :class:`Stack` plus the fault injectors of this directory."""

    redis: RedisServer | None = None
    faulty: FaultyTeacher | None = None
    engine: Engine | None = None
    workers_started: int = 0

    @contextmanager
    def settings(self, **values: str) -> Iterator[None]:
        """Run the commands started inside with these ``TWOFOLD_<NAME>`` settings."""
        saved = self.env
        self.env = {**saved, **{f"TWOFOLD_{k.upper()}": v for k, v in values.items()}}
        try:
            yield
        finally:
            self.env = saved

    def spawn_worker(self) -> str:
        """Start a new worker (all queues, with the sweeper's scheduler); returns its process name."""
        self.workers_started += 1
        name = f"worker-{self.workers_started}"
        with self.settings(database_url=self.env["TWOFOLD_DATABASE_URL"] + f"&application_name={WORKER_APP}"):
            self.spawn(name, "worker", "--queues", "gpu,io,default", "--beat", "--loglevel", "info")
        return name

    def spawn_api(self, name: str, port: int | None = None, **values: str) -> tuple[str, str]:
        """Start a ``twofold serve`` with these settings (a new ``database_url`` is migrated first), on
        ``port`` (default: a free one), and an API key on its database; returns (base URL, key) once it is
        ready."""
        port = port or free_port()
        with self.settings(**values):
            if "database_url" in values:
                self.run("db", "upgrade")
            key = self.run("apikey", "create", "--tenant", f"{name}-tenant").strip().splitlines()[-1]
            self.spawn(name, "serve", "--port", str(port), "--log-level", "info")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return url, key
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, self.log(name)
            time.sleep(0.2)

    def worker(self) -> str:
        """The name of the running worker."""
        return next(n for n in self.procs if n.startswith("worker-"))

    def submit(self, spec: dict[str, Any]) -> str:
        """POST a job and return its id."""
        return str(self.post("/v1/jobs", {"spec": spec})["id"])

    def finish(self, job_id: str, timeout: float = 240) -> dict[str, Any]:
        """Wait until the job is finished and return it."""
        return self.wait(job_id, lambda j: j["status"] in FINISHED, timeout=timeout)

    def sql(self, query: str, **params: Any) -> list[Any]:
        """Run a statement on the stack's schema (committed); returns its rows, if any."""
        assert self.engine is not None
        with self.engine.begin() as conn:
            result = conn.execute(text(query), params)
            return list(result) if result.returns_rows else []

    def teacher_counts(self) -> tuple[int, int]:
        """(POST requests, completion rows) the upstream teacher server has served so far."""
        health = httpx.get(self.teacher_url.removesuffix("/v1") + "/health", timeout=10).json()
        return int(health["requests"]), int(health["rows"])


@pytest.fixture(scope="session")
def rel(tmp_path_factory: pytest.TempPathFactory, teacher_server: Any) -> Iterator[RelStack]:
    """The running stack (see the module docstring)."""
    require("postgres")
    root = tmp_path_factory.mktemp("reliability")
    redis_server = RedisServer(root)
    redis_server.start()
    teacher_url = teacher_server(None, name="tiny-teacher")
    faulty = FaultyTeacher(teacher_url, seed=0, mode="ok", hang_s=30).start()
    with temp_schema(prefix="tf_reliability") as db_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWOFOLD_")}
        env.update(
            TWOFOLD_DATABASE_URL=db_url,
            TWOFOLD_BROKER_URL=redis_server.url,
            TWOFOLD_ARTIFACTS_URL=str(root / "artifacts"),
            TWOFOLD_TEACHER_BASE_URL=faulty.url,
            TWOFOLD_TEACHER_MODEL="tiny-teacher",
            TWOFOLD_HEARTBEAT_INTERVAL_S="0.5",
            TWOFOLD_STALE_AFTER_S="3",
            TWOFOLD_SWEEP_INTERVAL_S="1",
            TWOFOLD_RATE_LIMIT_PER_MINUTE="0",
            TWOFOLD_MAX_UPLOAD_BYTES=str(1 << 20),
            PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        )
        s = RelStack(env=env, root=root, teacher_url=teacher_url, redis=redis_server, faulty=faulty)
        s.engine = make_engine(db_url)
        try:
            s.run("db", "upgrade")
            s.api_url, key = s.spawn_api("api")
            s.headers = {"Authorization": f"Bearer {key}"}
            s.spawn_worker()
            yield s
        finally:
            for name in list(s.procs):
                s.kill(name, signal.SIGTERM if name == "api" else signal.SIGKILL)
            s.engine.dispose()
            faulty.stop()
            redis_server.stop()


def assert_complete(rel: RelStack, job_id: str, spec: dict[str, Any]) -> dict[str, int]:
    """Assert that a succeeded job's rows have no duplicates and no gaps: every teacher sample key once, labels
    numbered 0..N-1 with unique keys and the counts the stats promise, one complete checkpoint per training
    stage (its files match the recorded sha256), events numbered 1..N. Returns the counts."""
    from twofold.store.artifacts import dir_digest

    teacher, data, labels_cfg = spec["teacher"], spec["data"], spec["labels"]
    per_question = len(teacher["temperatures"]) * teacher["n"]
    keys = rel.sql("SELECT question_id, temperature, index FROM teacher_samples WHERE job_id = :j", j=job_id)
    assert len(keys) == len(set(keys)) == data["train_size"] * per_question, "teacher samples"
    by_question: dict[str, set[tuple[float, int]]] = {}
    for q, t, i in keys:
        by_question.setdefault(q, set()).add((t, i))
    expected = {(round(t, 4), i) for t in teacher["temperatures"] for i in range(teacher["n"])}
    assert all({(round(t, 4), i) for t, i in got} == expected for got in by_question.values()), "sample gap"

    stats = rel.sql("SELECT label_stats FROM jobs WHERE id = :j", j=job_id)[0][0]
    labels = rel.sql(
        "SELECT seq, question_id, source, temperature, index FROM reward_labels WHERE job_id = :j ORDER BY seq",
        j=job_id,
    )
    assert [r[0] for r in labels] == list(range(len(labels))) and len(labels) == stats["labels"] > 0
    assert len({r[1:] for r in labels}) == len(labels), "duplicate label"
    kept = stats["questions_kept"]
    assert stats["teacher_labels"] == kept * per_question
    assert stats["student_labels"] == kept * labels_cfg["student_samples"]
    students = rel.sql("SELECT count(*) FROM student_samples WHERE job_id = :j", j=job_id)[0][0]
    assert students == kept * labels_cfg["student_samples"]

    checkpoints = rel.sql(
        "SELECT stage, kind, step, uri, sha256 FROM checkpoints WHERE job_id = :j ORDER BY created_at",
        j=job_id,
    )
    assert [(c[0], c[1]) for c in checkpoints] == [
        ("sft", "policy"),
        ("reward_model", "reward_model"),
        ("rl", "policy"),
    ]
    assert checkpoints[-1][2] == spec["rl"]["steps"]
    artifacts = Path(rel.env["TWOFOLD_ARTIFACTS_URL"])
    stored = sorted(p.name for p in (artifacts / "jobs" / job_id / "checkpoints").iterdir())
    assert stored == sorted(Path(c[3]).name for c in checkpoints), "stray or missing checkpoint directory"
    for c in checkpoints:
        assert dir_digest(artifacts / c[3])[1] == c[4], f"checkpoint {c[3]} does not match its sha256"

    seqs = [r[0] for r in rel.sql("SELECT seq FROM events WHERE job_id = :j ORDER BY seq", j=job_id)]
    assert seqs == list(range(1, len(seqs) + 1)), "event numbers have gaps or repeats"
    return {
        "teacher_samples": len(keys),
        "labels": len(labels),
        "checkpoints": len(checkpoints),
        "events": len(seqs),
    }


def assert_secret_kept(rel: RelStack, job_id: str) -> int:
    """Assert that the teacher key :data:`SECRET` of a job's spec appears nowhere a user or an operator could
    read it: API answers (job, list, stages, events, the SSE stream, samples), the dashboard's pages and
    scripts, every process log of the stack, and the events table. Returns the bytes searched."""
    base = f"{rel.api_url}"
    auth = rel.headers
    paths = [
        f"/v1/jobs/{job_id}",
        "/v1/jobs?limit=100",
        f"/v1/jobs/{job_id}/stages",
        f"/v1/jobs/{job_id}/events?limit=100",
        f"/v1/jobs/{job_id}/events?stream=true",
        f"/v1/jobs/{job_id}/samples?limit=100",
    ]
    seen = [httpx.get(base + p, headers=auth, timeout=60) for p in paths]
    assert all(r.status_code == 200 for r in seen), [(r.url, r.status_code) for r in seen]
    assert rel.get(f"/v1/jobs/{job_id}")["spec"]["teacher"]["api_key"] == "***"
    cookie = {"twofold_dashboard": auth["Authorization"].removeprefix("Bearer ")}
    pages = ["/dashboard/jobs", f"/dashboard/jobs/{job_id}", "/dashboard/new"]
    pages += [f"/dashboard/static/{n}" for n in ("common.js", "job.js", "jobs.js", "new.js", "charts.js")]
    for page in pages:
        r = httpx.get(base + page, cookies=cookie, timeout=30, follow_redirects=False)
        assert r.status_code == 200, (page, r.status_code)
        seen.append(r)
    texts = [r.text for r in seen]
    texts += [p.read_text(errors="replace") for p in rel.root.glob("*.log")]
    texts += [
        str(row) for row in rel.sql("SELECT type, message, data FROM events WHERE job_id = :j", j=job_id)
    ]
    texts += [str(row) for row in rel.sql("SELECT spec, error_message FROM jobs WHERE id = :j", j=job_id)]
    texts += [
        str(row)
        for row in rel.sql("SELECT error, config, metrics FROM stage_runs WHERE job_id = :j", j=job_id)
    ]
    leaks = [t[max(0, t.find(SECRET) - 200) : t.find(SECRET) + 50] for t in texts if SECRET in t]
    assert not leaks, leaks
    # the key is stored, in its own column, because the workers must send it
    assert rel.sql("SELECT teacher_api_key FROM jobs WHERE id = :j", j=job_id)[0][0] == SECRET
    return sum(len(t) for t in texts)
