"""Rows of jobs: creating a job with its stage runs, its events, reading its stages, and bulk writes.

How a stage run moves between statuses (claim, heartbeat, finish, cancel, retry, sweep) is in
``store.flows``, the one place that changes a stage run's status.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, Result, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import InstrumentedAttribute, Session

from twofold.core.stages import STAGES
from twofold.store.models import Base, Event, Job, StageRun, utcnow
from twofold.store.stages import Status


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
    """Add a pending job with one pending stage run per entry of ``core.stages.STAGES`` (in order, each with the
    spec sections it reads as its config); ``spec`` must already be validated and carry no API key."""
    job = Job(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        status=Status.pending,
        preset=preset,
        spec=spec,
        teacher_api_key=teacher_api_key,
        metadata_=metadata,
        dataset_id=dataset_id,
        current_stage=STAGES[0].name,
        created_at=utcnow(),
    )
    session.add(job)
    for position, stage in enumerate(STAGES):
        config = {key: spec[key] for key in stage.reads if key in spec}
        session.add(
            StageRun(job_id=job.id, name=stage.name, position=position, queue=stage.queue, config=config)
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


def fit(column: InstrumentedAttribute[Any], text: str) -> str:
    """``text`` cut to the width of the ``String(n)`` ``column`` (unchanged for unbounded ``Text``)."""
    length: int | None = getattr(column.type, "length", None)
    return text if length is None else text[:length]
