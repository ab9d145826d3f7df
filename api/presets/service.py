"""Presets: ready-made job specs pointed at the server's configured teacher."""

from __future__ import annotations

from twofold.api.errors import Unavailable
from twofold.api.presets.schemas import PresetOut
from twofold.store.settings import Settings


def list_presets(*, settings: Settings) -> list[PresetOut]:
    """Every preset with its description and its full spec."""
    try:
        from twofold.core.presets import PRESET_DESCRIPTIONS, preset_spec
    except ImportError as exc:
        raise Unavailable(f"presets are not available on this server: {exc}") from exc
    return [
        PresetOut(
            id=name,
            description=description,
            spec=preset_spec(
                name, teacher_base_url=settings.teacher_base_url, teacher_model=settings.teacher_model
            ),
        )
        for name, description in PRESET_DESCRIPTIONS.items()
    ]
