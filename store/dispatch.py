"""How the API and the runner hand a stage run to whoever executes it: Celery (by task name, so the API never
imports the worker code) or the in-process runner of ``twofold serve``."""

from __future__ import annotations

import logging
import uuid
from typing import Any, Protocol

from twofold.core.stages import get_stage
from twofold.store.stages import task_name

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    """Sends a stage run to be executed. Call only after the transaction that made it runnable committed."""

    def enqueue(self, stage_run_id: uuid.UUID, stage: str) -> None:
        """Queue ``stage_run_id`` (a run of ``stage``)."""

    def ping(self) -> str:
        """``"ok"`` / ``"embedded"`` / ``"disabled"``; raises when the broker cannot be reached."""

    def start(self) -> None:
        """Begin executing (in-process runners); no-op for brokers."""

    def stop(self) -> None:
        """Stop executing and release resources."""


class CeleryDispatcher:
    """Publishes stage tasks to the Celery broker by name, on the stage's queue."""

    def __init__(
        self,
        broker_url: str | None = None,
        *,
        app: Any = None,
        transport_options: dict[str, Any] | None = None,
    ) -> None:
        if app is None:
            from celery import Celery

            app = Celery("twofold-dispatch", broker=broker_url, set_as_current=False)
            app.conf.update(
                broker_transport_options=transport_options or {},
                broker_connection_timeout=3,
                task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
        self.app = app

    def enqueue(self, stage_run_id: uuid.UUID, stage: str) -> None:
        """Publish ``twofold.stage.<stage>`` with the stage-run id, routed to the stage's queue."""
        self.app.send_task(task_name(stage), args=[str(stage_run_id)], queue=get_stage(stage).queue.value)

    def ping(self) -> str:
        """Connect to the broker once (raises if it is down)."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
        return "ok"

    def start(self) -> None:
        """Nothing to start: workers are separate processes."""

    def stop(self) -> None:
        """Close the publisher's connection pool."""
        self.app.pool.force_close_all()


class NullDispatcher:
    """Accepts jobs but runs nothing (an API started without a broker and without the in-process runner)."""

    def enqueue(self, stage_run_id: uuid.UUID, stage: str) -> None:
        """Log and drop; the sweeper of a runner started later picks the stage up."""
        log.warning("no runner configured: stage run %s (%s) stays pending", stage_run_id, stage)

    def ping(self) -> str:
        """Always ``disabled``."""
        return "disabled"

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""


def enqueue_quietly(dispatcher: Dispatcher, stage_run_id: uuid.UUID, stage: str) -> bool:
    """Enqueue, logging instead of raising when the broker is down: the row is committed, and the sweeper
    requeues runnable stages whose message never arrived."""
    try:
        dispatcher.enqueue(stage_run_id, stage)
        return True
    except Exception:  # broker errors come in many types (kombu, redis, socket)
        log.exception("could not enqueue stage run %s (%s); the sweeper will retry", stage_run_id, stage)
        return False
