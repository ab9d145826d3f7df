"""MMLU-Pro: ten-option multiple choice; the answer is a letter A-J.

MMLU-Pro ships only a test split (12,032 questions). ``load(split, path=...)`` makes a seeded, category-stratified
80/20 split of it: within each category, questions are shuffled with ``random.Random(f"{seed}-{category}")`` and
the first 80% (rounded down) are ``train``, the rest ``test``. The split is stable across runs and machines.

Extraction (version :data:`extraction_version`), first match wins: "answer is (X)" / "answer is X" /
"answer: X" (a lower-case letter only when in parentheses or ``**`` bold); then a final "(X)"; then a lone
letter as the whole reply.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from twofold.core.tasks.base import (
    Item,
    Source,
    check_split_and_size,
    read_jsonl,
    require_field,
    require_path,
)

name = "mmlu_pro"
extraction_version = "1"
source: Source = "directory"
gold = True

LETTERS = "ABCDEFGHIJ"
TRAIN_FRACTION = 0.8
_FIELDS = ("question_id", "category", "question", "options", "answer")
# A lower-case letter counts only when marked, "(c)" or "**c**": a bare one is usually the article, as in
# "the answer is a ...".
_CHOICE = r"(?:\*\*\(?([A-J])\)?\*\*|\(([A-J])\)|\**\(?(?-i:([A-J])))(?![A-Za-z])"
_PATTERNS = [
    re.compile(r"answer is:?\s*" + _CHOICE, re.IGNORECASE),
    re.compile(r"answer:\s*" + _CHOICE, re.IGNORECASE),
]
_PAREN = re.compile(r"\(([A-J])\)")
_LONE = re.compile(r"^\s*\(?([A-J])\)?[.\s]*$")


def load(split: str, *, path: str | Path | None = None, size: int = 0, seed: int = 0) -> list[Item]:
    """Read ``{path}/test.jsonl`` and return the ``train`` or ``test`` side of the stratified split, category by
    category in name order; ``size`` > 0 keeps the first ``size``."""
    check_split_and_size(name, split, size)
    file = require_path(name, path) / "test.jsonl"
    if not file.exists():
        raise FileNotFoundError(f"{file}: no MMLU-Pro data there")
    by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for number, row in read_jsonl(file):
        for key in _FIELDS:
            require_field(row, key, file, number)
        by_cat[row["category"]].append(row)
    out: list[Item] = []
    for cat in sorted(by_cat):
        rows = sorted(by_cat[cat], key=lambda r: r["question_id"])
        random.Random(f"{seed}-{cat}").shuffle(rows)
        cut = int(len(rows) * TRAIN_FRACTION)
        chosen = rows[:cut] if split == "train" else rows[cut:]
        for r in chosen:
            out.append(
                Item(
                    id=f"mmlu_pro-{r['question_id']}",
                    question=_format_question(r),
                    answer=r["answer"],
                    meta={"category": cat},
                )
            )
    return out[:size] if size else out


def _format_question(row: dict[str, Any]) -> str:
    options = "\n".join(f"({LETTERS[i]}) {opt}" for i, opt in enumerate(row["options"]))
    return f"{row['question']}\n{options}"


def build_prompt(item: Item) -> str:
    """Question with lettered options; the model should end with "The answer is (X)"."""
    return f'Q: {item.question}\nAnswer with "The answer is (X)".\nA:'


def extract_answer(text: str) -> str | None:
    """The chosen letter A-J (upper case), or None."""
    for pattern in _PATTERNS:
        m = pattern.search(text)
        if m:
            return next(g for g in m.groups() if g).upper()
    parens = _PAREN.findall(text)
    if parens:
        return parens[-1]
    m = _LONE.match(text)
    return m.group(1) if m else None


def is_correct(pred: str | None, gold: str | None) -> bool:
    """Letters match (case-insensitive)."""
    return pred is not None and gold is not None and pred.strip().upper() == gold.strip().upper()
