"""Routes: /v1/datasets (upload JSONL, list, retrieve)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse

from twofold.api.datasets import service
from twofold.api.datasets.schemas import DatasetOut
from twofold.api.deps import ArtifactsDep, CurrentTenant, IdempotencyDep, PageDep, SessionDep, SettingsDep
from twofold.api.idempotency import fingerprint, respond
from twofold.api.schemas import PLAIN_TEXT, ListOut, error_responses

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses=error_responses(409, 413, 422),
    # one file and at most the `name` field, whose value is short (Starlette's default allows 1 MiB)
    form_limits={"max_files": 1, "max_fields": 1, "max_part_size": 4096},
)
def upload_dataset(
    who: CurrentTenant,
    session: SessionDep,
    settings: SettingsDep,
    artifacts: ArtifactsDep,
    idem: IdempotencyDep,
    file: Annotated[
        UploadFile, File(description="JSONL: {question, answer?, id?} or {messages, answer?} per line")
    ],
    name: Annotated[
        str | None, Form(max_length=200, pattern=PLAIN_TEXT, description="defaults to the file name")
    ] = None,
) -> JSONResponse:
    """Upload a JSONL dataset; every line is validated (422 names the line); over the size limit, or a line
    over the line limit (``param`` names it), -> 413, while the file is still being sent."""
    digest = service.file_sha256(file.file)
    return respond(
        session,
        who=who,
        idem=idem,
        request_hash=fingerprint({"file": digest, "name": name, "filename": file.filename}),
        status_code=201,
        produce=lambda: service.create_dataset(
            session=session,
            who=who,
            artifacts=artifacts,
            upload=file.file,
            filename=file.filename,
            name=name,
            max_bytes=settings.max_upload_bytes,
            max_line_bytes=settings.max_line_bytes,
        ),
    )


@router.get("", response_model=ListOut[DatasetOut], responses=error_responses(400))
def list_datasets(who: CurrentTenant, session: SessionDep, page: PageDep) -> ListOut[DatasetOut]:
    """Built-in datasets, then the tenant's uploads, newest first."""
    data, more = service.list_datasets(session=session, who=who, page=page)
    return ListOut[DatasetOut](data=data, has_more=more)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=error_responses(404))
def retrieve_dataset(dataset_id: str, who: CurrentTenant, session: SessionDep) -> DatasetOut:
    """One dataset."""
    return service.retrieve(session=session, who=who, dataset_id=dataset_id)
