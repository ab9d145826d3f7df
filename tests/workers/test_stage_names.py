"""The service's stage vocabulary mirrors the pipeline's (the API uses it without importing core.pipeline)."""

from __future__ import annotations

from twofold.core.pipeline import STAGE_QUEUE as CORE_QUEUES
from twofold.core.pipeline import STAGES as CORE_STAGES
from twofold.store.stages import STAGE_QUEUE, STAGES, task_name
from twofold.workers import tasks


def test_stages_and_queues_match_the_pipeline() -> None:
    assert STAGES == CORE_STAGES
    assert {k: v.value for k, v in STAGE_QUEUE.items()} == CORE_QUEUES


def test_one_task_per_stage_routed_to_its_queue() -> None:
    for name in STAGES:
        task = getattr(tasks, name)
        assert task.name == task_name(name)
        assert task.queue == STAGE_QUEUE[name].value
        assert task.acks_late and task.reject_on_worker_lost and task.ignore_result
