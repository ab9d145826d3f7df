"""Fixtures for the core tests: where the real GSM8K and MMLU-Pro files are.

The data root is ``$TWOFOLD_DATA_DIR`` when set, else the ``shared/data`` folder next to the repository
(``<repo>/../shared/data``). Tests that need a dataset skip, saying where they looked, when it is absent;
under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO_ROOT = Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """The configured data root (it may not exist)."""
    configured = os.environ.get("TWOFOLD_DATA_DIR")
    return Path(configured) if configured else (_REPO_ROOT.parent / "shared" / "data").resolve()


def _dataset(name: str, *files: str) -> Path:
    path = data_root() / name
    missing = [f for f in files if not (path / f).exists()]
    if missing:
        message = (
            f"{name} data not found at {path} (missing {', '.join(missing)}); "
            "set TWOFOLD_DATA_DIR to the folder holding gsm8k/ and mmlu_pro/"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """Folder with GSM8K's ``train.jsonl`` and ``test.jsonl``."""
    return _dataset("gsm8k", "train.jsonl", "test.jsonl")


@pytest.fixture(scope="session")
def mmlu_pro_dir() -> Path:
    """Folder with MMLU-Pro's ``test.jsonl`` (its only split)."""
    return _dataset("mmlu_pro", "test.jsonl")


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Train on one torch thread for a module's tests, then restore the previous count.

    On a small shared machine two threads spin against other processes: one thread was 6-8x faster here
    for the micro models these tests train.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
