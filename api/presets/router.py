"""Routes: /v1/presets."""

from __future__ import annotations

from fastapi import APIRouter

from twofold.api.deps import CurrentTenant, SettingsDep
from twofold.api.presets import service
from twofold.api.presets.schemas import PresetOut
from twofold.api.schemas import ListOut, error_responses

router = APIRouter(prefix="/presets", tags=["presets"])


@router.get("", response_model=ListOut[PresetOut], responses=error_responses(503))
def list_presets(who: CurrentTenant, settings: SettingsDep) -> ListOut[PresetOut]:
    """The ready-made jobs (``smoke``, ``demo``) and their specs."""
    del who  # authentication only
    return ListOut[PresetOut](data=service.list_presets(settings=settings), has_more=False)
