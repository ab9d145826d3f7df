"""What every task provides: the :class:`Item` it loads and the :class:`Task` protocol its module implements."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

SPLITS = ("train", "test")

#: Where a task's questions come from, which says what ``DataConfig.path`` must be: ``generated`` (no path),
#: ``directory`` (a data folder; the service uses ``<data_dir>/<task name>``) or ``file`` (one JSONL file).
Source = Literal["generated", "directory", "file"]


@dataclass(frozen=True)
class Item:
    """One question. ``answer`` is the gold final answer (None for unlabelled data); ``solution`` is a gold
    worked solution where the source has one (used only to train the demo's teacher)."""

    id: str
    question: str
    answer: str | None = None
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class Task(Protocol):
    """A benchmark task: a module with these names (``core/tasks/gsm8k.py`` is the model to copy).

    ``name`` is the spec's ``data.task``. ``extraction_version`` is recorded with every score; bump it when
    ``extract_answer`` or ``is_correct`` changes, so scores made under different rules are never compared.
    ``source`` says what ``data.path`` must be; ``gold`` is whether every item carries a gold answer.
    """

    name: str
    extraction_version: str
    source: Source
    gold: bool

    def load(self, split: str, *, path: str | Path | None = None, size: int = 0, seed: int = 0) -> list[Item]:
        """The ``train`` or ``test`` items, in a fixed order for a given ``seed``; ``size`` > 0 keeps the first
        ``size`` of them (0 keeps all). ``path`` is ignored by generated tasks and required by the others."""
        ...

    def build_prompt(self, item: Item) -> str:
        """The prompt the student and the teacher complete for ``item``."""
        ...

    def extract_answer(self, text: str) -> str | None:
        """The final answer in a model's ``text`` (normalised), or None when there is none."""
        ...

    def is_correct(self, pred: str | None, gold: str | None) -> bool:
        """Whether an extracted answer matches the gold one; a missing answer on either side is wrong."""
        ...


def check_split_and_size(task: str, split: str, size: int) -> None:
    """Raise ValueError naming the argument when ``split`` or ``size`` is not one ``load`` accepts."""
    if split not in SPLITS:
        raise ValueError(f"{task}: split must be 'train' or 'test', got {split!r}")
    if size < 0:
        raise ValueError(f"{task}: size must be >= 0 (0 = all), got {size}")


def require_path(task: str, path: str | Path | None) -> Path:
    """``path`` as a Path; ValueError when a task that reads files was given none."""
    if path is None:
        raise ValueError(f"{task}: needs a data path (data.path)")
    return Path(path)


def read_jsonl(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of ``file``; a line that is not a JSON object raises
    ValueError naming the file and line."""
    with file.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{file} line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{file} line {number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def require_field(row: dict[str, Any], key: str, file: Path, number: int) -> Any:
    """``row[key]``, or ValueError naming the file, line and missing field."""
    if key not in row:
        raise ValueError(f"{file} line {number}: missing field {key!r}")
    return row[key]
