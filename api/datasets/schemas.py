"""Dataset API objects."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel


class DatasetOut(BaseModel):
    """An uploaded JSONL dataset, or a built-in one (``builtin``: true, id ``gsm8k``/``mmlu_pro``/``arithmetic``)."""

    object: Literal["dataset"] = "dataset"
    id: str
    name: str
    format: Literal["jsonl"] = "jsonl"
    row_count: int | None
    has_answers: bool
    sha256: str | None
    builtin: bool
    created_at: datetime | None
