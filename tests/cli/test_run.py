"""``twofold run`` with invalid job specs: a non-zero exit, a message naming the field, and no output left."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from twofold.cli.main import cli


def closed_port_url() -> str:
    """A loopback URL on which nothing listens (a port just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def job(teacher_url: str, **sections: Any) -> dict[str, Any]:
    """A small valid job spec with ``sections`` merged in."""
    raw: dict[str, Any] = {
        "teacher": {"base_url": teacher_url, "model": "tiny-teacher", "max_retries": 0, "timeout_s": 10},
        "student": {"preset": "micro"},
        "data": {"task": "arithmetic", "train_size": 8, "test_size": 8},
    }
    for name, value in sections.items():
        raw[name] = {**raw.get(name, {}), **value} if isinstance(value, dict) else value
    return raw


def run(tmp_path: Path, spec: dict[str, Any], *extra: str) -> tuple[Any, Path]:
    """Invoke ``twofold run JOB.yaml --out OUT``; returns the click result and OUT."""
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(job_file), "--out", str(out), *extra])
    return result, out


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"rl": {"lerning_rate": 0.1}}, "rl.lerning_rate"),
        ({"rl": {"batch_size": 30, "samples_per_prompt": 4, "mini_batch_size": 30}}, "rl.batch_size"),
        ({"rl": {"algo": "grpo", "samples_per_prompt": 1}}, "rl.samples_per_prompt"),
        ({"data": {"task": "custom", "path": "rows.jsonl"}, "rl": {"reward": "gold"}}, "rl.reward"),
        ({"student": {"preset": None, "path": "/nonexistent/student"}}, "student.path"),
        ({"data": {"task": "gsm8k", "path": "/nonexistent/gsm8k"}}, "data.path"),
    ],
)
def test_an_invalid_spec_fails_naming_the_field_and_writes_nothing(
    tmp_path: Path, sections: dict[str, Any], field: str
) -> None:
    # the teacher is never contacted for these: it is a closed port, and the spec check comes first
    result, out = run(tmp_path, job(closed_port_url(), **sections))
    assert result.exit_code != 0
    assert field in result.output, result.output
    assert not out.exists()


def test_an_unreachable_teacher_fails_before_anything_is_written(tmp_path: Path) -> None:
    url = closed_port_url()
    result, out = run(tmp_path, job(url))
    assert result.exit_code != 0
    assert "teacher.base_url" in result.output and "unreachable" in result.output, result.output
    assert url.split("//")[1].split("/")[0] in result.output  # names the endpoint it tried
    assert not out.exists()


def test_malformed_yaml_and_unknown_stage_are_reported(tmp_path: Path) -> None:
    job_file = tmp_path / "bad.yaml"
    job_file.write_text("teacher: [unclosed\n")
    result = CliRunner().invoke(cli, ["run", str(job_file), "--out", str(tmp_path / "o1")])
    assert result.exit_code != 0 and "not valid YAML" in result.output
    result, out = run(tmp_path, job(closed_port_url()), "--stage", "distil")
    assert result.exit_code != 0 and "--stage" in result.output and "distil" in result.output
    assert not out.exists() and not (tmp_path / "o1").exists()


def test_a_teacher_that_does_not_serve_the_model_is_refused_before_any_output(
    tmp_path: Path, tiny_teacher_url: str
) -> None:
    # the endpoint answers its health check but serves another model: refused at preflight, naming the field
    spec = job(tiny_teacher_url, teacher={"model": "no-such-model"})
    result, out = run(tmp_path, spec, "--stage", "teacher_sampling")
    assert result.exit_code != 0
    assert "teacher.model" in result.output and "no-such-model" in result.output
    assert not out.exists()


def test_a_valid_stage_runs_and_records_a_redacted_spec(tmp_path: Path, tiny_teacher_url: str) -> None:
    spec = job(tiny_teacher_url, teacher={"api_key": "sk-secret", "n": 1, "temperatures": [1.0]})
    result, out = run(tmp_path, spec, "--stage", "teacher_sampling")
    assert result.exit_code == 0, result.output
    assert (out / "stages" / "teacher_sampling.json").exists()
    assert len((out / "teacher_samples.jsonl").read_text().splitlines()) == 8
    recorded = (out / "spec.json").read_text()
    assert "sk-secret" not in recorded and '"***"' in recorded
