"""The embedded default: `twofold serve` with no broker runs jobs in-process on SQLite; killed mid-job and
started again, it picks the job up from its database and work directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from twofold.cli.main import cli; cli()", "serve", "--port", str(port), "--log-level", "warning"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json() == {
                "database": "ok",
                "broker": "embedded",
            }:
                return proc
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def test_embedded_server_survives_a_kill_mid_job(tmp_path: Path, tiny_teacher_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWOFOLD_")}
    env.update(
        TWOFOLD_DATABASE_URL=f"sqlite:///{tmp_path / 'twofold.db'}",
        TWOFOLD_ARTIFACTS_URL=str(tmp_path / "artifacts"),
        TWOFOLD_TEACHER_BASE_URL=tiny_teacher_url,
        TWOFOLD_TEACHER_MODEL="tiny-teacher",
        TWOFOLD_HEARTBEAT_INTERVAL_S="0.5",
        TWOFOLD_STALE_AFTER_S="3",
        TWOFOLD_SWEEP_INTERVAL_S="1",
        PYTHONPATH=str(REPO),
    )
    port, log = free_port(), tmp_path / "serve.log"
    proc = _serve(env, port, log)  # migrates the SQLite database on its own
    key = subprocess.run(
        [sys.executable, "-c", "from twofold.cli.main import cli; cli()", "apikey", "create", "--tenant", "solo"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )

    def job() -> dict[str, Any]:
        return dict(api.get(f"/v1/jobs/{jid}").json())

    try:
        jid = api.post("/v1/jobs", json={"preset": "smoke"}).json()["id"]
        deadline = time.monotonic() + 180
        while job()["stages"][1]["status"] != "running":  # SFT started: teacher samples are all in
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc = _serve(env, port, log)
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=api.headers, timeout=30)
        deadline = time.monotonic() + 300
        while (current := job())["status"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        assert current["status"] == "succeeded", current["error"]
        assert current["stages"][1]["attempt"] == 2  # SFT ran again after the restart
        samples, after = [], None
        while True:
            page = api.get(
                f"/v1/jobs/{jid}/samples", params={"limit": 100, **({"after": after} if after else {})}
            ).json()
            samples += page["data"]
            if not page["has_more"]:
                break
            after = page["data"][-1]["id"]
        keys = {(s["question_id"], s["temperature"], s["index"]) for s in samples}
        assert len(samples) == len(keys) == 64 * 4
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
