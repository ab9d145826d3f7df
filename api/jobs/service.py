"""Jobs: validate and store a spec, list and filter, cancel and retry; the job's status follows its stages."""

from __future__ import annotations

import copy
import math
import uuid
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from twofold.api.datasets.service import BUILTIN_DATASETS, get_dataset
from twofold.api.deps import Page, Principal
from twofold.api.errors import NotFound, Unavailable, ValidationFailed
from twofold.api.idempotency import Outcome
from twofold.api.jobs.schemas import JobCreate, JobError, JobOut, StageRunOut
from twofold.api.pagination import keyset_page, parse_id
from twofold.core.configs import JobSpec
from twofold.store import flows
from twofold.store import jobs as ops
from twofold.store.dispatch import Dispatcher, enqueue_quietly
from twofold.store.models import Job, StageRun, utcnow
from twofold.store.settings import Settings
from twofold.store.stages import Status

DATA_DIR_TASKS = ("gsm8k", "mmlu_pro")


# --- serialisation ---------------------------------------------------------------------------------------------
def redacted_spec(job: Job) -> dict[str, Any]:
    """The stored spec with the teacher API key shown as ``***`` when one was given (never the key)."""
    spec = copy.deepcopy(job.spec)
    teacher = spec.get("teacher")
    if isinstance(teacher, dict):
        teacher["api_key"] = "***" if job.teacher_api_key else None
    return spec


def _fraction(stage: StageRun) -> float:
    if stage.status == Status.succeeded:
        return 1.0
    if stage.progress_total > 0:
        return min(1.0, stage.progress_done / stage.progress_total)
    return 0.0


def _eta(stage: StageRun, now: datetime) -> float | None:
    if stage.status != Status.running or stage.started_at is None or stage.progress_done <= 0:
        return None
    remaining = max(0, stage.progress_total - stage.progress_done)
    elapsed = (now - stage.started_at).total_seconds()
    return round(elapsed * remaining / stage.progress_done, 1)


def stage_out(stage: StageRun, now: datetime | None = None) -> StageRunOut:
    """The API object of a stage run."""
    return StageRunOut(
        id=str(stage.id),
        job_id=str(stage.job_id),
        name=stage.name,
        queue=stage.queue,  # type: ignore[arg-type]
        status=stage.status,  # type: ignore[arg-type]
        attempt=stage.attempt,
        progress=round(_fraction(stage), 4),
        progress_done=stage.progress_done,
        progress_total=stage.progress_total,
        heartbeat_at=stage.heartbeat_at,
        started_at=stage.started_at,
        finished_at=stage.finished_at,
        error=stage.error,
        config=stage.config,
        metrics=stage.metrics,
        eta_seconds=_eta(stage, now or utcnow()),
    )


def job_out(job: Job, stages: list[StageRun]) -> JobOut:
    """The API object of a job with its stages."""
    now = utcnow()
    task = (job.spec.get("data") or {}).get("task")
    dataset = str(job.dataset_id) if job.dataset_id else (task if task in BUILTIN_DATASETS else None)
    error = (
        JobError(code=job.error_code, message=job.error_message or "", stage=job.error_stage)
        if job.error_code
        else None
    )
    return JobOut(
        id=str(job.id),
        status=job.status,  # type: ignore[arg-type]
        preset=job.preset,
        spec=redacted_spec(job),
        metadata=job.metadata_,
        dataset=dataset,
        current_stage=job.current_stage,
        progress=round(sum(_fraction(s) for s in stages) / max(len(stages), 1), 4),
        cancel_requested=job.cancel_requested,
        error=error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        stages=[stage_out(s, now) for s in stages],
        summary=job.summary,
    )


# --- reads -----------------------------------------------------------------------------------------------------
def get_job(*, session: Session, who: Principal, job_id: str, lock: bool = False) -> Job:
    """The tenant's job ``job_id`` (404 for unknown ids and for other tenants' jobs)."""
    parsed = parse_id(job_id)
    job = session.get(Job, parsed, with_for_update=lock, populate_existing=lock) if parsed else None
    if job is None or job.tenant_id != who.tenant_id:
        raise NotFound(f"no job {job_id!r}", param="job_id")
    return job


def retrieve(*, session: Session, who: Principal, job_id: str) -> JobOut:
    """One job."""
    job = get_job(session=session, who=who, job_id=job_id)
    return job_out(job, ops.stages_of(session, job.id))


def list_stages(*, session: Session, who: Principal, job_id: str) -> list[StageRunOut]:
    """A job's stage runs in pipeline order."""
    job = get_job(session=session, who=who, job_id=job_id)
    now = utcnow()
    return [stage_out(s, now) for s in ops.stages_of(session, job.id)]


