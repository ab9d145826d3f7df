"""Routes: /v1/jobs/{id}/samples, /reward-labels, /checkpoints (+ download), /evaluations, /metrics."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from twofold.api.deps import ArtifactsDep, CurrentTenant, PageDep, SessionDep
from twofold.api.jobs.service import get_job
from twofold.api.results import service
from twofold.api.results.schemas import (
    CheckpointOut,
    EvaluationOut,
    MetricOut,
    RewardLabelList,
    SampleOut,
)
from twofold.api.schemas import PLAIN_TEXT, ListOut, error_responses

router = APIRouter(prefix="/jobs/{job_id}", tags=["results"])


@router.get("/samples", response_model=ListOut[SampleOut], responses=error_responses(400, 404))
def list_samples(
    job_id: str,
    who: CurrentTenant,
    session: SessionDep,
    page: PageDep,
    source: Annotated[Literal["teacher", "student"], Query(description="whose responses")] = "teacher",
    question_id: Annotated[
        str | None, Query(max_length=200, pattern=PLAIN_TEXT, description="only this question")
    ] = None,
) -> ListOut[SampleOut]:
    """Teacher (default) or student samples, oldest first."""
    job = get_job(session=session, who=who, job_id=job_id)
    data, more = service.list_samples(
        session=session, job=job, page=page, source=source, question_id=question_id
    )
    return ListOut[SampleOut](data=data, has_more=more)


@router.get("/reward-labels", response_model=RewardLabelList, responses=error_responses(400, 404))
def list_reward_labels(
    job_id: str, who: CurrentTenant, session: SessionDep, page: PageDep
) -> RewardLabelList:
    """Pseudo-labels, with the job's label statistics in ``summary``."""
    job = get_job(session=session, who=who, job_id=job_id)
    data, more = service.list_labels(session=session, job=job, page=page)
    return RewardLabelList(data=data, has_more=more, summary=service.label_summary(session=session, job=job))


@router.get("/checkpoints", response_model=ListOut[CheckpointOut], responses=error_responses(400, 404))
def list_checkpoints(
    job_id: str, who: CurrentTenant, session: SessionDep, page: PageDep
) -> ListOut[CheckpointOut]:
    """Checkpoints, oldest first."""
    job = get_job(session=session, who=who, job_id=job_id)
    data, more = service.list_checkpoints(session=session, job=job, page=page)
    return ListOut[CheckpointOut](data=data, has_more=more)


@router.get(
    "/checkpoints/{checkpoint_id}/download",
    response_class=StreamingResponse,
    responses={**error_responses(404), 200: {"content": {"application/gzip": {}}, "description": "tar.gz"}},
)
def download_checkpoint(
    job_id: str, checkpoint_id: str, who: CurrentTenant, session: SessionDep, artifacts: ArtifactsDep
) -> StreamingResponse:
    """The checkpoint directory (Hugging Face format) as a gzip'd tarball, streamed."""
    job = get_job(session=session, who=who, job_id=job_id)
    filename, chunks = service.checkpoint_archive(
        session=session, artifacts=artifacts, job=job, checkpoint_id=checkpoint_id
    )
    session.close()
    return StreamingResponse(
        chunks,
        media_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/evaluations", response_model=ListOut[EvaluationOut], responses=error_responses(400, 404))
def list_evaluations(
    job_id: str, who: CurrentTenant, session: SessionDep, page: PageDep
) -> ListOut[EvaluationOut]:
    """Evaluations (teacher, SFT student, RL student), oldest first."""
    job = get_job(session=session, who=who, job_id=job_id)
    data, more = service.list_evaluations(session=session, job=job, page=page)
    return ListOut[EvaluationOut](data=data, has_more=more)


@router.get("/metrics", response_model=ListOut[MetricOut], responses=error_responses(404))
def list_metrics(
    job_id: str,
    who: CurrentTenant,
    session: SessionDep,
    stage: Annotated[
        str | None, Query(max_length=32, pattern=PLAIN_TEXT, description="only this stage's curves")
    ] = None,
) -> ListOut[MetricOut]:
    """Training curves (up to 10,000 points; ``has_more`` says if some were left out)."""
    job = get_job(session=session, who=who, job_id=job_id)
    data, more = service.list_metrics(session=session, job=job, stage=stage)
    return ListOut[MetricOut](data=data, has_more=more)
