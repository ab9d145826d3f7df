"""The server distribution installs everything under one `twofold` namespace, never as top-level `core`, `api`..."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_only_the_twofold_namespace(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO), "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = tmp_path.glob("twofold-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"twofold"}, tops
    for expected in (
        "twofold/core/configs.py",
        "twofold/core/rl/algos.py",
        "twofold/api/dashboard/static/job.js",
        "twofold/migrations/alembic.ini",
        "twofold/migrations/versions/0001_initial_schema.py",
    ):
        assert expected in names, expected
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "twofold = twofold.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()
