"""SQLAlchemy 2 typed models: the schema of the service. Alembic (``migrations/``) is the only way it changes.

Every table has a UUID key and a timezone-aware ``created_at``. Unique constraints make a re-delivered task
harmless: writing the same teacher sample, metric point, checkpoint or evaluation twice leaves one row.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC that always comes back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use store.models.utcnow()")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with the constraint naming convention, so migrations name constraints the same way on
    every database."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class _Row:
    """UUID primary key and creation time."""

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def _job_fk() -> Mapped[uuid.UUID]:
    # No separate index: every child table has a unique constraint that starts with job_id.
    return mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))


class Tenant(_Row, Base):
    """An organisation; every object belongs to exactly one."""

    __tablename__ = "tenants"
    name: Mapped[str] = mapped_column(String(200), unique=True)


class ApiKey(_Row, Base):
    """An API key, stored as the sha256 of the token (the token is shown once, at creation)."""

    __tablename__ = "api_keys"
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # first characters of the token, to tell keys apart
    revoked_at: Mapped[datetime | None]


class Dataset(_Row, Base):
    """An uploaded JSONL dataset; the file lives in the artifact store under a path built from ids."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_tenant_created", "tenant_id", "created_at"),)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(16), default="jsonl")
    row_count: Mapped[int] = mapped_column(Integer)
    has_answers: Mapped[bool] = mapped_column(Boolean)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(String(500))


class Job(_Row, Base):
    """A distillation job. Its status follows its stage runs (see ``store.jobs.sync_job_status``)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_tenant_created", "tenant_id", "created_at"),)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    preset: Mapped[str | None] = mapped_column(String(32))
    # The validated spec with the teacher key removed; the key lives in its own column and is never returned.
    spec: Mapped[dict[str, Any]]
    teacher_api_key: Mapped[str | None] = mapped_column(String(500))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    dataset_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("datasets.id", ondelete="RESTRICT"))
    current_stage: Mapped[str | None] = mapped_column(String(32))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_stage: Mapped[str | None] = mapped_column(String(32))
    label_stats: Mapped[dict[str, Any] | None]
    summary: Mapped[dict[str, Any] | None]
    event_seq: Mapped[int] = mapped_column(Integer, default=0)  # last event number handed out
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class StageRun(_Row, Base):
    """One stage of one job: the truth about where the job is (status, attempt, progress, heartbeat)."""

    __tablename__ = "stage_runs"
    __table_args__ = (
        UniqueConstraint("job_id", "name"),
        Index("ix_stage_runs_status", "status", "heartbeat_at"),
    )
    job_id: Mapped[uuid.UUID] = _job_fk()
    name: Mapped[str] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(200))  # worker token of the current attempt
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    config: Mapped[dict[str, Any] | None]
    metrics: Mapped[dict[str, Any] | None]
    artifacts: Mapped[dict[str, Any]] = mapped_column(default=dict)


class TeacherSampleRow(_Row, Base):
    """One teacher response, persisted before it is used so that no teacher call is paid twice."""

    __tablename__ = "teacher_samples"
    __table_args__ = (UniqueConstraint("job_id", "question_id", "temperature", "index"),)
    job_id: Mapped[uuid.UUID] = _job_fk()
    question_id: Mapped[str] = mapped_column(String(200))
    temperature: Mapped[float] = mapped_column(Float)
    index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    finish_reason: Mapped[str | None] = mapped_column(String(32))


class StudentSampleRow(_Row, Base):
    """One student response drawn for labelling."""

    __tablename__ = "student_samples"
    __table_args__ = (UniqueConstraint("job_id", "question_id", "index"),)
    job_id: Mapped[uuid.UUID] = _job_fk()
    question_id: Mapped[str] = mapped_column(String(200))
    index: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(String(200))


class RewardLabel(_Row, Base):
    """A pseudo-label: whether a response agrees with the teacher's majority answer."""

    __tablename__ = "reward_labels"
    # A job's labels are replaced as a whole (the labelling stage reports them all at once); ``seq`` keeps
    # their order. A teacher response is keyed by (question, temperature, index), a student one by
    # (question, index).
    __table_args__ = (UniqueConstraint("job_id", "seq"),)
    job_id: Mapped[uuid.UUID] = _job_fk()
    seq: Mapped[int] = mapped_column(Integer)
    question_id: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(16))
    index: Mapped[int] = mapped_column(Integer)
    temperature: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(String(200))
    majority: Mapped[str] = mapped_column(String(200))
    label: Mapped[int] = mapped_column(Integer)
    agreement: Mapped[float] = mapped_column(Float)


class Checkpoint(_Row, Base):
    """A complete Hugging Face checkpoint directory kept in the artifact store."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "stage", "kind", "step"),)
    job_id: Mapped[uuid.UUID] = _job_fk()
    stage: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    step: Mapped[int] = mapped_column(Integer)
    uri: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))


class Evaluation(_Row, Base):
    """A model's greedy accuracy on a benchmark with its 95% interval."""

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("job_id", "model", "benchmark"),)
    job_id: Mapped[uuid.UUID] = _job_fk()
    model: Mapped[str] = mapped_column(String(32))
    benchmark: Mapped[str] = mapped_column(String(64))
    accuracy: Mapped[float] = mapped_column(Float)
    ci_low: Mapped[float] = mapped_column(Float)
    ci_high: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    extraction_version: Mapped[str] = mapped_column(String(32))
    items_uri: Mapped[str | None] = mapped_column(String(500))


class Event(_Row, Base):
    """Something that happened to a job; ``seq`` counts from 1 within the job."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)
    job_id: Mapped[uuid.UUID] = _job_fk()
    seq: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str | None] = mapped_column(String(32))
    level: Mapped[str] = mapped_column(String(16))
    type: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class MetricPoint(_Row, Base):
    """One training-curve point (loss, reward, KL, ...)."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "stage", "step", "name"),)
    job_id: Mapped[uuid.UUID] = _job_fk()
    stage: Mapped[str] = mapped_column(String(32))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)


class IdempotencyKey(_Row, Base):
    """The first response to a POST with an ``Idempotency-Key``, replayed for the same key and body."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("tenant_id", "route", "key"),)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    route: Mapped[str] = mapped_column(String(300))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]]