def list_jobs(
    *, session: Session, who: Principal, page: Page, status: str | None, metadata: dict[str, str]
) -> tuple[list[JobOut], bool]:
    """The tenant's jobs, newest first, filtered by status and metadata tags."""
    stmt = select(Job).where(Job.tenant_id == who.tenant_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    for key, value in metadata.items():
        stmt = stmt.where(Job.metadata_[key].as_string() == value)
    jobs, more = keyset_page(
        session, stmt, entity=Job, order=(Job.created_at, Job.id), page=page, descending=True
    )
    by_job: dict[uuid.UUID, list[StageRun]] = defaultdict(list)
    if jobs:
        rows = session.scalars(
            select(StageRun).where(StageRun.job_id.in_([j.id for j in jobs])).order_by(StageRun.position)
        )
        for s in rows:
            by_job[s.job_id].append(s)
    return [job_out(j, by_job[j.id]) for j in jobs], more


# --- writes ----------------------------------------------------------------------------------------------------
def _server_paths(raw: dict[str, Any], settings: Settings) -> None:
    """`student.path` in a user's spec is a server path, and must stay inside the models directory (data paths
    are the server's own: see :func:`resolve_spec`)."""
    student = raw.get("student")
    if isinstance(student, dict) and isinstance(student.get("path"), str):
        root = Path(settings.models_dir).resolve()
        target = (root / student["path"]).resolve()
        if not target.is_relative_to(root):
            raise ValidationFailed(
                f"must be a checkpoint directory inside the models directory ({root})", param="student.path"
            )
        if root.is_dir() and not target.is_dir():
            raise ValidationFailed(
                f"no checkpoint directory {student['path']!r} under {root}", param="student.path"
            )
        student["path"] = str(target)


def resolve_spec(
    *, session: Session, settings: Settings, who: Principal, body: JobCreate
) -> tuple[JobSpec, uuid.UUID | None]:
    """The validated spec of a create request, with server paths filled in, and the dataset it runs on."""
    if body.preset is not None and body.spec is not None:
        raise ValidationFailed("give either `preset` or `spec`, not both", param="spec")
    if body.preset is not None:
        try:
            from twofold.core.presets import preset_spec
        except ImportError as exc:
            raise Unavailable(f"presets are not available on this server: {exc}", param="preset") from exc
        raw = preset_spec(
            body.preset, teacher_base_url=settings.teacher_base_url, teacher_model=settings.teacher_model
        )
    elif body.spec is not None:
        raw = copy.deepcopy(body.spec)
        _server_paths(raw, settings)
    else:
        raise ValidationFailed("give a `preset` (smoke or demo) or a `spec`", param="spec")

    data = raw.setdefault("data", {})
    if not isinstance(data, dict):
        raise ValidationFailed("must be a mapping", param="data")
    # A spec's `data.path` names a file where the spec was written (`twofold run` reads it there); the server
    # never reads it: an uploaded `dataset` or the server's own copy of a benchmark takes its place.
    given_path = data.pop("path", None)
    dataset_id = None
    if body.dataset in BUILTIN_DATASETS:
        data["task"] = body.dataset
    elif body.dataset is not None:
        try:
            dataset = get_dataset(session=session, who=who, dataset_id=body.dataset)
        except NotFound as exc:  # name the request's field, not the datasets route's parameter
            raise NotFound(exc.message, param="dataset") from None
        data.update(task="custom", path=dataset.uri, has_gold=dataset.has_answers)
        dataset_id = dataset.id
    elif data.get("task") == "custom":
        raise ValidationFailed(
            "task 'custom' trains on an uploaded dataset: upload the JSONL file (POST /v1/datasets or "
            "`twofold datasets upload`) and pass its id as `dataset`",
            param="dataset",
        )
    elif given_path is not None and data.get("task", "arithmetic") == "arithmetic":
        raise ValidationFailed(
            "the arithmetic task generates its questions and reads no file; remove `data.path`",
            param="data.path",
        )
    if data.get("task") in DATA_DIR_TASKS:
        data["path"] = str(Path(settings.data_dir).resolve() / data["task"])
    try:
        spec = JobSpec.from_dict(raw)
    except (TypeError, ValueError) as exc:
        if hasattr(exc, "param"):
            raise  # a ConfigError: mapped to 422 with its field path
        raise ValidationFailed(str(exc), param="spec") from exc
    _check_finite(spec.to_dict(), "")
    return spec, dataset_id


def _check_finite(value: Any, path: str) -> None:
    """Refuse NaN and infinities (JSON cannot store them, and no setting means them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValidationFailed("must be a finite number", param=path)
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_finite(item, f"{path}[{i}]")


def create(
    *, session: Session, settings: Settings, who: Principal, body: JobCreate, dispatcher: Dispatcher
) -> Outcome:
    """Validate and add a job (flushed, not committed); its first stage is enqueued after the commit."""
    spec, dataset_id = resolve_spec(session=session, settings=settings, who=who, body=body)
    stored = spec.to_dict()
    stored["teacher"]["api_key"] = None
    job = ops.create_job(
        session,
        tenant_id=who.tenant_id,
        spec=stored,
        teacher_api_key=spec.teacher.api_key,
        preset=body.preset,
        metadata=dict(body.metadata),
        dataset_id=dataset_id,
    )
    stages = ops.stages_of(session, job.id)
    first = stages[0]
    first.enqueued_at = utcnow()
    session.flush()
    return Outcome(
        body=job_out(job, stages),
        after_commit=[lambda: enqueue_quietly(dispatcher, first.id, first.name)],
    )


def cancel(*, session: Session, who: Principal, job_id: str) -> Outcome:
    """Request cancellation (409 when the job already finished). Pending stages are cancelled at once; a
    running stage stops at its next check, within seconds, and then the job reads ``cancelled``."""
    job = get_job(session=session, who=who, job_id=job_id, lock=True)
    flows.request_cancel(session, job)
    session.flush()
    return Outcome(body=job_out(job, ops.stages_of(session, job.id)))


def retry(*, session: Session, who: Principal, job_id: str, dispatcher: Dispatcher) -> Outcome:
    """Resume a failed or cancelled job from its first unfinished stage (409 otherwise)."""
    job = get_job(session=session, who=who, job_id=job_id, lock=True)
    first = flows.reset_for_retry(session, job)
    session.flush()
    return Outcome(
        body=job_out(job, ops.stages_of(session, job.id)),
        after_commit=[lambda: enqueue_quietly(dispatcher, first.id, first.name)],
    )
