"""Routes: /healthz, /readyz, /metrics (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from twofold.api.deps import DispatcherDep, SessionFactoryDep
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


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> PlainTextResponse:
    """Prometheus metrics: requests, latencies, jobs and stage runs by status."""
    return PlainTextResponse(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
