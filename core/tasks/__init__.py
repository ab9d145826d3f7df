"""Benchmark tasks. Each module offers ``load``, ``build_prompt``, ``extract_answer`` and ``is_correct``."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

#: Bump when any extraction rule changes; every score records it.
EXTRACTION_VERSION = "1"


@dataclass(frozen=True)
class Item:
    """One question. ``answer`` is the gold final answer (None for unlabelled data); ``solution`` is a gold
    worked solution where the source has one (used only to train the demo's teacher)."""

    id: str
    question: str
    answer: str | None = None
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def get_task(name: str) -> ModuleType:
    """The task module for ``name`` (arithmetic, gsm8k, mmlu_pro, custom)."""
    from twofold.core.tasks import arithmetic, custom, gsm8k, mmlu_pro

    tasks = {"arithmetic": arithmetic, "gsm8k": gsm8k, "mmlu_pro": mmlu_pro, "custom": custom}
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(tasks)}")
    return tasks[name]
