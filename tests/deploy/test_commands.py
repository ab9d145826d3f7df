"""The commands the Compose file and the manifests run, run here as processes: every `twofold` command line
accepts its exact options, and the cheap ones really run against the local PostgreSQL and Redis: the migration
job and the schema wait, the API with its probes and the image's health check, a worker and the health check
that pings it, the scheduler that runs the sweeper, the tiny teacher with its probe. Host and port values are
swapped for loopback and a free port; everything else is the manifests' own text."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.deploy.manifests import DEPLOY, DOCKERFILE, Command, containers, find, option, stages, tool
from tests.services import REDIS_URL, free_port, require, temp_schema
from twofold.store.migrate import upgrade
from twofold.store.stages import Queue

RECIPE = DEPLOY / "jobs" / "gsm8k-qwen2.5.yaml"


def _one(commands: list[Command], first: str, *flags: str) -> tuple[str, ...]:
    """The one distinct command line that starts with ``first`` and has ``flags`` (asserting all agree)."""
    found = {c.argv for c in commands if c.argv[0] == first and all(f in c.argv for f in flags)}
    assert len(found) == 1, found
    return found.pop()


def _queues_cmd(commands: list[Command], queues: str) -> tuple[str, ...]:
    found = {c.argv for c in commands if c.argv[0] == "worker" and option(c.argv, "--queues") == queues}
    assert len(found) == 1, found
    return found.pop()


def _on_loopback(argv: tuple[str, ...], port: int) -> list[str]:
    """``argv`` with its --host value replaced by 127.0.0.1 and its --port value by ``port``."""
    out = list(argv)
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        i = out.index(flag)
        out[i + 1] = value
    return out


def test_every_command_accepts_its_exact_options(commands: list[Command]) -> None:
    assert len({c.argv for c in commands}) >= 6, commands
    for argv in sorted({c.argv for c in commands}):
        # click parses every option before it acts on --help: an unknown flag or a missing value fails here
        out = subprocess.run(
            [str(tool("twofold")), *argv, "--help"], capture_output=True, text=True, timeout=120, check=False
        )
        where = [c.where for c in commands if c.argv == argv]
        assert out.returncode == 0, f"{where}: {' '.join(argv)}\n{out.stderr}"
        if argv[0] == "worker":
            queues = (option(argv, "--queues") or "").split(",")
            assert set(queues) <= set(Queue.__members__), where


# --- real processes ------------------------------------------------------------------------------------------------
class Procs:
    """`twofold` processes started by a test, each in its own process group, logged to files."""

    def __init__(self, env: dict[str, str], root: Path) -> None:
        self.env, self.root = env, root
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command to completion (``env`` overrides some of the processes' variables)."""
        return subprocess.run(
            [str(tool("twofold")), *argv],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start a long-running command."""
        with (self.root / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [str(tool("twofold")), *argv], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.running[name] = proc
        return proc

    def serve(self, name: str, argv: tuple[str, ...], ready_path: str) -> str:
        """Start a server command on loopback and a free port; returns its base URL once ``ready_path``
        answers 200."""
        port = free_port()
        self.start(name, _on_loopback(argv, port))
        base = f"http://127.0.0.1:{port}"
        self.wait_for(name, lambda: _answers(base + ready_path), timeout=180)
        return base

    def log(self, name: str) -> str:
        """Everything ``name`` has written."""
        return (self.root / f"{name}.log").read_text(errors="replace")

    def wait_for(self, name: str, ready: Any, timeout: float = 90) -> None:
        """Poll ``ready()`` until it is true; fail with the log if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            proc = self.running[name]
            assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{self.log(name)[-3000:]}"
            assert time.monotonic() < deadline, (
                f"{name} not ready after {timeout}s:\n{self.log(name)[-3000:]}"
            )
            time.sleep(0.5)

    def stop(self, name: str) -> None:
        """SIGTERM the process group of ``name`` (SIGKILL if it lingers) and reap it."""
        proc = self.running.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    def stop_all(self) -> None:
        """Stop everything still running."""
        for name in list(self.running):
            self.stop(name)


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Procs]:
    """Processes on a migrated throwaway schema, a throwaway Redis key prefix and a temporary data directory."""
    require("postgres", "redis")
    root = tmp_path_factory.mktemp("deploy-procs")
    prefix = f"tf-deploy-{uuid.uuid4().hex[:8]}:"
    with temp_schema(prefix="tf_deploy") as db_url:
        upgrade(db_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TWOFOLD_")}
        env.update(
            TWOFOLD_DATABASE_URL=db_url,
            TWOFOLD_BROKER_URL=REDIS_URL,
            TWOFOLD_BROKER_KEY_PREFIX=prefix,
            TWOFOLD_ARTIFACTS_URL=str(root / "data" / "artifacts"),
            TWOFOLD_WORK_DIR=str(root / "data" / "work"),
            TWOFOLD_MODELS_DIR=str(root / "data" / "models"),
            TWOFOLD_DATA_DIR=str(root / "data" / "data"),
            TWOFOLD_SWEEP_INTERVAL_S="1",
            # what a container's environment has and the health checks read
            HOSTNAME=socket.gethostname(),
        )
        p = Procs(env, root)
        try:
            yield p
        finally:
            p.stop_all()
            r = redis.Redis.from_url(REDIS_URL)
            for key in r.scan_iter(f"{prefix}*"):
                r.delete(key)


def _answers(url: str) -> bool:
    """Whether ``url`` answers 200 right now."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _probe(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def _in_venv(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this venv's scripts first on PATH, as /opt/venv/bin is in the image."""
    return {**env, "PATH": f"{tool('twofold').parent}{os.pathsep}{env.get('PATH', '')}"}


@pytest.mark.services
@pytest.mark.slow
def test_migration_job_then_the_schema_wait_passes(commands: list[Command], procs: Procs) -> None:
    migrate = _one(commands, "db", "upgrade")
    wait = _one(commands, "db", "check")
    with temp_schema(prefix="tf_deploy_mig") as fresh:
        env = {"TWOFOLD_DATABASE_URL": fresh}
        before = procs.run(*wait, env=env)
        assert before.returncode != 0, "the init container must hold pods back on an unmigrated schema"
        done = procs.run(*migrate, env=env)
        assert done.returncode == 0, done.stderr
        after = procs.run(*wait, env=env)
        assert after.returncode == 0, after.stderr


@pytest.mark.services
@pytest.mark.slow
def test_api_answers_its_probes_and_health_check_and_takes_the_recipe_job(
    commands: list[Command], rendered: dict[str, Any], procs: Procs
) -> None:
    (c,) = containers(find(rendered["base"], "Deployment", "twofold-api"), init=False)
    base = procs.serve("api", _one(commands, "serve"), c["startupProbe"]["httpGet"]["path"])
    port = int(base.rsplit(":", 1)[1])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        r = httpx.get(base + c[probe]["httpGet"]["path"], timeout=10)
        assert r.status_code == 200, (probe, r.text)
    # the recipe's job, submitted as docs/deploy.md does, is accepted as written (then cancelled: no worker runs it)
    (Path(procs.env["TWOFOLD_MODELS_DIR"]) / "Qwen2.5-0.5B-Instruct").mkdir(parents=True)
    key = procs.run("apikey", "create", "--tenant", "deploy-test").stdout.strip().splitlines()[-1]
    client_env = {"TWOFOLD_BASE_URL": base, "TWOFOLD_API_KEY": key}
    created = procs.run("jobs", "create", "-f", str(RECIPE), "--dataset", "gsm8k", "--json", env=client_env)
    assert created.returncode == 0, created.stdout + created.stderr
    job = json.loads(created.stdout)
    assert job["status"] == "pending" and job["spec"]["data"]["task"] == "gsm8k"
    assert job["spec"]["student"]["path"] == str(
        Path(procs.env["TWOFOLD_MODELS_DIR"]) / "Qwen2.5-0.5B-Instruct"
    )
    assert job["spec"]["teacher"]["base_url"] == "http://teacher:8000/v1"
    cancelled = procs.run("jobs", "cancel", job["id"], env=client_env)
    assert cancelled.returncode == 0, cancelled.stderr
    # the cpu image's HEALTHCHECK, pointed at this port
    (healthcheck,) = stages(DOCKERFILE.read_text())[-1].all("HEALTHCHECK")
    argv = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    argv = [a.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for a in argv]
    assert _probe(argv, _in_venv(procs.env)).returncode == 0
    procs.stop("api")
    assert _probe(argv, _in_venv(procs.env)).returncode != 0, (
        "the health check must fail when the API is down"
    )


@pytest.mark.services
@pytest.mark.slow
def test_io_worker_answers_the_liveness_ping(
    commands: list[Command],
    compose_models: dict[tuple[str, ...], Any],
    rendered: dict[str, Any],
    procs: Procs,
) -> None:
    procs.start("worker-io", list(_queues_cmd(commands, "io")))
    procs.wait_for("worker-io", lambda: " ready." in procs.log("worker-io"))
    (c,) = containers(find(rendered["base"], "Deployment", "twofold-worker-io"), init=False)
    liveness = c["livenessProbe"]["exec"]["command"]
    compose_check = compose_models[()]["services"]["worker-io"]["healthcheck"]["test"]
    assert compose_check[0] == "CMD-SHELL"
    # `docker compose config` keeps the file's `$$` escape; Compose runs it as a literal `$`
    for check in (liveness, ["sh", "-c", compose_check[1].replace("$$", "$")]):
        out = _probe(check, _in_venv(procs.env))
        assert out.returncode == 0 and "pong" in out.stdout, out.stdout + out.stderr
    procs.stop("worker-io")
    out = _probe(liveness, _in_venv(procs.env))
    assert out.returncode != 0, "the probe must fail when the worker is gone"


@pytest.mark.services
@pytest.mark.slow
def test_scheduler_schedules_and_runs_the_sweeper(commands: list[Command], procs: Procs) -> None:
    argv = _queues_cmd(commands, "default")
    assert "--beat" in argv
    procs.start("scheduler", list(argv))

    def swept() -> bool:
        return any(
            "twofold.sweep[" in ln and " succeeded in " in ln for ln in procs.log("scheduler").splitlines()
        )

    procs.wait_for("scheduler", swept)
    assert list((Path(procs.env["TWOFOLD_WORK_DIR"])).glob("celerybeat-schedule*")), (
        "beat keeps its state there"
    )


@pytest.mark.services
@pytest.mark.slow
def test_tiny_teacher_answers_its_probe(
    commands: list[Command], rendered: dict[str, Any], procs: Procs
) -> None:
    (c,) = containers(find(rendered["base"], "Deployment", "teacher"), init=False)
    base = procs.serve("teacher", _one(commands, "teacher", "--tiny"), c["readinessProbe"]["httpGet"]["path"])
    # it serves the model the presets ask for
    config = find(rendered["base"], "ConfigMap", "twofold-config")
    models = httpx.get(f"{base}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [config["data"]["TWOFOLD_TEACHER_MODEL"]]
