"""API objects of what a job produced: samples, pseudo-labels, checkpoints, evaluations, training curves."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from twofold.api.schemas import ListOut


class SampleOut(BaseModel):
    """A teacher or student response."""

    object: Literal["sample"] = "sample"
    id: str
    source: Literal["teacher", "student"]
    question_id: str
    temperature: float | None
    index: int
    text: str
    answer: str | None
    prompt_tokens: int | None
    completion_tokens: int | None


class RewardLabelOut(BaseModel):
    """A pseudo-label: 1 when the response's answer agrees with the teacher's majority answer."""

    object: Literal["reward_label"] = "reward_label"
    id: str
    question_id: str
    source: str
    index: int
    answer: str | None
    majority: str
    label: int
    agreement: float


class HistogramBin(BaseModel):
    """Questions whose majority vote share falls in [bin_start, bin_end)."""

    bin_start: float
    bin_end: float
    count: int


class LabelSummary(BaseModel):
    """Counts, balance and agreement of a job's pseudo-labels."""

    questions_total: int
    questions_kept: int
    questions_dropped: int
    labels: int
    positive: int
    negative: int
    positive_rate: float
    mean_agreement: float
    agreement_histogram: list[HistogramBin]
    accuracy_vs_gold: float | None


class RewardLabelList(ListOut[RewardLabelOut]):
    """A page of pseudo-labels with the job's summary statistics."""

    summary: LabelSummary


class CheckpointOut(BaseModel):
    """A saved model directory (Hugging Face format); ``download_url`` gives it as a tar.gz."""

    object: Literal["checkpoint"] = "checkpoint"
    id: str
    stage: str
    step: int
    kind: str
    size_bytes: int
    sha256: str
    created_at: datetime
    download_url: str


class EvaluationOut(BaseModel):
    """Greedy accuracy of a model on a benchmark with its 95% interval."""

    object: Literal["evaluation"] = "evaluation"
    id: str
    model: str
    benchmark: str
    accuracy: float
    ci95: tuple[float, float]
    n: int
    extraction_version: str
    created_at: datetime


class MetricOut(BaseModel):
    """One training-curve point."""

    object: Literal["metric"] = "metric"
    stage: str
    step: int
    name: str
    value: float
