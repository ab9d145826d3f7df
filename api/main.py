"""The application factory: ``create_app(settings)`` wires settings, database, artifact store, dispatcher,
rate limiter, error handlers and the routers."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import Scope

from twofold.api.datasets.router import router as datasets_router
from twofold.api.deps import current_principal
from twofold.api.errors import install_error_handlers
from twofold.api.events.hub import EventHub
from twofold.api.events.router import router as events_router
from twofold.api.jobs.router import router as jobs_router
from twofold.api.limits import BodyLimitMiddleware
from twofold.api.presets.router import router as presets_router
from twofold.api.ratelimit import RateLimiter
from twofold.api.results.router import router as results_router
from twofold.api.schemas import error_responses
from twofold.api.system.router import router as system_router
from twofold.api.system.service import JobsCollector, PrometheusMiddleware, StreamsCollector
from twofold.store.artifacts import ArtifactStore
from twofold.store.db import make_engine, make_session_factory
from twofold.store.dispatch import CeleryDispatcher, Dispatcher, NullDispatcher
from twofold.store.settings import Settings

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around an uploaded file
#: The body limit of every route without a larger one of its own (the sign-in form, cancel, retry, GETs).
SMALL_BODY_BYTES = 16 * 1024


def default_dispatcher(settings: Settings) -> Dispatcher:
    """Celery when a broker is configured; otherwise nothing runs (``twofold serve`` passes its in-process
    runner instead)."""
    if settings.broker_url:
        return CeleryDispatcher(settings.broker_url, transport_options=settings.broker_transport_options)
    return NullDispatcher()


def create_app(
    settings: Settings | None = None,
    *,
    dispatcher: Dispatcher | None = None,
    session_factory: sessionmaker[Session] | None = None,
) -> FastAPI:
    """Build the API. ``settings`` defaults to the environment; ``dispatcher`` to :func:`default_dispatcher`;
    ``session_factory`` (tests) to one on ``settings.database_url``."""
    settings = settings or Settings()
    engine = None
    if session_factory is None:
        engine = make_engine(settings.database_url)
        session_factory = make_session_factory(engine)
    dispatcher = dispatcher or default_dispatcher(settings)
    hub = EventHub(session_factory, max_per_key=settings.max_streams_per_key, max_total=settings.max_streams)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        dispatcher.start()
        hub.ensure_running()
        try:
            yield
        finally:
            await hub.stop()
            dispatcher.stop()
            if engine is not None:
                engine.dispose()

    app = FastAPI(
        title="twofold",
        version="1",
        summary="Distil LLMs by transferring the teacher's answers and its reward signal.",
        lifespan=lifespan,
    )
    # /metrics: the process's own figures for everyone; job counts, which sum every tenant's work, only with
    # the operator's token (api/system/router.py)
    registry = CollectorRegistry()
    registry.register(StreamsCollector(hub))
    operator_registry = CollectorRegistry()
    operator_registry.register(JobsCollector(session_factory))
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.artifacts = ArtifactStore(settings.artifacts_url)
    app.state.dispatcher = dispatcher
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    app.state.registry = registry
    app.state.operator_registry = operator_registry
    app.state.event_hub = hub
    install_error_handlers(app)

    # every /v1 route can refuse the key (401), the request rate (429), an unparsable body (400) or one over
    # its size limit (413)
    v1 = APIRouter(
        prefix="/v1", dependencies=[Depends(current_principal)], responses=error_responses(400, 401, 413, 429)
    )
    for router in (datasets_router, jobs_router, events_router, results_router, presets_router):
        v1.include_router(router)
    app.include_router(v1)
    app.include_router(system_router)
    _include_dashboard(app)

    app.add_middleware(
        BodyLimitMiddleware, limit_for=body_limits(settings), line_limit_for=line_limits(settings)
    )
    app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


def body_limits(settings: Settings) -> Callable[[Scope], int]:
    """The body size limit of each route: uploads, then the JSON bodies of a job or a spec, then a small limit
    for every other route (none of which takes more than a short form)."""
    large = {
        ("POST", "/v1/datasets"): settings.max_upload_bytes + MULTIPART_OVERHEAD,
        ("POST", "/v1/jobs"): settings.max_request_bytes,
        ("POST", "/dashboard/spec"): settings.max_request_bytes,
    }

    def limit_for(scope: Scope) -> int:
        return large.get(_route_key(scope), SMALL_BODY_BYTES)

    return limit_for


def line_limits(settings: Settings) -> Callable[[Scope], int | None]:
    """The per-line limit of uploaded files: on the dataset upload only."""

    def line_limit_for(scope: Scope) -> int | None:
        return settings.max_line_bytes if _route_key(scope) == ("POST", "/v1/datasets") else None

    return line_limit_for


def _route_key(scope: Scope) -> tuple[str, str]:
    return str(scope.get("method", "")), str(scope.get("path", "")).rstrip("/")


def _include_dashboard(app: FastAPI) -> None:
    """Mount ``api.dashboard.router`` (built separately) when it exists."""
    try:
        module = importlib.import_module("twofold.api.dashboard.router")
    except ModuleNotFoundError as exc:
        if exc.name in ("twofold.api.dashboard", "twofold.api.dashboard.router"):
            return
        raise
    app.include_router(module.router)
