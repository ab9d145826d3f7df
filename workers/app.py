"""The Celery application (``celery -A twofold.workers.app worker``, or ``twofold worker``).

Settings are read once, here, at the worker's entry point. Tasks acknowledge late and are rejected back to
the queue if their process dies; each worker process takes one task at a time; results are off because the
stage-run row is the truth.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue as KombuQueue

from twofold.store.settings import Settings
from twofold.store.stages import SWEEP_TASK, Queue


def create_celery(settings: Settings) -> Celery:
    """A Celery app configured from ``settings`` (broker, queues, limits, the sweeper's schedule)."""
    if not settings.broker_url:
        raise RuntimeError(
            "TWOFOLD_BROKER_URL is not set: Celery workers need a broker (e.g. redis://127.0.0.1:6379/0)"
        )
    app = Celery("twofold", broker=settings.broker_url, include=["twofold.workers.tasks"])
    app.conf.update(
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.stage_soft_time_limit_s,
        task_time_limit=settings.stage_time_limit_s,
        task_default_queue=Queue.default.value,
        task_queues=[KombuQueue(q.value, routing_key=q.value) for q in Queue],
        task_create_missing_queues=True,
        broker_transport_options=settings.broker_transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        beat_schedule={
            "sweep-stale-stages": {
                "task": SWEEP_TASK,
                "schedule": settings.sweep_interval_s,
                "options": {"queue": Queue.default.value, "expires": settings.sweep_interval_s},
            }
        },
    )
    app.conf.twofold_settings = settings
    return app


settings = Settings()
app = create_celery(settings) if settings.broker_url else Celery("twofold", include=["twofold.workers.tasks"])
