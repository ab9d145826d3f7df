"""The stage graph: runs the stages of a job in order, resumable, reporting through callbacks.

Stages and what each leaves in the job's work directory (``Workspace``):

=================  =====  ======================================================================
stage              queue  outputs
=================  =====  ======================================================================
teacher_sampling   io     teacher_samples.jsonl (appended as responses arrive)
sft                gpu    sft/ (HF checkpoint), sft_state/ (resume state)
labeling           gpu    student_samples.jsonl, labels.jsonl, label_stats.json
reward_model       gpu    reward_model/ (HF sequence-classification checkpoint)
rl                 gpu    rl/ (HF checkpoint), rl_state/ (resume state)
evaluation         gpu    evaluation.json, eval_items/<model>.jsonl
=================  =====  ======================================================================

A finished stage writes ``stages/<name>.json`` (its summary); ``run_pipeline`` skips stages that have one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.configs import DataConfig, JobSpec
from core.records import Callbacks, EvalResult, Label, StudentSample, TeacherSample
from core.tasks import Item

STAGES: tuple[str, ...] = ("teacher_sampling", "sft", "labeling", "reward_model", "rl", "evaluation")
STAGE_QUEUE: dict[str, str] = {s: ("io" if s == "teacher_sampling" else "gpu") for s in STAGES}


class PipelineCallbacks(Callbacks, Protocol):
    """Callbacks plus the persistence hooks the service implements (each called before the data is used)."""

    def teacher_samples(self, samples: list[TeacherSample]) -> None:
        """New teacher responses, as they arrive."""

    def student_samples(self, samples: list[StudentSample]) -> None:
        """New student responses drawn for labelling."""

    def labels(self, labels: list[Label], stats: dict[str, Any]) -> None:
        """All pseudo-labels of the job and their summary statistics."""

    def checkpoint(self, stage: str, kind: str, step: int, path: Path) -> None:
        """A complete HF checkpoint directory was written (``kind``: policy | reward_model)."""

    def evaluation(self, result: EvalResult) -> None:
        """A model was scored on a benchmark."""


@dataclass
class TaskData:
    """The questions of a job: ``train`` for distillation, ``test`` held out for evaluation."""

    task: str
    train: list[Item]
    test: list[Item]


def load_data(cfg: DataConfig) -> TaskData:
    """Load train/test items for ``cfg`` (sizes applied after a deterministic order)."""
    raise NotImplementedError


def run_stage(
    stage: str,
    *,
    spec: JobSpec,
    data: TaskData,
    workdir: Path,
    callbacks: PipelineCallbacks,
    teacher_samples: Sequence[TeacherSample] | None = None,
) -> dict[str, Any]:
    """Run one stage; returns its summary (also written to ``stages/<stage>.json``).

    ``teacher_samples``: samples already persisted elsewhere (the service's DB); their keys are not requested
    again. Without it, ``teacher_samples.jsonl`` in ``workdir`` is the record.
    Raises ``core.records.Cancelled`` when ``callbacks.should_stop()`` turns true.
    """
    raise NotImplementedError


def run_pipeline(
    spec: JobSpec,
    *,
    data: TaskData,
    workdir: Path,
    callbacks: PipelineCallbacks,
    stages: Sequence[str] = STAGES,
) -> dict[str, dict[str, Any]]:
    """Run ``stages`` in order, skipping those already finished in ``workdir``; returns summaries by stage."""
    raise NotImplementedError
