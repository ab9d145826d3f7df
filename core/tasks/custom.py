"""User datasets: JSONL rows with ``question`` (or chat ``messages``) and an optional numeric ``answer``.

Answers are extracted with GSM8K's rules (the number after ``####``, else "The answer is", else the last number).
"""

from __future__ import annotations

import json
from pathlib import Path

from twofold.core.tasks import Item
from twofold.core.tasks.gsm8k import build_prompt, extract_answer, is_correct  # noqa: F401  (same rules)


def load(path: str | Path, split: str = "train", *, test_fraction: float = 0.1, seed: int = 0) -> list[Item]:
    """Rows of ``path``; the last ``test_fraction`` of a seeded shuffle is ``test``."""
    import random

    rows: list[Item] = []
    with Path(path).open(encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            question = row.get("question")
            if question is None and "messages" in row:
                question = "\n".join(m["content"] for m in row["messages"] if m.get("role") == "user")
            answer = row.get("answer")
            rows.append(
                Item(
                    id=str(row.get("id", f"row-{i}")),
                    question=str(question),
                    answer=None if answer is None else (extract_answer(str(answer)) or str(answer)),
                )
            )
    random.Random(seed).shuffle(rows)
    cut = len(rows) - int(len(rows) * test_fraction)
    return rows[:cut] if split == "train" else rows[cut:]
