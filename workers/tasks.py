"""One thin Celery task per stage, each taking a stage-run id, plus the sweeper. All the work is in
``workers.runner``; a task only finds its process's runtime and calls it."""

from __future__ import annotations

import functools
import logging
import socket

from celery import Task

from twofold.store.artifacts import ArtifactStore
from twofold.store.db import make_engine, make_session_factory
from twofold.store.dispatch import CeleryDispatcher
from twofold.store.settings import Settings
from twofold.store.stages import SWEEP_TASK, Queue, task_name
from twofold.workers.app import app
from twofold.workers.runner import Runtime, StageRunner, TransientStageError, sweep

log = logging.getLogger(__name__)


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


def _run(stage_run_id: str) -> str:
    return StageRunner(runtime(), worker=socket.gethostname()).run(stage_run_id)


@app.task(base=StageTask, name=task_name("teacher_sampling"), queue=Queue.io.value)
def teacher_sampling(stage_run_id: str) -> str:
    """Sample the teacher for every training question (persisting each response before it is used)."""
    return _run(stage_run_id)


@app.task(base=StageTask, name=task_name("sft"), queue=Queue.gpu.value)
def sft(stage_run_id: str) -> str:
    """Fine-tune the student on the teacher answers that agree with the majority."""
    return _run(stage_run_id)


@app.task(base=StageTask, name=task_name("labeling"), queue=Queue.gpu.value)
def labeling(stage_run_id: str) -> str:
    """Draw student samples and pseudo-label teacher and student responses."""
    return _run(stage_run_id)


@app.task(base=StageTask, name=task_name("reward_model"), queue=Queue.gpu.value)
def reward_model(stage_run_id: str) -> str:
    """Train the reward model on the pseudo-labels."""
    return _run(stage_run_id)


@app.task(base=StageTask, name=task_name("rl"), queue=Queue.gpu.value)
def rl(stage_run_id: str) -> str:
    """RL of the SFT student against the reward model."""
    return _run(stage_run_id)


@app.task(base=StageTask, name=task_name("evaluation"), queue=Queue.gpu.value)
def evaluation(stage_run_id: str) -> str:
    """Score the teacher, the SFT student and the RL student on the held-out split."""
    return _run(stage_run_id)


@app.task(name=SWEEP_TASK, queue=Queue.default.value, ignore_result=True)
def sweep_stale() -> int:
    """Requeue stage runs whose heartbeat went stale or whose message was lost."""
    return sweep(runtime())
