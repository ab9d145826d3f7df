"""Start the built-in teacher server as a subprocess and wait until it answers (for the demo and tests).

This module does not import torch: the child process does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

#: Printed by the server, with its base URL, once it accepts connections.
READY_BANNER = "twofold teacher server ready:"
_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class TeacherProcess:
    """A running teacher server. ``url`` is the OpenAI base URL (ending in ``/v1``)."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """Everything the server has printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the server to shut down (SIGTERM), killing it if it has not exited after ``timeout_s``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)

    def __enter__(self) -> TeacherProcess:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start(
    model_dir: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    threads: int = 1,
    max_batch_size: int = 256,
    device: str = "cpu",
    seed: int = 0,
    timeout_s: float = 120.0,
    log_path: str | os.PathLike[str] | None = None,
) -> TeacherProcess:
    """Serve ``model_dir`` (a local HF checkpoint; None = a fresh tiny-teacher) and wait for ``/health``.

    ``port=0`` lets the server pick a free port; the URL is read from its ready banner. Output goes to
    ``log_path`` (a temporary file by default). Raises ``RuntimeError`` with the log's tail if the server
    exits or is not ready within ``timeout_s``.
    """
    if log_path is None:
        fd, tmp = tempfile.mkstemp(prefix="teacher-server-", suffix=".log")
        os.close(fd)
        log_path = tmp
    log_file = Path(log_path)
    cmd = [sys.executable, "-u", "-m", "twofold.teacher_server", "--host", host, "--port", str(port)]
    cmd += ["--tiny", "--seed", str(seed)] if model_dir is None else ["--model", str(model_dir)]
    cmd += ["--threads", str(threads), "--max-batch-size", str(max_batch_size), "--device", device]
    if name:
        cmd += ["--served-model-name", name]
    env = dict(os.environ)
    # the child must import this checkout even when the project is not installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    with log_file.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(_REPO_ROOT))
    server = TeacherProcess(url="", proc=proc, log_path=log_file)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"teacher server exited with code {proc.returncode}:\n{_tail(server.log())}"
                )
            for line in server.log().splitlines():
                if line.startswith(READY_BANNER):
                    server.url = line[len(READY_BANNER) :].split()[0]
            if server.url and _healthy(server.url):
                return server
            time.sleep(0.1)
        raise RuntimeError(f"teacher server not ready after {timeout_s:g}s:\n{_tail(server.log())}")
    except BaseException:
        server.stop()
        raise


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url.removesuffix("/v1") + "/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])
