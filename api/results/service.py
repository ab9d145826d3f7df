"""What a job produced: teacher and student samples, pseudo-labels with their statistics, checkpoints (and
their download), evaluations and training curves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from twofold.api.deps import Page
from twofold.api.errors import NotFound
from twofold.api.pagination import keyset_page, parse_id
from twofold.api.results.schemas import (
    CheckpointOut,
    EvaluationOut,
    HistogramBin,
    LabelSummary,
    MetricOut,
    RewardLabelOut,
    SampleOut,
)
from twofold.store.artifacts import ArtifactStore
from twofold.store.models import (
    Checkpoint,
    Evaluation,
    Job,
    MetricPoint,
    RewardLabel,
    StudentSampleRow,
    TeacherSampleRow,
)

MAX_METRIC_POINTS = 10_000
HISTOGRAM_BINS = 10


def list_samples(
    *, session: Session, job: Job, page: Page, source: str, question_id: str | None
) -> tuple[list[SampleOut], bool]:
    """Teacher or student samples of a job, oldest first, optionally of one question."""
    model: Any = TeacherSampleRow if source == "teacher" else StudentSampleRow
    stmt = select(model).where(model.job_id == job.id)
    if question_id is not None:
        stmt = stmt.where(model.question_id == question_id)
    rows, more = keyset_page(session, stmt, entity=model, order=(model.created_at, model.id), page=page)
    out = [
        SampleOut(
            id=str(r.id),
            source="teacher" if source == "teacher" else "student",
            question_id=r.question_id,
            temperature=getattr(r, "temperature", None),
            index=r.index,
            text=r.text,
            answer=r.answer,
            prompt_tokens=getattr(r, "prompt_tokens", None),
            completion_tokens=getattr(r, "completion_tokens", None),
        )
        for r in rows
    ]
    return out, more


def list_labels(*, session: Session, job: Job, page: Page) -> tuple[list[RewardLabelOut], bool]:
    """A job's pseudo-labels in the labelling stage's order (by question)."""
    rows, more = keyset_page(
        session,
        select(RewardLabel).where(RewardLabel.job_id == job.id),
        entity=RewardLabel,
        order=(RewardLabel.seq,),
        page=page,
    )
    out = [
        RewardLabelOut(
            id=str(r.id),
            question_id=r.question_id,
            source=r.source,
            index=r.index,
            answer=r.answer,
            majority=r.majority,
            label=r.label,
            agreement=r.agreement,
        )
        for r in rows
    ]
    return out, more


def label_summary(*, session: Session, job: Job) -> LabelSummary:
    """Statistics computed from the stored labels; the question total and the accuracy against gold (which
    needs gold answers the database does not hold) come from the labelling stage's report."""
    stats = job.label_stats or {}
    total, positive = session.execute(
        select(func.count(), func.coalesce(func.sum(RewardLabel.label), 0)).where(
            RewardLabel.job_id == job.id
        )
    ).one()
    per_question = list(
        session.scalars(
            select(func.max(RewardLabel.agreement))
            .where(RewardLabel.job_id == job.id)
            .group_by(RewardLabel.question_id)
        )
    )
    counts = [0] * HISTOGRAM_BINS
    for a in per_question:
        counts[min(int(a * HISTOGRAM_BINS), HISTOGRAM_BINS - 1)] += 1
    kept = len(per_question)
    questions_total = max(int(stats.get("questions_total") or 0), kept)
    gold = stats.get("accuracy_vs_gold")
    return LabelSummary(
        questions_total=questions_total,
        questions_kept=kept,
        questions_dropped=questions_total - kept,
        labels=int(total),
        positive=int(positive),
        negative=int(total) - int(positive),
        positive_rate=round(int(positive) / total, 6) if total else 0.0,
        mean_agreement=round(sum(per_question) / kept, 6) if kept else 0.0,
        agreement_histogram=[
            HistogramBin(bin_start=i / HISTOGRAM_BINS, bin_end=(i + 1) / HISTOGRAM_BINS, count=c)
            for i, c in enumerate(counts)
        ],
        accuracy_vs_gold=float(gold) if isinstance(gold, int | float) else None,
    )


def checkpoint_out(row: Checkpoint) -> CheckpointOut:
    """The API object of a checkpoint."""
    return CheckpointOut(
        id=str(row.id),
        stage=row.stage,
        step=row.step,
        kind=row.kind,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        created_at=row.created_at,
        download_url=f"/v1/jobs/{row.job_id}/checkpoints/{row.id}/download",
    )


def list_checkpoints(*, session: Session, job: Job, page: Page) -> tuple[list[CheckpointOut], bool]:
    """A job's checkpoints, oldest first."""
    rows, more = keyset_page(
        session,
        select(Checkpoint).where(Checkpoint.job_id == job.id),
        entity=Checkpoint,
        order=(Checkpoint.created_at, Checkpoint.id),
        page=page,
    )
    return [checkpoint_out(r) for r in rows], more


def checkpoint_archive(
    *, session: Session, artifacts: ArtifactStore, job: Job, checkpoint_id: str
) -> tuple[str, Iterator[bytes]]:
    """(file name, gzip'd tar stream) of one of the job's checkpoints; 404 for other jobs' checkpoints and
    for files that are gone. The stored key is checked to stay inside the artifact root."""
    parsed = parse_id(checkpoint_id)
    row = session.get(Checkpoint, parsed) if parsed else None
    if row is None or row.job_id != job.id:
        raise NotFound(f"no checkpoint {checkpoint_id!r} in this job", param="checkpoint_id")
    if not artifacts.exists(row.uri):
        raise NotFound("the checkpoint's files are no longer in the artifact store", param="checkpoint_id")
    name = f"{row.stage}-{row.kind}-{row.step}"
    return f"{job.id}-{name}.tar.gz", artifacts.iter_tar_gz(row.uri, arcname=name)


def list_evaluations(*, session: Session, job: Job, page: Page) -> tuple[list[EvaluationOut], bool]:
    """A job's evaluations, oldest first."""
    rows, more = keyset_page(
        session,
        select(Evaluation).where(Evaluation.job_id == job.id),
        entity=Evaluation,
        order=(Evaluation.created_at, Evaluation.id),
        page=page,
    )
    out = [
        EvaluationOut(
            id=str(r.id),
            model=r.model,
            benchmark=r.benchmark,
            accuracy=r.accuracy,
            ci95=(r.ci_low, r.ci_high),
            n=r.n,
            extraction_version=r.extraction_version,
            created_at=r.created_at,
        )
        for r in rows
    ]
    return out, more


def list_metrics(*, session: Session, job: Job, stage: str | None) -> tuple[list[MetricOut], bool]:
    """Up to 10,000 training-curve points, oldest first; ``has_more`` says whether some were left out."""
    stmt = select(MetricPoint).where(MetricPoint.job_id == job.id)
    if stage is not None:
        stmt = stmt.where(MetricPoint.stage == stage)
    rows = list(
        session.scalars(
            stmt.order_by(MetricPoint.created_at, MetricPoint.step, MetricPoint.name).limit(
                MAX_METRIC_POINTS + 1
            )
        )
    )
    out = [
        MetricOut(stage=r.stage, step=r.step, name=r.name, value=r.value) for r in rows[:MAX_METRIC_POINTS]
    ]
    return out, len(rows) > MAX_METRIC_POINTS
