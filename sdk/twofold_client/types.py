"""Typed models of every object in the twofold REST API (docs/api.md).

Models accept fields they do not know (a newer server may add some) and keep them as attributes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "BaseObject",
    "JobStatus",
    "Dataset",
    "JobError",
    "StageRun",
    "Job",
    "Event",
    "Sample",
    "RewardLabel",
    "HistogramBin",
    "RewardLabelSummary",
    "Checkpoint",
    "Evaluation",
    "MetricPoint",
    "Preset",
    "TERMINAL_STATUSES",
]

JobStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]

#: Statuses after which a job or stage no longer changes (until a retry).
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class BaseObject(BaseModel):
    """Base of every API object: tolerant of extra fields, ``object`` names the type."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    object: str = ""


class Dataset(BaseObject):
    """An uploaded JSONL dataset (or a built-in one: ``gsm8k``, ``mmlu_pro``, ``arithmetic``)."""

    id: str
    name: str = ""
    format: str = "jsonl"
    row_count: int | None = None
    has_answers: bool | None = None
    sha256: str | None = None
    builtin: bool = False
    created_at: datetime | None = None


class JobError(BaseModel):
    """Why a job failed: a stable ``code``, a message and the stage it failed in."""

    model_config = ConfigDict(extra="allow")

    code: str | None = None
    message: str = ""
    stage: str | None = None


class StageRun(BaseObject):
    """One stage of a job (one attempt's view: status, progress, resolved config, final metrics)."""

    id: str
    job_id: str | None = None
    name: str
    queue: str | None = None
    status: JobStatus = "pending"
    attempt: int = 0
    progress: float = 0.0
    progress_done: int | None = None
    progress_total: int | None = None
    heartbeat_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: JobError | str | None = None
    config: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    eta_seconds: float | None = None


class Job(BaseObject):
    """A distillation job: its spec, status, per-stage runs and, once finished, a summary of scores."""

    id: str
    status: JobStatus
    preset: str | None = None
    spec: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    dataset: str | None = None
    current_stage: str | None = None
    progress: float = 0.0
    error: JobError | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    stages: list[StageRun] = []
    summary: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """Whether the job is in a terminal status (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES


class Event(BaseObject):
    """A log/progress event of a job; ``seq`` orders them and is the SSE ``id``."""

    id: str
    seq: int
    stage: str | None = None
    level: str = "info"
    type: str = ""
    message: str = ""
    data: dict[str, Any] | None = None
    created_at: datetime | None = None


class Sample(BaseObject):
    """A teacher or student response to one question."""

    id: str
    source: str
    question_id: str
    temperature: float | None = None
    index: int | None = None
    text: str = ""
    answer: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class RewardLabel(BaseObject):
    """A self-supervised pseudo-label: whether a response agrees with the teacher's majority answer."""

    id: str
    question_id: str
    source: str | None = None
    index: int | None = None
    answer: str | None = None
    majority: str | None = None
    label: int | float | bool | None = None
    agreement: float | None = None


class HistogramBin(BaseModel):
    """One bin of the agreement histogram."""

    model_config = ConfigDict(extra="allow")

    bin_start: float
    bin_end: float
    count: int


class RewardLabelSummary(BaseModel):
    """Statistics over all pseudo-labels of a job (sent on the reward-labels list)."""

    model_config = ConfigDict(extra="allow")

    questions_total: int | None = None
    questions_kept: int | None = None
    questions_dropped: int | None = None
    labels: int | None = None
    positive: int | None = None
    negative: int | None = None
    positive_rate: float | None = None
    mean_agreement: float | None = None
    agreement_histogram: list[HistogramBin] = []
    accuracy_vs_gold: float | None = None


class Checkpoint(BaseObject):
    """A saved Hugging Face model directory (policy or reward model), downloadable as a tar.gz."""

    id: str
    stage: str | None = None
    step: int | None = None
    kind: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    created_at: datetime | None = None
    download_url: str | None = None


class Evaluation(BaseObject):
    """Accuracy of one model (teacher, sft, rl) on one benchmark, with a 95% confidence interval."""

    id: str
    model: str
    benchmark: str
    accuracy: float
    ci95: tuple[float, float] | None = None
    n: int | None = None
    extraction_version: str | int | None = None
    created_at: datetime | None = None


class MetricPoint(BaseObject):
    """One training metric value at a step of a stage."""

    stage: str
    step: int
    name: str
    value: float


class Preset(BaseObject):
    """A named, ready-to-run job spec (``smoke``, ``demo``)."""

    id: str
    description: str = ""
    spec: dict[str, Any] | None = None
