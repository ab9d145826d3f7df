"""The Celery tasks: one per entry of ``core.stages.STAGES``, all built by :func:`stage_task`, plus the sweeper.

A stage task is thin: it takes a stage-run id, finds its process's runtime and calls ``workers.runner``. Its name
(``twofold.stage.<name>``) and queue come from the stage table, so a stage added there has a task here.
"""

from __future__ import annotations

import functools
import socket

from celery import Task

from twofold.core.stages import STAGES, Stage
from twofold.store.artifacts import ArtifactStore
from twofold.store.db import make_engine, make_session_factory
from twofold.store.dispatch import CeleryDispatcher
from twofold.store.settings import Settings
from twofold.store.stages import SWEEP_TASK, Queue, task_name
from twofold.workers.app import app
from twofold.workers.runner import Runtime, StageRunner, TransientStageError, sweep


@functools.cache
def runtime() -> Runtime:
    """This worker process's runtime, built on first use (after the fork, so connections are not shared)."""
    settings: Settings = app.conf.twofold_settings
    engine = make_engine(settings.database_url)
    return Runtime(
        settings=settings,
        session_factory=make_session_factory(engine),
        artifacts=ArtifactStore(settings.artifacts_url),
        dispatcher=CeleryDispatcher(app=app),
    )


class StageTask(Task):
    """Base of the stage tasks: late ack, requeue on a lost worker, retry only transient errors."""

    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    autoretry_for = (TransientStageError,)
    retry_backoff = 5
    retry_backoff_max = 300
    retry_jitter = True
    max_retries = 10


def stage_task(stage: Stage) -> Task:
    """The Celery task that runs ``stage``: named ``twofold.stage.<name>``, routed to the stage's queue, taking
    a stage-run id and returning the runner's outcome."""

    def run(stage_run_id: str) -> str:
        return StageRunner(runtime(), worker=socket.gethostname()).run(stage_run_id)

    run.__name__ = run.__qualname__ = stage.name
    run.__doc__ = stage.help
    task: Task = app.task(base=StageTask, name=task_name(stage.name), queue=stage.queue.value)(run)
    return task


#: Stage name -> its task.
STAGE_TASKS: dict[str, Task] = {stage.name: stage_task(stage) for stage in STAGES}


@app.task(name=SWEEP_TASK, queue=Queue.default.value, ignore_result=True)
def sweep_stale() -> int:
    """Requeue stage runs whose heartbeat went stale or whose message was lost."""
    return sweep(runtime())
