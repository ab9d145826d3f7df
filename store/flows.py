"""The stage-run state machine: every change of a stage run's status, and of the job status that follows from it.

::

    pending --claim--> running --finish--> succeeded | failed | cancelled
    running --release--> pending            (handed back: worker shutting down, database error)
    running, heartbeat stale --claim--> running, attempt + 1   (its worker died)
    pending --request_cancel--> cancelled   (a running stage stops at its next check, then finishes cancelled)
    failed | cancelled --reset_for_retry--> pending

The stage-run rows are the truth; a job's status is derived from them by :func:`sync_job_status`, which every
transition calls with the job row locked, so the API (cancel, retry) and the workers (claim, finish) serialise on
it. Each function works inside the caller's transaction; the caller commits, then enqueues what it returns.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from twofold.store.jobs import append_event, lock_job, rowcount, stages_of
from twofold.store.models import Evaluation, Job, StageRun, utcnow
from twofold.store.stages import FINISHED, Status

log = logging.getLogger(__name__)

#: Longest error message kept on a stage run and its job (the column is unbounded ``Text``; a message is a
#: summary, the full traceback goes to the worker's log).
ERROR_CHARS = 4000


class TransitionError(Exception):
    """A job cannot make the requested transition (e.g. cancel a finished job)."""


def sync_job_status(session: Session, job: Job, stages: Sequence[StageRun] | None = None) -> Job:
    """Derive the job's status, current stage and timestamps from its stage runs (call with the job locked).

    A cancel request turns pending stages into cancelled ones once nothing runs, so a job whose stage finished
    at the moment it was cancelled still ends ``cancelled``.
    """
    stages = list(stages) if stages is not None else stages_of(session, job.id)
    now = utcnow()
    statuses = [s.status for s in stages]
    if job.cancel_requested and Status.running not in statuses:
        for s in stages:
            if s.status == Status.pending:
                s.status, s.finished_at = Status.cancelled, now
        statuses = [s.status for s in stages]

    if Status.running in statuses:
        status = Status.running
    elif Status.failed in statuses:
        status = Status.failed
    elif Status.cancelled in statuses:
        status = Status.cancelled
    elif all(s == Status.succeeded for s in statuses):
        status = Status.succeeded
    elif Status.succeeded in statuses:
        status = Status.running  # between two stages
    else:
        status = Status.pending

    current = next((s for s in stages if s.status != Status.succeeded), stages[-1] if stages else None)
    job.current_stage = current.name if current else None
    if status != job.status:
        job.status = status
        if status == Status.running and job.started_at is None:
            job.started_at = now
        job.finished_at = now if status in FINISHED else None
        if status in FINISHED:
            level = {Status.succeeded: "info", Status.cancelled: "warning"}.get(status, "error")
            append_event(session, job.id, type=f"job.{status}", message=f"job {status}", level=level)
    return job


def next_stage(stages: Sequence[StageRun]) -> StageRun | None:
    """The first pending stage whose predecessors all succeeded (the one to enqueue), if any."""
    for s in stages:
        if s.status == Status.succeeded:
            continue
        return s if s.status == Status.pending else None
    return None


def claim(
    session: Session,
    stage_run_id: uuid.UUID,
    *,
    worker: str,
    stale_after: timedelta,
    worker_name: str | None = None,
) -> StageRun | None:
    """Claim a stage run for ``worker`` (a token unique to this attempt) with a conditional UPDATE: pending ->
    running, or a running row whose heartbeat is older than ``stale_after`` (its worker died) -> running with
    attempt + 1. ``worker_name`` names the worker in the ``stage.claimed`` event (default: ``worker``).

    Returns the claimed row, or None when the row is missing, finished, held by a live worker, not yet runnable
    (an earlier stage has not succeeded), or its job was cancelled meanwhile (the row is then cancelled).
    """
    row = session.get(StageRun, stage_run_id)
    if row is None:
        return None
    job = lock_job(session, row.job_id)
    stages = stages_of(session, job.id)
    mine = next(s for s in stages if s.id == stage_run_id)
    if any(s.status != Status.succeeded for s in stages if s.position < mine.position):
        return None
    now = utcnow()
    claimed = session.execute(
        update(StageRun)
        .where(
            StageRun.id == stage_run_id,
            or_(
                StageRun.status == Status.pending,
                and_(
                    StageRun.status == Status.running,
                    or_(StageRun.heartbeat_at.is_(None), StageRun.heartbeat_at < now - stale_after),
                ),
            ),
        )
        .values(
            status=Status.running,
            attempt=StageRun.attempt + 1,
            claimed_by=worker,
            heartbeat_at=now,
            started_at=now,
            finished_at=None,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    if rowcount(claimed) != 1:
        return None
    session.refresh(mine)
    if job.cancel_requested:  # cancelled while queued, or while its dead worker held it
        mine.status, mine.finished_at = Status.cancelled, now
        append_event(
            session, job.id, type="stage.cancelled", message="cancelled before it ran", stage=mine.name
        )
        sync_job_status(session, job, stages)
        return None
    sync_job_status(session, job, stages)
    name = worker_name or worker
    append_event(
        session,
        job.id,
        stage=mine.name,
        type="stage.claimed",
        message=f"{mine.name}: attempt {mine.attempt} on {name}",
        data={"attempt": mine.attempt, "worker": name},
    )
    return mine


@dataclass(frozen=True)
class Beat:
    """What one heartbeat found: ``claim_lost`` (another worker holds the row now, or it is no longer
    running) and ``cancel_requested`` (the job was cancelled). Either means: stop."""

    claim_lost: bool
    cancel_requested: bool


def touch(
    session: Session,
    stage_run_id: uuid.UUID,
    *,
    job_id: uuid.UUID,
    worker: str,
    progress: tuple[int, int] | None = None,
) -> Beat:
    """Heartbeat: stamp ``heartbeat_at`` (and ``progress`` = (done, total), if given) on the row ``worker``
    holds, and read the job's cancel flag."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values.update(progress_done=progress[0], progress_total=progress[1])
    touched = rowcount(
        session.execute(
            update(StageRun)
            .where(
                StageRun.id == stage_run_id, StageRun.claimed_by == worker, StageRun.status == Status.running
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    )
    cancelled = bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
    return Beat(claim_lost=touched == 0, cancel_requested=cancelled)


def release(session: Session, stage_run_id: uuid.UUID, *, worker: str, reason: str) -> bool:
    """Hand the row ``worker`` holds back as pending (so it runs again from its saved state); returns whether
    it still held it."""
    row = session.get(StageRun, stage_run_id)
    released = rowcount(
        session.execute(
            update(StageRun)
            .where(StageRun.id == stage_run_id, StageRun.claimed_by == worker)
            .values(status=Status.pending, claimed_by=None, enqueued_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    )
    if released and row is not None:
        append_event(
            session,
            row.job_id,
            stage=row.name,
            level="warning",
            type="stage.released",
            message=f"{row.name} handed back: {reason}",
        )
    return bool(released)


def finish(
    session: Session,
    stage_run_id: uuid.UUID,
    *,
    worker: str,
    status: Status,
    summary: dict[str, Any] | None = None,
    error: str | None = None,
) -> StageRun | None:
    """Record the outcome of the run ``worker`` holds (``succeeded`` with its ``summary``, ``failed`` with its
    ``error``, or ``cancelled``), derive the job's status, and return the next stage to enqueue (after the
    commit), if any. ``summary`` must be plain JSON data. An outcome from a worker that lost its claim is
    dropped."""
    if status not in FINISHED:
        raise ValueError(f"finish: {status!r} is not an outcome; use succeeded, failed or cancelled")
    row = session.get(StageRun, stage_run_id)
    if row is None:
        return None
    job = lock_job(session, row.job_id)
    session.refresh(row)
    if row.status != Status.running or row.claimed_by != worker:
        log.warning("stage run %s was taken over; dropping this outcome", stage_run_id)
        return None
    now = utcnow()
    if status == Status.succeeded:
        row.metrics = summary or {}
        row.progress_done = row.progress_total = max(row.progress_total, 1)
        message, level = f"{row.name} succeeded", "info"
    elif status == Status.cancelled:
        message, level = f"{row.name} cancelled", "warning"
    else:
        row.error = (error or "failed")[:ERROR_CHARS]
        job.error_code, job.error_message, job.error_stage = "stage_failed", row.error, row.name
        message, level = f"{row.name} failed: {row.error}", "error"
    row.status, row.finished_at = status, now
    append_event(session, job.id, stage=row.name, type=f"stage.{status}", message=message, level=level)
    stages = stages_of(session, job.id)
    sync_job_status(session, job, stages)
    following = None
    if job.status == Status.running:
        following = next_stage(stages)
        if following is not None:
            following.enqueued_at = now
    if job.status == Status.succeeded:
        job.summary = _job_summary(session, job, stages)
    return following


def _job_summary(session: Session, job: Job, stages: list[StageRun]) -> dict[str, Any]:
    """The summary a succeeded job shows: scores, seconds per stage, label statistics, reward-model metrics."""
    evaluations = session.scalars(select(Evaluation).where(Evaluation.job_id == job.id))
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


def request_cancel(session: Session, job: Job) -> None:
    """Ask a job to stop: pending stages are cancelled now, a running stage stops at its next check."""
    if job.status in FINISHED:
        raise TransitionError(f"job is already {job.status}; only pending or running jobs can be cancelled")
    if job.cancel_requested:
        return
    job.cancel_requested = True
    append_event(session, job.id, type="job.cancel_requested", message="cancel requested", level="warning")
    sync_job_status(session, job)


def reset_for_retry(session: Session, job: Job) -> StageRun:
    """Turn the failed or cancelled stages of a finished job back to pending; returns the first one to run."""
    if job.status not in (Status.failed, Status.cancelled):
        raise TransitionError(f"job is {job.status}; only failed or cancelled jobs can be retried")
    stages = stages_of(session, job.id)
    for s in stages:
        if s.status in (Status.failed, Status.cancelled):
            s.status, s.error, s.finished_at, s.claimed_by = Status.pending, None, None, None
    job.cancel_requested = False
    job.error_code = job.error_message = job.error_stage = None
    first = next(s for s in stages if s.status == Status.pending)
    first.enqueued_at = utcnow()
    append_event(
        session, job.id, type="job.retried", message=f"retrying from stage {first.name}", stage=first.name
    )
    sync_job_status(session, job, stages)
    return first


def find_stale(session: Session, *, stale_after: timedelta, lost_after: timedelta) -> list[StageRun]:
    """Stage runs to requeue: running with a heartbeat older than ``stale_after`` (their worker died), or
    runnable but pending since an enqueue older than ``lost_after`` (the message was lost). Marks them
    re-enqueued now so the next sweep leaves them alone for a while."""
    now = utcnow()
    stale = list(
        session.scalars(
            select(StageRun)
            .where(
                StageRun.status == Status.running,
                StageRun.heartbeat_at < now - stale_after,
                or_(StageRun.enqueued_at.is_(None), StageRun.enqueued_at < now - stale_after),
            )
            .with_for_update(skip_locked=True)
        )
    )
    lost_candidates = session.scalars(
        select(StageRun)
        .join(Job, Job.id == StageRun.job_id)
        .where(
            StageRun.status == Status.pending,
            StageRun.enqueued_at < now - lost_after,
            Job.cancel_requested.is_(False),
            Job.status.in_([Status.pending, Status.running]),
        )
        .with_for_update(skip_locked=True, of=StageRun)
    )
    lost = [s for s in lost_candidates if next_stage(stages_of(session, s.job_id)) is s]
    for s in [*stale, *lost]:
        s.enqueued_at = now
        reason = "heartbeat stale" if s.status == Status.running else "enqueued task not picked up"
        append_event(
            session,
            s.job_id,
            type="stage.requeued",
            message=f"requeued: {reason}",
            stage=s.name,
            level="warning",
        )
    return [*stale, *lost]


def runnable(session: Session) -> list[StageRun]:
    """The stage run each unfinished job could run now: its running stage (its worker may be gone) or its next
    pending one. An in-process runner queues these when it starts, to pick up where the last one stopped."""
    out = []
    for job_id in session.scalars(select(Job.id).where(Job.status.in_([Status.pending, Status.running]))):
        stages = stages_of(session, job_id)
        running = [st for st in stages if st.status == Status.running]
        nxt = running[0] if running else next_stage(stages)
        if nxt is not None:
            out.append(nxt)
    return out
