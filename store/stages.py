"""Stage names, their queues and task names: the vocabulary that the API, the store and the workers share.

These mirror ``core.pipeline.STAGES`` / ``STAGE_QUEUE`` (a test keeps them equal) so that the API, which never
imports the training code, can create stage rows and enqueue them by task name.
"""

from __future__ import annotations

import enum


class Queue(enum.StrEnum):
    """Celery queues: ``io`` for teacher calls and bookkeeping, ``gpu`` for training, ``default`` for the
    sweeper."""

    gpu = "gpu"
    io = "io"
    default = "default"


class Status(enum.StrEnum):
    """Status of a job or a stage run."""

    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = frozenset({Status.succeeded, Status.failed, Status.cancelled})

STAGES: tuple[str, ...] = ("teacher_sampling", "sft", "labeling", "reward_model", "rl", "evaluation")
STAGE_QUEUE: dict[str, Queue] = {s: (Queue.io if s == "teacher_sampling" else Queue.gpu) for s in STAGES}

SWEEP_TASK = "twofold.sweep"


def task_name(stage: str) -> str:
    """The Celery task name that runs ``stage`` (``twofold.stage.<stage>``)."""
    if stage not in STAGE_QUEUE:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    return f"twofold.stage.{stage}"
