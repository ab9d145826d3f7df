"""Where core meets store: run one stage of one job against the database.

``StageRunner.run(stage_run_id)`` claims the stage-run row (a conditional UPDATE), loads the job's spec, data
and already-persisted teacher samples, runs ``core.pipeline.run_stage`` with callbacks that write rows
(samples, labels, metrics, events, checkpoints, evaluations), keeps a heartbeat and watches the cancel flag,
then records the outcome and enqueues the next stage after the commit. Celery tasks and the in-process
runner of ``twofold serve`` both call it.
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

from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from twofold.core.configs import JobSpec
from twofold.core.pipeline import TaskData, load_data, run_stage
from twofold.core.records import Cancelled, EvalResult, Label, StudentSample, TeacherSample
from twofold.store import jobs as ops
from twofold.store.artifacts import ArtifactStore, dir_digest
from twofold.store.db import transaction
from twofold.store.dispatch import Dispatcher, enqueue_quietly
from twofold.store.models import (
    Checkpoint,
    Dataset,
    Evaluation,
    Job,
    MetricPoint,
    RewardLabel,
    StageRun,
    StudentSampleRow,
    TeacherSampleRow,
    utcnow,
)
from twofold.store.settings import Settings
from twofold.store.stages import Status

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


def _text(value: str) -> str:
    """Text PostgreSQL can store: NUL characters (a byte-level model can emit them) become U+FFFD."""
    return value.replace("\x00", "\ufffd")


def _jsonable(value: Any) -> Any:
    """Plain JSON data without NUL characters."""
    return json.loads(_text(json.dumps(value, default=str)).replace("\\u0000", "\\ufffd"))


class DBCallbacks:
    """``core.pipeline.PipelineCallbacks`` that persist everything a stage reports, each in its own short
    transaction (callbacks may come from the stage's threads and its event loop)."""

    def __init__(
        self, rt: Runtime, *, job_id: uuid.UUID, stage_run_id: uuid.UUID, secret: str | None
    ) -> None:
        self.rt = rt
        self.job_id = job_id
        self.stage_run_id = stage_run_id
        self.secret = secret
        self.stop_requested = threading.Event()  # cancel flag seen, claim lost, or runner shutting down
        self.claim_lost = False
        self._progress: tuple[int, int] | None = None
        self._batch = rt.settings.db_batch_size

    # --- plain callbacks -----------------------------------------------------------------------------------------
    def progress(self, stage: str, done: int, total: int) -> None:
        """Remember the latest progress; the heartbeat writes it."""
        self._progress = (int(done), int(total))

    def take_progress(self) -> tuple[int, int] | None:
        """The progress reported since the last call, if any."""
        value, self._progress = self._progress, None
        return value

    def metrics(self, stage: str, step: int, values: dict[str, float]) -> None:
        """Upsert training-curve points (a resumed stage re-reporting a step overwrites it)."""
        rows = [
            {
                "job_id": self.job_id,
                "stage": stage,
                "step": int(step),
                "name": str(k)[:100],
                "value": float(v),
            }
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        with transaction(self.rt.session_factory) as s:
            ops.bulk_upsert(
                s, MetricPoint, rows, conflict=("job_id", "stage", "step", "name"), update_columns=("value",)
            )

    def _scrub(self, text: str) -> str:
        """``text`` with the teacher API key masked and NUL characters replaced."""
        return _text(text.replace(self.secret, "***") if self.secret else text)

    def event(
        self, stage: str, level: str, type: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        """Append an event (the teacher API key, if any, is masked)."""
        payload = _jsonable(data or {})
        if self.secret:
            payload = json.loads(json.dumps(payload).replace(self.secret, "***"))
        with transaction(self.rt.session_factory) as s:
            ops.append_event(
                s,
                self.job_id,
                stage=stage,
                level=level,
                type=type,
                message=self._scrub(message),
                data=payload,
            )

    def should_stop(self) -> bool:
        """True once the job was cancelled (seen by the heartbeat) or this worker lost its claim."""
        return self.stop_requested.is_set()

    # --- persistence hooks -----------------------------------------------------------------------------------
    def teacher_samples(self, samples: list[TeacherSample]) -> None:
        """Persist teacher responses; a response already stored (same question, temperature, index) is kept."""
        rows = [
            {
                "job_id": self.job_id,
                "question_id": s.question_id,
                "temperature": s.key[1],
                "index": s.index,
                "text": _text(s.text),
                "answer": None if s.answer is None else _text(s.answer[:200]),
                "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens,
                "finish_reason": s.finish_reason,
            }
            for s in samples
        ]
        with transaction(self.rt.session_factory) as s:
            ops.bulk_upsert(
                s,
                TeacherSampleRow,
                rows,
                conflict=("job_id", "question_id", "temperature", "index"),
                batch_size=self._batch,
            )

    def student_samples(self, samples: list[StudentSample]) -> None:
        """Persist student responses (a redrawn sample replaces the old one)."""
        rows = [
            {
                "job_id": self.job_id,
                "question_id": s.question_id,
                "index": s.index,
                "text": _text(s.text),
                "answer": None if s.answer is None else _text(s.answer[:200]),
            }
            for s in samples
        ]
        with transaction(self.rt.session_factory) as s:
            ops.bulk_upsert(
                s,
                StudentSampleRow,
                rows,
                conflict=("job_id", "question_id", "index"),
                update_columns=("text", "answer"),
                batch_size=self._batch,
            )

    def labels(self, labels: list[Label], stats: dict[str, Any]) -> None:
        """Replace the job's pseudo-labels and their statistics in one transaction."""
        rows = [
            {
                "job_id": self.job_id,
                "seq": seq,
                "question_id": lab.question_id,
                "source": lab.source,
                "index": lab.index,
                "temperature": lab.temperature,
                "text": _text(lab.text),
                "answer": None if lab.answer is None else _text(lab.answer[:200]),
                "majority": _text(lab.majority[:200]),
                "label": int(lab.label),
                "agreement": float(lab.agreement),
            }
            for seq, lab in enumerate(labels)
        ]
        with transaction(self.rt.session_factory) as s:
            s.execute(delete(RewardLabel).where(RewardLabel.job_id == self.job_id))
            ops.bulk_upsert(s, RewardLabel, rows, batch_size=self._batch)
            s.execute(update(Job).where(Job.id == self.job_id).values(label_stats=_jsonable(stats)))

    def checkpoint(self, stage: str, kind: str, step: int, path: Path) -> None:
        """Snapshot a checkpoint directory into the artifact store and record its size and sha256."""
        key = ArtifactStore.checkpoint_key(self.job_id, stage, kind, step)
        size, sha = dir_digest(Path(path))
        self.rt.artifacts.put_dir(Path(path), key)
        with transaction(self.rt.session_factory) as s:
            ops.bulk_upsert(
                s,
                Checkpoint,
                [
                    {
                        "job_id": self.job_id,
                        "stage": stage,
                        "kind": kind,
                        "step": int(step),
                        "uri": key,
                        "size_bytes": size,
                        "sha256": sha,
                    }
                ],
                conflict=("job_id", "stage", "kind", "step"),
                update_columns=("uri", "size_bytes", "sha256"),
            )
            row = s.get(StageRun, self.stage_run_id)
            if row is not None:
                row.artifacts = {**(row.artifacts or {}), kind: key}
            ops.append_event(
                s,
                self.job_id,
                stage=stage,
                type="checkpoint.saved",
                message=f"{kind} checkpoint at step {step} ({size / 1e6:.1f} MB)",
                data={"kind": kind, "step": int(step), "size_bytes": size, "sha256": sha},
            )

    def evaluation(self, result: EvalResult) -> None:
        """Record a score (one row per model and benchmark) and keep its per-item results as an artifact."""
        with transaction(self.rt.session_factory) as s:
            existing = s.scalar(
                select(Evaluation.id).where(
                    Evaluation.job_id == self.job_id,
                    Evaluation.model == result.model,
                    Evaluation.benchmark == result.benchmark,
                )
            )
            evaluation_id = existing or uuid.uuid4()
            items_key = ArtifactStore.eval_items_key(self.job_id, evaluation_id)
            with self.rt.artifacts.open_write(items_key) as fh:
                for item in result.items:
                    fh.write((json.dumps(item, default=str) + "\n").encode())
            ops.bulk_upsert(
                s,
                Evaluation,
                [
                    {
                        "id": evaluation_id,
                        "job_id": self.job_id,
                        "model": result.model,
                        "benchmark": result.benchmark,
                        "accuracy": float(result.accuracy),
                        "ci_low": float(result.ci95[0]),
                        "ci_high": float(result.ci95[1]),
                        "n": int(result.n),
                        "extraction_version": str(result.extraction_version),
                        "items_uri": items_key,
                    }
                ],
                conflict=("job_id", "model", "benchmark"),
                update_columns=("accuracy", "ci_low", "ci_high", "n", "extraction_version", "items_uri"),
            )


class Heartbeat:
    """A thread that touches the stage row every ``interval`` seconds (with the latest progress) and raises
    the stop flag when the job is cancelled or another worker took the stage over."""

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
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        progress = self.cb.take_progress()
        if progress is not None:
            values.update(progress_done=progress[0], progress_total=progress[1])
        with transaction(self.rt.session_factory) as s:
            touched = ops.rowcount(
                s.execute(
                    update(StageRun)
                    .where(
                        StageRun.id == self.cb.stage_run_id,
                        StageRun.claimed_by == self.token,
                        StageRun.status == Status.running,
                    )
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
            )
            cancelled = s.scalar(select(Job.cancel_requested).where(Job.id == self.cb.job_id))
        if touched == 0:
            self.cb.claim_lost = True
            self.cb.stop_requested.set()
        if cancelled or (self.shutdown is not None and self.shutdown.is_set()):
            self.cb.stop_requested.set()


@dataclass
class _Claim:
    stage_run_id: uuid.UUID
    job_id: uuid.UUID
    stage: str
    attempt: int
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
            teacher = self._teacher_samples(claim.job_id)
            summary = self.stage_fn(
                claim.stage,
                spec=spec,
                data=data,
                workdir=self.rt.workdir(claim.job_id),
                callbacks=cb,
                teacher_samples=teacher,
            )
            outcome = "succeeded"
        except Cancelled:
            outcome = "cancelled"
        except Exception as exc:
            if _is_transient(exc):
                heartbeat.stop()
                self._release(claim, token, reason=f"database error: {type(exc).__name__}")
                raise TransientStageError(str(exc)) from exc
            trace = cb._scrub("".join(traceback.format_exception(exc)))  # logs never carry the teacher key
            log.error("stage %s of job %s failed:\n%s", claim.stage, claim.job_id, trace)
            outcome, error = "failed", self._describe(exc, cb)
        finally:
            heartbeat.stop()
        if cb.claim_lost:
            return "lost"
        if outcome == "cancelled" and self.shutdown is not None and self.shutdown.is_set():
            self._release(claim, token, reason="runner shutting down")
            return "released"
        self._finish(claim, token, outcome, summary=summary, error=error)
        return outcome

    # --- steps -------------------------------------------------------------------------------------------------
    def _claim(self, stage_run_id: uuid.UUID, token: str) -> _Claim | None:
        stale = timedelta(seconds=self.rt.settings.stale_after_s)
        with transaction(self.rt.session_factory) as s:
            row = ops.claim_stage(s, stage_run_id, worker=token, stale_after=stale)
            if row is None:
                return None
            job = s.get(Job, row.job_id)
            assert job is not None
            dataset_uri = (
                s.scalar(select(Dataset.uri).where(Dataset.id == job.dataset_id)) if job.dataset_id else None
            )
            ops.append_event(
                s,
                job.id,
                stage=row.name,
                type="stage.claimed",
                message=f"{row.name}: attempt {row.attempt} on {self.worker}",
                data={"attempt": row.attempt, "worker": self.worker},
            )
            return _Claim(
                stage_run_id=row.id,
                job_id=job.id,
                stage=row.name,
                attempt=row.attempt,
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

    def _describe(self, exc: Exception, cb: DBCallbacks) -> str:
        if type(exc).__name__ == "SoftTimeLimitExceeded":
            return f"the stage ran past its time limit ({self.rt.settings.stage_soft_time_limit_s} s)"
        if isinstance(exc, StatementError) and exc.orig is not None:  # not the SQL and its parameters
            text = f"database error: {type(exc.orig).__name__}: {exc.orig}"
        else:
            text = f"{type(exc).__name__}: {exc}"
        return cb._scrub(text)[:4000]

    def _release(self, claim: _Claim, token: str, *, reason: str) -> None:
        """Give the row back as pending (best effort) so that it runs again from its saved state."""
        try:
            with transaction(self.rt.session_factory) as s:
                released = ops.rowcount(
                    s.execute(
                        update(StageRun)
                        .where(StageRun.id == claim.stage_run_id, StageRun.claimed_by == token)
                        .values(status=Status.pending, claimed_by=None, enqueued_at=utcnow())
                        .execution_options(synchronize_session=False)
                    )
                )
                if released:
                    ops.append_event(
                        s,
                        claim.job_id,
                        stage=claim.stage,
                        level="warning",
                        type="stage.released",
                        message=f"{claim.stage} handed back: {reason}",
                    )
        except Exception:  # the database may still be down; the sweeper requeues the stale row later
            log.warning("could not release stage run %s", claim.stage_run_id, exc_info=True)

    def _finish(
        self, claim: _Claim, token: str, outcome: str, *, summary: dict[str, Any] | None, error: str | None
    ) -> None:
        """Record the outcome with the job locked, derive the job status, and enqueue the next stage after the
        commit."""
        following: StageRun | None = None
        with transaction(self.rt.session_factory) as s:
            job = ops.lock_job(s, claim.job_id)
            row = s.get(StageRun, claim.stage_run_id, populate_existing=True)
            if row is None or row.status != Status.running or row.claimed_by != token:
                log.warning("stage run %s was taken over; dropping this outcome", claim.stage_run_id)
                return
            now = utcnow()
            row.finished_at = now
            if outcome == "succeeded":
                row.status = Status.succeeded
                row.metrics = _jsonable(summary or {})
                row.progress_done = row.progress_total = max(row.progress_total, 1)
                ops.append_event(
                    s, job.id, stage=row.name, type="stage.succeeded", message=f"{row.name} succeeded"
                )
            elif outcome == "cancelled":
                row.status = Status.cancelled
                ops.append_event(
                    s,
                    job.id,
                    stage=row.name,
                    type="stage.cancelled",
                    message=f"{row.name} cancelled",
                    level="warning",
                )
            else:
                row.status, row.error = Status.failed, error
                job.error_code, job.error_message, job.error_stage = "stage_failed", error, row.name
                ops.append_event(
                    s,
                    job.id,
                    stage=row.name,
                    type="stage.failed",
                    message=f"{row.name} failed: {error}",
                    level="error",
                )
            stages = ops.stages_of(s, job.id)
            ops.sync_job_status(s, job, stages)
            if job.status == Status.running:
                following = ops.next_stage(stages)
                if following is not None:
                    following.enqueued_at = now
            if job.status == Status.succeeded:
                job.summary = self._summary(s, job, stages)
        if following is not None:
            enqueue_quietly(self.rt.dispatcher, following.id, following.name)

    @staticmethod
    def _summary(s: Session, job: Job, stages: list[StageRun]) -> dict[str, Any]:
        evaluations = s.scalars(select(Evaluation).where(Evaluation.job_id == job.id))
        return {
            "evaluations": {
                e.model: {
                    "benchmark": e.benchmark,
                    "accuracy": e.accuracy,
                    "ci95": [e.ci_low, e.ci_high],
                    "n": e.n,
                }
                for e in evaluations
            },
            "stage_seconds": {st.name: (st.metrics or {}).get("seconds") for st in stages},
            "labels": {k: v for k, v in (job.label_stats or {}).items() if k != "agreement_histogram"},
            "reward_model": next((st.metrics for st in stages if st.name == "reward_model"), None),
        }


def sweep(rt: Runtime) -> int:
    """Requeue stage runs whose worker died (stale heartbeat) or whose message was lost; returns how many."""
    stale = timedelta(seconds=rt.settings.stale_after_s)
    with transaction(rt.session_factory) as s:
        rows = [(r.id, r.name) for r in ops.find_stale(s, stale_after=stale, lost_after=stale * 5)]
    for stage_run_id, name in rows:
        enqueue_quietly(rt.dispatcher, stage_run_id, name)
    if rows:
        log.info("sweeper requeued %d stage run(s)", len(rows))
    return len(rows)


def runnable_stages(rt: Runtime) -> list[tuple[uuid.UUID, str]]:
    """(id, stage) of every stage run that could run now: the next stage of each unfinished job (used when an
    in-process runner starts, to pick up where the last one stopped)."""
    with rt.session_factory() as s:
        jobs = s.scalars(select(Job.id).where(Job.status.in_([Status.pending, Status.running])))
        out = []
        for job_id in jobs:
            stages = ops.stages_of(s, job_id)
            running = [st for st in stages if st.status == Status.running]
            nxt = running[0] if running else ops.next_stage(stages)
            if nxt is not None:
                out.append((nxt.id, nxt.name))
        return out
