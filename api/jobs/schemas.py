"""Job and stage-run API objects."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from twofold.api.schemas import METADATA_KEY, PLAIN_TEXT, StrictModel

StatusName = Literal["pending", "running", "succeeded", "failed", "cancelled"]
MetadataKey = Annotated[str, StringConstraints(pattern=METADATA_KEY)]
MetadataValue = Annotated[str, StringConstraints(max_length=500, pattern=PLAIN_TEXT)]


class JobCreate(StrictModel):
    """Submit a job: a ``preset`` or a full ``spec`` (as ``core.configs.JobSpec``), optionally on a dataset."""

    preset: Literal["smoke", "demo"] | None = Field(
        None, description="a ready-made job (see GET /v1/presets)"
    )
    spec: dict[str, Any] | None = Field(
        None,
        description="a job spec: teacher, student, data, sft, labels, reward_model, rl, evaluation, seed",
    )
    dataset: str | None = Field(
        None,
        max_length=64,
        pattern=PLAIN_TEXT,
        description="an uploaded dataset id, or gsm8k / mmlu_pro / arithmetic",
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=50, description="your tags (filter with ?metadata[key]=value)"
    )


class JobError(BaseModel):
    """Why a job failed."""

    code: str
    message: str
    stage: str | None


class StageRunOut(BaseModel):
    """One stage of a job."""

    object: Literal["stage_run"] = "stage_run"
    id: str
    job_id: str
    name: str
    queue: Literal["io", "gpu", "default"]
    status: StatusName
    attempt: int
    progress: float
    progress_done: int
    progress_total: int
    heartbeat_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    config: dict[str, Any] | None
    metrics: dict[str, Any] | None
    eta_seconds: float | None


class JobOut(BaseModel):
    """A distillation job and its stages."""

    object: Literal["job"] = "job"
    id: str
    status: StatusName
    preset: str | None
    spec: dict[str, Any]
    metadata: dict[str, str]
    dataset: str | None
    current_stage: str | None
    progress: float
    cancel_requested: bool
    error: JobError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    stages: list[StageRunOut]
    summary: dict[str, Any] | None
