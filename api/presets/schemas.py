"""Preset API objects."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class PresetOut(BaseModel):
    """A ready-made job spec (submit it with ``{"preset": id}``)."""

    object: Literal["preset"] = "preset"
    id: str
    description: str
    spec: dict[str, Any]
