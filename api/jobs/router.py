"""Routes: /v1/jobs (create, list, retrieve, cancel, retry, stages)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from twofold.api.deps import (
    CurrentTenant,
    DispatcherDep,
    IdempotencyDep,
    PageDep,
    SessionDep,
    SettingsDep,
)
from twofold.api.errors import ValidationFailed
from twofold.api.idempotency import fingerprint, respond
from twofold.api.jobs import service
from twofold.api.jobs.schemas import JobCreate, JobOut, StageRunOut, StatusName
from twofold.api.schemas import PLAIN_TEXT, ListOut, error_responses

router = APIRouter(prefix="/jobs", tags=["jobs"])
_METADATA_PARAM = re.compile(r"^metadata\[([A-Za-z0-9_.:-]{1,64})\]$")
_PLAIN = re.compile(PLAIN_TEXT)


@router.post("", status_code=201, response_model=JobOut, responses=error_responses(404, 409, 422, 503))
def create_job(
    body: JobCreate,
    who: CurrentTenant,
    session: SessionDep,
    settings: SettingsDep,
    dispatcher: DispatcherDep,
    idem: IdempotencyDep,
) -> JSONResponse:
    """Submit a job (a preset or a full spec); it is validated before anything is stored."""
    return respond(
        session,
        who=who,
        idem=idem,
        request_hash=fingerprint(body.model_dump(mode="json")),
        status_code=201,
        produce=lambda: service.create(
            session=session, settings=settings, who=who, body=body, dispatcher=dispatcher
        ),
    )


@router.get("", response_model=ListOut[JobOut], responses=error_responses(400, 422))
def list_jobs(
    request: Request,
    who: CurrentTenant,
    session: SessionDep,
    page: PageDep,
    status: Annotated[StatusName | None, Query(description="only jobs with this status")] = None,
) -> ListOut[JobOut]:
    """The tenant's jobs, newest first; filter with ``status`` and ``metadata[key]=value``."""
    metadata: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata"):
            match = _METADATA_PARAM.match(name)
            if not match:
                raise ValidationFailed(
                    "filter tags as metadata[key]=value (key: letters, digits, _ . : -)", param=name[:80]
                )
            if not _PLAIN.match(value) or len(value) > 500:
                raise ValidationFailed("must be printable text of at most 500 characters", param=name)
            metadata[match.group(1)] = value
    data, more = service.list_jobs(session=session, who=who, page=page, status=status, metadata=metadata)
    return ListOut[JobOut](data=data, has_more=more)


@router.get("/{job_id}", response_model=JobOut, responses=error_responses(404))
def retrieve_job(job_id: str, who: CurrentTenant, session: SessionDep) -> JobOut:
    """One job with its stages."""
    return service.retrieve(session=session, who=who, job_id=job_id)


@router.post("/{job_id}/cancel", response_model=JobOut, responses=error_responses(404, 409))
def cancel_job(job_id: str, who: CurrentTenant, session: SessionDep, idem: IdempotencyDep) -> JSONResponse:
    """Cancel a pending or running job (409 if it already finished)."""
    return respond(
        session,
        who=who,
        idem=idem,
        request_hash=fingerprint({"cancel": job_id}),
        status_code=200,
        produce=lambda: service.cancel(session=session, who=who, job_id=job_id),
    )


@router.post("/{job_id}/retry", response_model=JobOut, responses=error_responses(404, 409))
def retry_job(
    job_id: str, who: CurrentTenant, session: SessionDep, dispatcher: DispatcherDep, idem: IdempotencyDep
) -> JSONResponse:
    """Resume a failed or cancelled job from its first unfinished stage (409 otherwise)."""
    return respond(
        session,
        who=who,
        idem=idem,
        request_hash=fingerprint({"retry": job_id}),
        status_code=200,
        produce=lambda: service.retry(session=session, who=who, job_id=job_id, dispatcher=dispatcher),
    )


@router.get("/{job_id}/stages", response_model=ListOut[StageRunOut], responses=error_responses(404))
def list_stages(job_id: str, who: CurrentTenant, session: SessionDep) -> ListOut[StageRunOut]:
    """The job's stage runs in pipeline order (one page)."""
    return ListOut[StageRunOut](
        data=service.list_stages(session=session, who=who, job_id=job_id), has_more=False
    )
