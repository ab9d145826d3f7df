"""Event API objects."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel


class EventOut(BaseModel):
    """Something that happened to a job; ``seq`` counts from 1 within the job."""

    object: Literal["event"] = "event"
    id: str
    seq: int
    stage: str | None
    level: str
    type: str
    message: str
    data: dict[str, Any]
    created_at: datetime
