"""The service's stage vocabulary: statuses, Celery task names and queues. The stages themselves, their order and
their queues come from the one table in ``core.stages`` (torch-free), so the API and the store never hold a copy.
"""

from __future__ import annotations

import enum

from twofold.core.stages import Queue, get_stage

__all__ = ["FINISHED", "SWEEP_TASK", "Queue", "Status", "task_name"]


class Status(enum.StrEnum):
    """Status of a job or a stage run."""

    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = frozenset({Status.succeeded, Status.failed, Status.cancelled})

SWEEP_TASK = "twofold.sweep"


def task_name(stage: str) -> str:
    """The Celery task name that runs ``stage`` (``twofold.stage.<stage>``); ValueError for unknown stages."""
    return f"twofold.stage.{get_stage(stage).name}"
