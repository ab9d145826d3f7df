"""``sdk/`` installs alone, with only httpx and pydantic (and their own dependencies), and never needs torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SDK_DIR = Path(__file__).resolve().parents[2] / "sdk"
#: What a fresh environment may hold after installing the SDK: httpx, pydantic and their dependencies.
ALLOWED = {
    "twofold-client", "httpx", "httpcore", "h11", "anyio", "idna", "certifi", "sniffio", "pydantic",
    "pydantic-core", "annotated-types", "typing-extensions", "typing-inspection", "exceptiongroup",
    "pip", "setuptools", "wheel",
}  # fmt: skip


@pytest.mark.slow
def test_sdk_installs_alone_and_imports_without_torch(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    # pip reads this machine's configuration (a local index / find-links where there is one), so this works
    # offline wherever the dependencies are mirrored; deps are resolved, not skipped (--no-deps would hide
    # a missing requirement).
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--prefer-binary", str(SDK_DIR)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    probe = (
        "import importlib.util, sys, twofold_client as tc\n"
        "assert importlib.util.find_spec('torch') is None, 'torch is importable'\n"
        "assert 'torch' not in sys.modules\n"
        "c = tc.Client(base_url='http://127.0.0.1:9', api_key='k')\n"
        "print(tc.__version__, type(c.jobs).__name__, type(c.jobs.checkpoints).__name__)\n"
    )
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.1.0", "Jobs", "Checkpoints"]
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True, env=env
    )
    names = {line.split("==")[0].lower().replace("_", "-") for line in listed.stdout.split()}
    assert "twofold-client" in names and names <= ALLOWED, names - ALLOWED
