"""Where core meets store: run one stage of one job against the database.

``StageRunner.run(stage_run_id)`` claims the stage-run row (``store.flows.claim``), loads the job's spec, data
and already-persisted teacher samples, runs ``core.pipeline.run_stage`` with callbacks that write rows
(``workers.callbacks.DBCallbacks``) while a :class:`Heartbeat` keeps the claim alive and watches the cancel flag,
then records the outcome (``store.flows.finish``) and enqueues the next stage after the commit. Celery tasks and
the in-process runner of ``twofold serve`` both call it. Every status change goes through ``store.flows``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from twofold.core.configs import JobSpec
from twofold.core.pipeline import run_stage
from twofold.core.records import Cancelled, TeacherSample
from twofold.core.stages.context import TaskData, load_data
from twofold.store import flows
from twofold.store.artifacts import ArtifactStore
from twofold.store.db import transaction
from twofold.store.dispatch import Dispatcher, enqueue_quietly
from twofold.store.models import Dataset, Job, TeacherSampleRow
from twofold.store.settings import Settings
from twofold.store.stages import Status
from twofold.workers.callbacks import DBCallbacks, storable_json

log = logging.getLogger(__name__)

StageFn = Callable[..., dict[str, Any]]


class TransientStageError(Exception):
    """The stage hit a transient infrastructure error (database connection lost); run it again later."""


@dataclass
class Runtime:
    """What a runner needs: settings, sessions, the artifact store and where to send the next stage."""

    settings: Settings
    session_factory: sessionmaker[Session]
    artifacts: ArtifactStore
    dispatcher: Dispatcher

    def workdir(self, job_id: uuid.UUID) -> Path:
        """The job's work directory on the filesystem shared by workers (a stage rerun resumes from it)."""
        path = self.settings.local_work_dir / "jobs" / str(uuid.UUID(str(job_id))) / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


class Heartbeat:
    """A thread that touches the stage row every ``heartbeat_interval_s`` (with the latest progress) and raises
    the callbacks' stop flag when the job is cancelled, another worker took the stage over, or ``shutdown`` is
    set."""

    def __init__(self, rt: Runtime, cb: DBCallbacks, *, token: str, shutdown: threading.Event | None) -> None:
        self.rt, self.cb, self.token, self.shutdown = rt, cb, token, shutdown
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{cb.stage_run_id}", daemon=True)

    def start(self) -> None:
        """Begin beating."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (and wait for the thread)."""
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.rt.settings.heartbeat_interval_s):
            try:
                self.beat()
            except Exception:  # a database blip must not kill the heartbeat; the next beat retries
                log.warning("heartbeat failed for stage run %s", self.cb.stage_run_id, exc_info=True)

    def beat(self) -> None:
        """One heartbeat."""
        with transaction(self.rt.session_factory) as s:
            beat = flows.touch(
                s,
                self.cb.stage_run_id,
                job_id=self.cb.job_id,
                worker=self.token,
                progress=self.cb.take_progress(),
            )
        if beat.claim_lost:
            self.cb.claim_lost = True
            self.cb.stop_requested.set()
        if beat.cancel_requested or (self.shutdown is not None and self.shutdown.is_set()):
            self.cb.stop_requested.set()


@dataclass
class _Claim:
    """What a claimed stage run needs from its job, read in the claiming transaction."""

    stage_run_id: uuid.UUID
    job_id: uuid.UUID
    stage: str
    spec: dict[str, Any]
    secret: str | None
    dataset_uri: str | None


