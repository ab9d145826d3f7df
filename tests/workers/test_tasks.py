"""The Celery tasks come from the stage table: one thin task per stage, named and routed from its entry."""

from __future__ import annotations

from twofold.core.stages import STAGE_NAMES, STAGES
from twofold.store.stages import task_name
from twofold.workers import tasks
from twofold.workers.app import app


def test_one_task_per_stage_named_and_routed_from_the_table() -> None:
    assert list(tasks.STAGE_TASKS) == list(STAGE_NAMES)
    for stage in STAGES:
        task = tasks.STAGE_TASKS[stage.name]
        assert task.name == task_name(stage.name) == f"twofold.stage.{stage.name}"
        registered = app.tasks[task.name]  # so the API can send it by name
        assert task.queue == registered.queue == stage.queue.value
        assert task.acks_late and task.reject_on_worker_lost and task.ignore_result
        assert task.autoretry_for == (tasks.TransientStageError,) and task.max_retries == 10
        assert task.__doc__ == stage.help
