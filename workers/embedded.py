"""The in-process runner of ``twofold serve`` without a broker: stage runs go to a queue served by background
threads that call the same ``StageRunner`` as the Celery tasks, plus a sweeper thread."""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid

from twofold.workers.runner import Runtime, StageRunner, TransientStageError, runnable_stages, sweep

log = logging.getLogger(__name__)
RETRY_DELAY_S = 5.0


class EmbeddedDispatcher:
    """A ``store.dispatch.Dispatcher`` that runs stages in this process. Build the runtime with this object as
    its dispatcher (``rt.dispatcher = embedded``) so finished stages enqueue the next one here."""

    def __init__(self, *, threads: int = 1) -> None:
        self.threads = threads
        self.rt: Runtime | None = None
        self._queue: queue.Queue[uuid.UUID | None] = queue.Queue()
        self._shutdown = threading.Event()
        self._workers: list[threading.Thread] = []

    def bind(self, rt: Runtime) -> None:
        """Attach the runtime the threads use."""
        self.rt = rt

    def enqueue(self, stage_run_id: uuid.UUID, stage: str) -> None:
        """Queue a stage run for the background threads."""
        self._queue.put(uuid.UUID(str(stage_run_id)))

    def ping(self) -> str:
        """Always reachable."""
        return "embedded"

    def start(self) -> None:
        """Start the stage threads and the sweeper, and queue what the last process left unfinished."""
        if self.rt is None:
            raise RuntimeError("EmbeddedDispatcher.bind(runtime) must be called before start()")
        for i in range(self.threads):
            t = threading.Thread(target=self._work, name=f"twofold-stage-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        sweeper = threading.Thread(target=self._sweep, name="twofold-sweeper", daemon=True)
        sweeper.start()
        self._workers.append(sweeper)
        for stage_run_id, _ in runnable_stages(self.rt):
            self._queue.put(stage_run_id)

    def stop(self) -> None:
        """Ask running stages to hand their rows back and wait briefly for the threads."""
        self._shutdown.set()
        for _ in range(self.threads):
            self._queue.put(None)
        deadline = time.monotonic() + 15
        for t in self._workers:
            t.join(timeout=max(0.1, deadline - time.monotonic()))

    def _work(self) -> None:
        assert self.rt is not None
        runner = StageRunner(
            self.rt, worker=f"embedded:{threading.current_thread().name}", shutdown=self._shutdown
        )
        while not self._shutdown.is_set():
            item = self._queue.get()
            if item is None:
                return
            try:
                runner.run(item)
            except TransientStageError:
                log.warning("stage run %s hit a database error; retrying in %.0fs", item, RETRY_DELAY_S)
                threading.Timer(RETRY_DELAY_S, self._queue.put, args=(item,)).start()
            except Exception:  # keep the thread alive for the next job
                log.exception("stage run %s crashed the runner", item)

    def _sweep(self) -> None:
        assert self.rt is not None
        while not self._shutdown.wait(self.rt.settings.sweep_interval_s):
            try:
                sweep(self.rt)
            except Exception:  # the database may be briefly unavailable
                log.warning("sweep failed", exc_info=True)
