"""GSM8K: grade-school maths, answers as a number after ``####``.

Extraction (version :data:`extraction_version`): the number after the first ``####``; else after
"The answer is"; else the last number in the text. ``$``, thousands commas and a trailing ``.`` are stripped, and
numbers are normalised so ``18``, ``18.0`` and ``18.00`` compare equal.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from twofold.core.tasks.base import (
    Item,
    Source,
    check_split_and_size,
    read_jsonl,
    require_field,
    require_path,
)

name = "gsm8k"
extraction_version = "1"
source: Source = "directory"
gold = True

_NUM = r"-?[$]?\s*[0-9][0-9,]*(?:\.[0-9]+)?|-?[$]?\.[0-9]+"
_AFTER_HASH = re.compile(r"####\s*(" + _NUM + ")")
_ANSWER_IS = re.compile(r"[Tt]he (?:final )?answer is[:\s]*(" + _NUM + ")")
# in running text a minus counts only when it is not an operator ("10-3" ends with 3, not -3)
_ANY_NUM = re.compile(r"(?:(?<![0-9A-Za-z)])-)?[$]?(?:[0-9][0-9,]*(?:\.[0-9]+)?|\.[0-9]+)")


def load(split: str, *, path: str | Path | None = None, size: int = 0, seed: int = 0) -> list[Item]:
    """Read ``{path}/{split}.jsonl`` (fields ``question``, and ``answer`` with the worked solution), in file
    order; ``size`` > 0 keeps the first ``size``. ``seed`` is unused: GSM8K ships its own split."""
    check_split_and_size(name, split, size)
    file = require_path(name, path) / f"{split}.jsonl"
    if not file.exists():
        raise FileNotFoundError(f"{file}: no GSM8K {split} split there")
    items: list[Item] = []
    for number, row in read_jsonl(file):
        solution = require_field(row, "answer", file, number)
        items.append(
            Item(
                id=f"gsm8k-{split}-{len(items)}",
                question=require_field(row, "question", file, number),
                answer=extract_answer(solution),
                solution=_clean_solution(solution),
            )
        )
        if len(items) == size:
            break
    return items


def _clean_solution(text: str) -> str:
    # GSM8K marks calculator calls as <<3*4=12>>; drop them so the solution reads as plain text.
    return re.sub(r"<<[^>]*>>", "", text).replace("\n#### ", " #### ").replace("\n", " ")


def build_prompt(item: Item) -> str:
    """Plain completion prompt; the model answers with reasoning then ``#### N``."""
    return f"Q: {item.question}\nA:"


def normalize_number(text: str) -> str | None:
    """``"$1,234.50"`` -> ``"1234.5"``; ``"18.0"`` -> ``"18"``; None if not a number."""
    cleaned = text.replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    value = value.normalize()
    if value == value.to_integral_value():
        return str(int(value))
    return format(value, "f")


def extract_answer(text: str) -> str | None:
    """The final numeric answer in ``text`` (normalised), or None if there is no number."""
    for pattern in (_AFTER_HASH, _ANSWER_IS):
        m = pattern.search(text)
        if m:
            return normalize_number(m.group(1))
    nums = _ANY_NUM.findall(text)
    return normalize_number(nums[-1]) if nums else None


def is_correct(pred: str | None, gold: str | None) -> bool:
    """Numeric equality after normalisation; a missing prediction is wrong."""
    if pred is None or gold is None:
        return False
    a, b = normalize_number(pred), normalize_number(gold)
    return a is not None and a == b
