"""Routes: /v1/jobs/{id}/events (a list, or a live SSE stream with ``?stream=true``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from twofold.api.deps import CurrentTenant, PageDep, SessionDep
from twofold.api.events import service
from twofold.api.events.hub import EventHub
from twofold.api.events.schemas import EventOut
from twofold.api.jobs.service import get_job
from twofold.api.schemas import ListOut, error_responses

router = APIRouter(prefix="/jobs/{job_id}/events", tags=["events"])


@router.get(
    "",
    response_model=ListOut[EventOut],
    responses={
        **error_responses(400, 404, 503),
        200: {
            "content": {"text/event-stream": {}},
            "description": "a list, or an SSE stream with ?stream=true",
        },
    },
)
def list_events(
    job_id: str,
    request: Request,
    who: CurrentTenant,
    session: SessionDep,
    page: PageDep,
    stream: Annotated[bool, Query(description="Server-Sent Events until the job finishes")] = False,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=20)] = None,
) -> ListOut[EventOut] | StreamingResponse:
    """The job's events, oldest first, or with ``stream=true`` a ``text/event-stream`` that ends with
    ``event: end`` when the job has finished (resumes after ``Last-Event-ID``). A key holds at most
    ``TWOFOLD_MAX_STREAMS_PER_KEY`` streams at once (429 above)."""
    job = get_job(session=session, who=who, job_id=job_id)
    if not stream:
        data, more = service.list_events(session=session, job=job, page=page)
        return ListOut[EventOut](data=data, has_more=more)
    after = service.parse_last_event_id(last_event_id)
    if page.after is not None and page.after.isdigit():
        after = max(after, int(page.after))
    hub: EventHub = request.app.state.event_hub
    sub = hub.open(job_id=job.id, key_id=who.key_id, after_seq=after)
    return service.EventStreamResponse(hub=hub, sub=sub)