class StageRunner:
    """Runs stage runs by id. ``shutdown`` (optional) asks running stages to give their row back."""

    def __init__(
        self,
        rt: Runtime,
        *,
        worker: str | None = None,
        shutdown: threading.Event | None = None,
        stage_fn: StageFn = run_stage,
    ) -> None:
        self.rt = rt
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}"
        self.shutdown = shutdown
        self.stage_fn = stage_fn

    def run(self, stage_run_id: uuid.UUID | str) -> str:
        """Run one stage run if it can be claimed; returns ``skipped``, ``succeeded``, ``failed``, ``cancelled``,
        ``released`` (handed back on shutdown) or ``lost`` (another worker took over). Raises
        :class:`TransientStageError` when the database went away mid-stage."""
        token = f"{self.worker}:{threading.get_ident()}:{uuid.uuid4().hex[:8]}"
        claim = self._claim(uuid.UUID(str(stage_run_id)), token)
        if claim is None:
            return "skipped"
        cb = DBCallbacks(self.rt, job_id=claim.job_id, stage_run_id=claim.stage_run_id, secret=claim.secret)
        heartbeat = Heartbeat(self.rt, cb, token=token, shutdown=self.shutdown)
        heartbeat.start()
        summary: dict[str, Any] | None = None
        error: str | None = None
        try:
            spec, data = self._inputs(claim)
            summary = self.stage_fn(
                claim.stage,
                spec=spec,
                data=data,
                workdir=self.rt.workdir(claim.job_id),
                callbacks=cb,
                teacher_samples=self._teacher_samples(claim.job_id),
            )
            status = Status.succeeded
        except Cancelled:
            status = Status.cancelled
        except Exception as exc:
            if _is_transient(exc):
                heartbeat.stop()
                self._release(claim, token, reason=f"database error: {type(exc).__name__}")
                raise TransientStageError(str(exc)) from exc
            trace = cb.scrub("".join(traceback.format_exception(exc)))  # logs never carry the teacher key
            log.error("stage %s of job %s failed:\n%s", claim.stage, claim.job_id, trace)
            status, error = Status.failed, cb.scrub(self._describe(exc))
        finally:
            heartbeat.stop()
        if cb.claim_lost:
            return "lost"
        if status == Status.cancelled and self.shutdown is not None and self.shutdown.is_set():
            self._release(claim, token, reason="runner shutting down")
            return "released"
        with transaction(self.rt.session_factory) as s:
            following = flows.finish(
                s,
                claim.stage_run_id,
                worker=token,
                status=status,
                summary=storable_json(summary or {}),
                error=error,
            )
            queued = (following.id, following.name) if following is not None else None
        if queued is not None:  # after the commit, so the next worker sees this stage succeeded
            enqueue_quietly(self.rt.dispatcher, *queued)
        return str(status)

    # --- steps -------------------------------------------------------------------------------------------------
    def _claim(self, stage_run_id: uuid.UUID, token: str) -> _Claim | None:
        stale = timedelta(seconds=self.rt.settings.stale_after_s)
        with transaction(self.rt.session_factory) as s:
            row = flows.claim(s, stage_run_id, worker=token, stale_after=stale, worker_name=self.worker)
            if row is None:
                return None
            job = s.get(Job, row.job_id)
            assert job is not None
            dataset_uri = (
                s.scalar(select(Dataset.uri).where(Dataset.id == job.dataset_id)) if job.dataset_id else None
            )
            return _Claim(
                stage_run_id=row.id,
                job_id=job.id,
                stage=row.name,
                spec=job.spec,
                secret=job.teacher_api_key,
                dataset_uri=dataset_uri,
            )

    def _inputs(self, claim: _Claim) -> tuple[JobSpec, TaskData]:
        raw = json.loads(json.dumps(claim.spec))
        raw["teacher"]["api_key"] = claim.secret
        spec = JobSpec.from_dict(raw)
        if claim.dataset_uri is not None:
            cache = self.rt.workdir(claim.job_id) / "inputs"
            local = self.rt.artifacts.local_file(claim.dataset_uri, cache)
            spec = replace(spec, data=replace(spec.data, path=str(local)))
        return spec, load_data(spec.data)

    def _teacher_samples(self, job_id: uuid.UUID) -> list[TeacherSample]:
        with self.rt.session_factory() as s:
            rows = s.scalars(select(TeacherSampleRow).where(TeacherSampleRow.job_id == job_id))
            return [
                TeacherSample(
                    question_id=r.question_id,
                    temperature=r.temperature,
                    index=r.index,
                    text=r.text,
                    answer=r.answer,
                    prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens,
                    finish_reason=r.finish_reason,
                )
                for r in rows
            ]

    def _describe(self, exc: Exception) -> str:
        """The error message a failed stage run shows (never SQL or its parameters)."""
        if type(exc).__name__ == "SoftTimeLimitExceeded":
            return f"the stage ran past its time limit ({self.rt.settings.stage_soft_time_limit_s} s)"
        if isinstance(exc, StatementError) and exc.orig is not None:
            return f"database error: {type(exc.orig).__name__}: {exc.orig}"
        return f"{type(exc).__name__}: {exc}"

    def _release(self, claim: _Claim, token: str, *, reason: str) -> None:
        """Give the row back as pending (best effort) so that it runs again from its saved state."""
        try:
            with transaction(self.rt.session_factory) as s:
                flows.release(s, claim.stage_run_id, worker=token, reason=reason)
        except Exception:  # the database may still be down; the sweeper requeues the stale row later
            log.warning("could not release stage run %s", claim.stage_run_id, exc_info=True)


def sweep(rt: Runtime) -> int:
    """Requeue stage runs whose worker died (stale heartbeat) or whose message was lost; returns how many."""
    stale = timedelta(seconds=rt.settings.stale_after_s)
    with transaction(rt.session_factory) as s:
        rows = [(r.id, r.name) for r in flows.find_stale(s, stale_after=stale, lost_after=stale * 5)]
    for stage_run_id, name in rows:
        enqueue_quietly(rt.dispatcher, stage_run_id, name)
    if rows:
        log.info("sweeper requeued %d stage run(s)", len(rows))
    return len(rows)


def runnable_stages(rt: Runtime) -> list[tuple[uuid.UUID, str]]:
    """(id, stage) of every stage run that could run now: the next stage of each unfinished job (used when an
    in-process runner starts, to pick up where the last one stopped)."""
    with rt.session_factory() as s:
        return [(r.id, r.name) for r in flows.runnable(s)]
