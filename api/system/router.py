"""Routes: /healthz, /readyz (no authentication) and /metrics (the operator's token, when one is set)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from twofold.api.deps import DispatcherDep, SessionFactoryDep, SettingsDep
from twofold.api.schemas import error_responses
from twofold.api.system import service

router = APIRouter(tags=["service"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses=error_responses(503))
def readyz(factory: SessionFactoryDep, dispatcher: DispatcherDep) -> dict[str, str]:
    """The database answers and the broker is reachable (503 otherwise)."""
    return service.readiness(factory=factory, dispatcher=dispatcher)


@router.get("/metrics", response_class=PlainTextResponse, responses=error_responses(401))
def metrics(
    request: Request,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(max_length=500)] = None,
) -> PlainTextResponse:
    """Prometheus metrics. Everyone: this process's requests and latencies by route, open event streams.
    With ``TWOFOLD_METRICS_TOKEN`` set, the route needs it (401 otherwise) and adds jobs and stage runs by
    status, which sum the work of every tenant."""
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    body = generate_latest(request.app.state.registry)
    if service.check_metrics_token(token, authorization):
        body += generate_latest(request.app.state.operator_registry)
    return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)
