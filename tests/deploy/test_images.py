"""deploy/Dockerfile: hadolint passes, the targets are what the Compose file and the manifests use, torch is pinned
(CPU build in the cpu target), the images run as a non-root user, and the build stage's own commands, run here on
exactly the files it copies, produce the wheels (with the dashboard and the migrations) that the images install.

Building the images themselves needs a container engine and the base images' registry, neither of which this
machine has."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.manifests import DEPLOY, DOCKERFILE, REPO, Stage, run_tool, stages, tool

IGNORE_FILE = DEPLOY / "Dockerfile.dockerignore"


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, Stage]:
    """The stages of deploy/Dockerfile by name (insertion order is file order)."""
    return {s.name: s for s in stages(DOCKERFILE.read_text())}


def test_hadolint_passes_and_would_catch_a_root_user(tmp_path: Path) -> None:
    out = run_tool([tool("hadolint"), "--no-color", DOCKERFILE])
    assert out.returncode == 0, out.stdout + out.stderr
    # the linter really runs its rules: the same file ending as root fails
    root = tmp_path / "Dockerfile"
    root.write_text(DOCKERFILE.read_text() + "USER root\n")
    out = run_tool([tool("hadolint"), "--no-color", root])
    assert out.returncode != 0 and "DL3002" in out.stdout


def test_targets_cpu_by_default_and_gpu(dockerfile: dict[str, Stage]) -> None:
    assert list(dockerfile)[-1] == "cpu", "the last stage is what a plain `docker build` produces"
    assert dockerfile["cpu"].base == dockerfile["gpu"].base == "base"
    assert dockerfile["base"].all("ENTRYPOINT") == ['["twofold"]']
    for name in ("cpu", "gpu"):
        stage = dockerfile[name]
        assert stage.all("USER") == ["10001:10001"], name
        assert [kw for kw, _ in stage.instructions][-3:] in (
            ["USER", "HEALTHCHECK", "CMD"],
            ["EXPOSE", "HEALTHCHECK", "CMD"],
        ), name
    assert dockerfile["cpu"].all("CMD") == ['["serve", "--host", "0.0.0.0", "--port", "8080"]']
    assert dockerfile["gpu"].all("CMD") == ['["worker", "--queues", "gpu"]']


def test_torch_is_pinned_and_the_cpu_target_takes_the_cpu_build(dockerfile: dict[str, Stage]) -> None:
    makefile_pin = re.search(r"pip install -q torch==([0-9.]+)", (REPO / "Makefile").read_text())
    assert makefile_pin, "the Makefile pins torch"
    for name in ("cpu", "gpu"):
        (version,) = [
            a.split("=", 1)[1] for a in dockerfile[name].all("ARG") if a.startswith("TORCH_VERSION=")
        ]
        assert version == makefile_pin.group(1), name
        runs = " ".join(dockerfile[name].all("RUN"))
        assert '"torch==${TORCH_VERSION}"' in runs and "--constraint /opt/venv/constraints.txt" in runs
    assert "--index-url https://download.pytorch.org/whl/cpu" in " ".join(dockerfile["cpu"].all("RUN"))
    assert "whl/cpu" not in " ".join(dockerfile["gpu"].all("RUN"))
    # the project is installed from the build stage's wheels, never fetched
    for name in ("cpu", "gpu"):
        assert "--from=build /wheels /tmp/wheels" in dockerfile[name].all("COPY")
        assert "pip install --no-index --no-deps /tmp/wheels/*.whl" in " ".join(dockerfile[name].all("RUN"))


def _build_sources(dockerfile: dict[str, Stage]) -> list[str]:
    sources = []
    for args in dockerfile["build"].all("COPY"):
        *srcs, _dest = args.split()
        sources += [s.rstrip("/") for s in srcs]
    return sources


def test_the_build_context_holds_every_package(dockerfile: dict[str, Stage]) -> None:
    sys.path.insert(0, str(REPO))
    try:
        from setup import ROOTS  # the one list of the distribution's top-level packages
    finally:
        sys.path.remove(str(REPO))
    sources = _build_sources(dockerfile)
    assert set(ROOTS) | {"sdk", "pyproject.toml", "setup.py", "README.md"} == set(sources)
    lines = [ln.strip() for ln in IGNORE_FILE.read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert lines[0] == "*", "the context is an allow-list"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == set(sources), allowed ^ set(sources)


@pytest.mark.slow
def test_the_build_stage_makes_the_wheels_from_exactly_what_it_copies(
    dockerfile: dict[str, Stage], tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", ".venv")
    for name in _build_sources(dockerfile):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=junk)
        else:
            shutil.copy2(REPO / name, src / name)
    (run,) = dockerfile["build"].all("RUN")
    argv = run.split()
    assert argv[:2] == ["pip", "wheel"]
    # the same command; without build isolation, since this machine's index is not the image's
    out = subprocess.run(
        [sys.executable, "-m", *argv, "--no-build-isolation", "--wheel-dir", str(tmp_path / "wheels")],
        cwd=src, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (server,) = (tmp_path / "wheels").glob("twofold-*.whl")
    (client,) = (tmp_path / "wheels").glob("twofold_client-*.whl")
    names = set(zipfile.ZipFile(server).namelist())
    for expected in ("twofold/api/dashboard/static/job.js", "twofold/migrations/alembic.ini"):
        assert expected in names, expected
    assert "twofold_client/__init__.py" in zipfile.ZipFile(client).namelist()
