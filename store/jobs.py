"""Operations on jobs and stage runs shared by the API and the workers.

The stage-run rows are the truth; a job's status is derived from them by :func:`sync_job_status`, which every
transition calls with the job row locked, so the API (cancel, retry) and the workers (claim, finish) serialise
on it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Result, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from twofold.store.models import Base, Event, Job, StageRun, utcnow
from twofold.store.stages import FINISHED, STAGE_QUEUE, STAGES, Status

# Which sections of the job spec configure each stage (stored, resolved, on the stage row).
STAGE_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "teacher_sampling": ("teacher", "data"),
    "sft": ("sft",),
    "labeling": ("labels",),
    "reward_model": ("reward_model",),
    "rl": ("rl",),
    "evaluation": ("evaluation",),
}


class TransitionError(Exception):
    """A job cannot make the requested transition (e.g. cancel a finished job)."""


def create_job(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    spec: dict[str, Any],
    teacher_api_key: str | None,
    preset: str | None,
    metadata: dict[str, str],
    dataset_id: uuid.UUID | None,
) -> Job:
    """Add a pending job with one pending stage run per stage; ``spec`` must already be validated and carry
    no API key."""
    job = Job(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        status=Status.pending,
        preset=preset,
        spec=spec,
        teacher_api_key=teacher_api_key,
        metadata_=metadata,
        dataset_id=dataset_id,
        current_stage=STAGES[0],
        created_at=utcnow(),
    )
    session.add(job)
    for position, name in enumerate(STAGES):
        config = {key: spec[key] for key in STAGE_CONFIG_KEYS[name] if key in spec}
        session.add(
            StageRun(job_id=job.id, name=name, position=position, queue=STAGE_QUEUE[name], config=config)
        )
    session.flush()
    append_event(session, job.id, type="job.created", message="job created", data={"preset": preset})
    return job


def append_event(
    session: Session,
    job_id: uuid.UUID,
    *,
    type: str,
    message: str,
    stage: str | None = None,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> Event:
    """Add an event with the job's next sequence number (the counter on the job row hands out numbers)."""
    seq = session.execute(
        update(Job).where(Job.id == job_id).values(event_seq=Job.event_seq + 1).returning(Job.event_seq)
    ).scalar_one()
    event = Event(
        job_id=job_id, seq=seq, stage=stage, level=level, type=type, message=message, data=data or {}
    )
    session.add(event)
    return event


def lock_job(session: Session, job_id: uuid.UUID) -> Job:
    """Load the job with its row locked for this transaction (PostgreSQL; SQLite locks the whole file)."""
    return session.execute(
        select(Job).where(Job.id == job_id).with_for_update().execution_options(populate_existing=True)
    ).scalar_one()


def stages_of(session: Session, job_id: uuid.UUID) -> list[StageRun]:
    """The job's stage runs in pipeline order, freshly read."""
    return list(
        session.scalars(
            select(StageRun)
            .where(StageRun.job_id == job_id)
            .order_by(StageRun.position)
            .execution_options(populate_existing=True)
        )
    )


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


def next_stage(stages: Sequence[StageRun]) -> StageRun | None:
    """The first pending stage whose predecessors all succeeded (the one to enqueue), if any."""
    for s in stages:
        if s.status == Status.succeeded:
            continue
        return s if s.status == Status.pending else None
    return None


def claim_stage(
    session: Session, stage_run_id: uuid.UUID, *, worker: str, stale_after: timedelta
) -> StageRun | None:
    """Claim a stage run for ``worker`` with a conditional UPDATE: pending -> running, or a running row whose
    heartbeat is older than ``stale_after`` (its worker died) -> running with attempt + 1.

    Returns the claimed row, or None when the row is missing, finished, held by a live worker, or not yet
    runnable (an earlier stage has not succeeded). Call inside a transaction; the caller commits.
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
    return mine


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


_INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def rowcount(result: Result[Any]) -> int:
    """Rows matched by an UPDATE or DELETE."""
    return cast(CursorResult[Any], result).rowcount


def bulk_upsert(
    session: Session,
    model: type[Base],
    rows: Sequence[dict[str, Any]],
    *,
    conflict: Sequence[str] = (),
    update_columns: Sequence[str] = (),
    batch_size: int = 500,
) -> None:
    """Insert ``rows`` in batches; a row that hits the ``conflict`` unique key is skipped, or, with
    ``update_columns``, updated in place (no ``conflict``: a plain insert). Ids and creation times are filled
    in here."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect not in _INSERTS:  # pragma: no cover - only PostgreSQL and SQLite are supported
        raise RuntimeError(f"unsupported database {dialect!r}; use PostgreSQL or SQLite")
    insert = _INSERTS[dialect]
    now = utcnow()
    for start in range(0, len(rows), batch_size):
        chunk = [{"id": uuid.uuid4(), "created_at": now, **r} for r in rows[start : start + batch_size]]
        stmt = insert(model)
        if conflict and update_columns:
            stmt = stmt.on_conflict_do_update(
                index_elements=list(conflict), set_={c: stmt.excluded[c] for c in update_columns}
            )
        elif conflict:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(conflict))
        session.execute(stmt, chunk)
