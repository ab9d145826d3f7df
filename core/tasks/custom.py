"""User datasets: JSONL rows with ``question`` (or chat ``messages``) and an optional numeric ``answer``.

Answers are extracted with GSM8K's rules (the number after ``####``, else "The answer is", else the last number).
"""

from __future__ import annotations

import random
from pathlib import Path

from twofold.core.tasks.base import Item, Source, check_split_and_size, read_jsonl, require_path
from twofold.core.tasks.gsm8k import (  # noqa: F401  (GSM8K's prompt and rules)
    build_prompt,
    extract_answer,
    extraction_version,
    is_correct,
)

name = "custom"
source: Source = "file"
gold = False  # only the dataset knows; DataConfig.has_gold says so for a job
TEST_FRACTION = 0.1


def load(split: str, *, path: str | Path | None = None, size: int = 0, seed: int = 0) -> list[Item]:
    """The rows of the JSONL file ``path``, shuffled with ``seed``: the last :data:`TEST_FRACTION` of them are
    ``test``, the rest ``train``; ``size`` > 0 keeps the first ``size`` of the split."""
    check_split_and_size(name, split, size)
    file = require_path(name, path)
    rows: list[Item] = []
    for number, row in read_jsonl(file):
        answer = row.get("answer")
        rows.append(
            Item(
                id=str(row.get("id", f"row-{number}")),
                question=_question(row, file, number),
                answer=None if answer is None else (extract_answer(str(answer)) or str(answer)),
            )
        )
    random.Random(seed).shuffle(rows)
    cut = len(rows) - int(len(rows) * TEST_FRACTION)
    chosen = rows[:cut] if split == "train" else rows[cut:]
    return chosen[:size] if size else chosen


def _question(row: dict[str, object], file: Path, number: int) -> str:
    """The row's ``question``, or the user turns of its chat ``messages`` joined by newlines."""
    question = row.get("question")
    if question is not None:
        return str(question)
    messages = row.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError(f"{file} line {number}: needs a `question`, or `messages` as a list of objects")
    return "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")
