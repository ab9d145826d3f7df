"""The client commands of ``twofold`` (cli/client.py) against the real server of tests/sdk/conftest.py."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

import twofold_client as tc
from tests.sdk.servers import ApiServer
from twofold.cli.main import cli

pytestmark = pytest.mark.slow


@pytest.fixture
def run(api_server: ApiServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``run("jobs", "list", ...)``: invoke ``twofold`` in-process with the server in the environment."""
    monkeypatch.setenv("TWOFOLD_BASE_URL", api_server.url)
    monkeypatch.setenv("TWOFOLD_API_KEY", api_server.api_key)

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)

    return invoke


def test_jobs_get_list_and_logs(run: Any, smoke: dict[str, Any]) -> None:
    job: tc.Job = smoke["job"]
    got = run("jobs", "get", job.id, "--json")
    assert got.exit_code == 0 and json.loads(got.stdout)["status"] == "succeeded"
    shown = run("jobs", "get", job.id)
    assert shown.exit_code == 0 and "succeeded" in shown.stdout and "reward_model" in shown.stdout
    listed = run("jobs", "list", "--status", "succeeded", "-m", f"run={job.metadata['run']}", "--json")
    assert [j["id"] for j in json.loads(listed.stdout)] == [job.id]
    table = run("jobs", "list", "--limit", "1")
    newest = tc.Client().jobs.list(limit=1).data[0]
    assert table.exit_code == 0 and len(table.stdout.strip().splitlines()) == 2  # header + 1 job
    assert newest.id in table.stdout  # whole, even at 80 columns
    logs = run("jobs", "logs", job.id)
    assert logs.exit_code == 0 and len(logs.stdout.strip().splitlines()) == len(smoke["live"])
    followed = run("jobs", "logs", job.id, "-f", "--json")
    assert [json.loads(line)["seq"] for line in followed.stdout.splitlines()] == [
        e.seq for e in smoke["live"]
    ]


def test_datasets_upload_and_list(run: Any, tmp_path: Path) -> None:
    path = tmp_path / "qs.jsonl"
    path.write_text('{"question": "3 + 4 = ?", "answer": 7}\n{"question": "1 + 1 = ?", "answer": 2}\n')
    up = run("datasets", "upload", str(path), "--name", "cli-set", "--json")
    assert up.exit_code == 0, up.stderr
    dataset = json.loads(up.stdout)
    assert (dataset["name"], dataset["row_count"], dataset["has_answers"]) == ("cli-set", 2, True)
    listed = run("datasets", "list", "--json")
    assert dataset["id"] in [d["id"] for d in json.loads(listed.stdout)]
    assert "cli-set" in run("datasets", "list").stdout


def test_checkpoints_list_and_download(run: Any, smoke: dict[str, Any], tmp_path: Path) -> None:
    job_id = smoke["job"].id
    listed = json.loads(run("checkpoints", "list", job_id, "--json").stdout)
    rl = [c for c in listed if c["kind"] == "policy" and c["stage"] == "rl"]
    assert rl, listed
    got = run("checkpoints", "download", job_id, "--out", str(tmp_path / "student"), "--json")
    assert got.exit_code == 0, got.stderr
    out = json.loads(got.stdout)
    assert out["checkpoint_id"] == rl[-1]["id"]  # the default: the latest policy (RL over SFT)
    assert (Path(out["path"]) / "config.json").is_file()


def test_api_errors_exit_1_with_message_and_param(run: Any, tmp_path: Path, smoke: dict[str, Any]) -> None:
    missing = run("jobs", "get", str(uuid.uuid4()))
    assert (
        missing.exit_code == 1
        and missing.stderr.startswith("error: ")
        and "(param: job_id)" in missing.stderr
    )
    spec = tc.Client().presets.list().data[0].spec
    assert spec is not None
    bad = tmp_path / "job.yaml"
    bad.write_text(yaml.safe_dump({**spec, "rl": {**spec["rl"], "batch_size": 0}}))
    created = run("jobs", "create", "-f", str(bad))
    assert created.exit_code == 1 and "(param: rl.batch_size)" in created.stderr
    finished = run("jobs", "cancel", smoke["job"].id)
    assert finished.exit_code == 1 and finished.stderr.startswith("error: ")
    both = run("jobs", "create", "-f", str(bad), "--preset", "smoke")
    assert both.exit_code == 2 and "exactly one of" in both.stderr


def test_connection_options_on_group_and_command(
    run: Any, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWOFOLD_API_KEY", "tf_wrong")
    assert run("jobs", "list").exit_code == 1  # the environment's (wrong) key
    assert run("jobs", "list", "--api-key", api_server.api_key).exit_code == 0  # the command's wins
    assert run("jobs", "--api-key", api_server.api_key, "list").exit_code == 0  # so does the group's
    monkeypatch.delenv("TWOFOLD_BASE_URL")
    missing = run("jobs", "list", "--api-key", api_server.api_key)
    assert missing.exit_code == 1 and "TWOFOLD_BASE_URL" in missing.stderr


def test_create_wait_exits_3_when_the_job_is_cancelled(
    run: Any, client: tc.Client, smoke: dict[str, Any]
) -> None:
    tag = uuid.uuid4().hex[:8]

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            jobs = client.jobs.list(metadata={"cli": tag}).data
            if jobs and jobs[0].status == "running":
                client.jobs.cancel(jobs[0].id)
                return
            time.sleep(0.2)

    canceller = threading.Thread(target=cancel_when_running, daemon=True)
    canceller.start()
    result = run(
        "jobs", "create", "--preset", "smoke", "-m", f"cli={tag}", "--wait", "--poll-interval", "0.3"
    )
    canceller.join(timeout=5)
    assert result.exit_code == 3, (result.stdout, result.stderr)
    assert "cancelled" in result.stdout and "teacher_sampling" in result.stderr  # the live stage display
