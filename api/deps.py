"""Dependencies of the routes, as ``Annotated`` aliases: settings, a DB session, the artifact store, the
dispatcher, the authenticated tenant, pagination and the ``Idempotency-Key``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from twofold.api.errors import Forbidden, RateLimited, Unauthenticated
from twofold.api.ratelimit import RateLimiter
from twofold.store.artifacts import ArtifactStore
from twofold.store.dispatch import Dispatcher
from twofold.store.keys import find_key
from twofold.store.settings import Settings


def get_settings(request: Request) -> Settings:
    """The app's settings."""
    settings: Settings = request.app.state.settings
    return settings


def get_session_factory(request: Request) -> sessionmaker[Session]:
    """The app's session factory (for work outside the request, e.g. streaming)."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


def get_session(factory: Annotated[sessionmaker[Session], Depends(get_session_factory)]) -> Iterator[Session]:
    """A session for this request; services commit what they change."""
    with factory() as session:
        yield session


def get_artifacts(request: Request) -> ArtifactStore:
    """The artifact store."""
    store: ArtifactStore = request.app.state.artifacts
    return store


def get_dispatcher(request: Request) -> Dispatcher:
    """Where runnable stages are sent."""
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
#: Requests that hold a database session at once, per API process. The others wait for a turn without taking a
#: worker thread: otherwise a burst of requests fills the threads with calls waiting for a pooled connection
#: while the requests that hold the connections wait for a thread. It stays below the pool's 15 connections
#: (SQLAlchemy's 5 + 10 overflow), so that the event hub and the metrics collector always find one.
DB_CONCURRENCY = 10
# Closed when the route function returns, before the response is sent: a client that reads slowly (or a
# stream that lasts hours) never holds a pooled connection.
SessionDep = Annotated[Session, Depends(get_session, scope="function", max_concurrency=DB_CONCURRENCY)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]

_bearer = HTTPBearer(
    auto_error=False, description="An API key from `twofold apikey create`, as a Bearer token."
)


# The dashboard (api/dashboard) signs in with an API key kept in this HttpOnly, SameSite=Strict cookie.
DASHBOARD_COOKIE = "twofold_dashboard"
CSRF_HEADER = "X-Twofold-CSRF"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def dashboard_cookie_key(request: Request) -> str | None:
    """The API key in the dashboard's cookie, or None. A mutating request authenticated by the cookie must
    carry the ``X-Twofold-CSRF`` header: another site cannot add it without a CORS preflight, which this API
    never grants, so the cookie cannot be used cross-site (403 otherwise)."""
    key = request.cookies.get(DASHBOARD_COOKIE)
    if not key:
        return None
    if request.method not in _SAFE_METHODS and not request.headers.get(CSRF_HEADER):
        raise Forbidden(
            f"a dashboard (cookie) {request.method} request needs the {CSRF_HEADER} header", param=CSRF_HEADER
        )
    return key


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant and the key used."""

    tenant_id: uuid.UUID
    key_id: uuid.UUID


def current_principal(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The tenant behind the Bearer key, or the dashboard's sign-in cookie (401 without a valid one); also
    applies the per-key rate limit."""
    token = credentials.credentials if credentials is not None else dashboard_cookie_key(request)
    if token is None:
        raise Unauthenticated("missing API key: send `Authorization: Bearer <key>`")
    row = find_key(session, token)
    if row is None:
        raise Unauthenticated("invalid or revoked API key")
    limiter: RateLimiter = request.app.state.rate_limiter
    wait = limiter.acquire(str(row.id))
    if wait > 0:
        raise RateLimited(
            f"rate limit of {limiter.per_minute} requests per minute exceeded",
            headers={"Retry-After": limiter.retry_after(wait)},
        )
    return Principal(tenant_id=row.tenant_id, key_id=row.id)


CurrentTenant = Annotated[Principal, Depends(current_principal)]


@dataclass(frozen=True)
class Page:
    """Cursor pagination: at most ``limit`` items after the item with id ``after``."""

    limit: int
    after: str | None


def page_params(
    limit: Annotated[int, Query(ge=1, le=100, description="items per page (1..100)")] = 20,
    after: Annotated[
        str | None,
        Query(max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="id of the last item already seen"),
    ] = None,
) -> Page:
    """Read ``limit`` and ``after`` from the query string."""
    return Page(limit=limit, after=after)


PageDep = Annotated[Page, Depends(page_params)]


@dataclass(frozen=True)
class IdempotencyRequest:
    """The ``Idempotency-Key`` of a POST (None without one) and the route it applies to."""

    key: str | None
    route: str


def idempotency_params(
    request: Request,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x20-\x7e]+$",
            description="repeat a POST safely: the same key and body return the first response",
        ),
    ] = None,
) -> IdempotencyRequest:
    """Read the ``Idempotency-Key`` header."""
    return IdempotencyRequest(key=idempotency_key, route=f"{request.method} {request.url.path}")


IdempotencyDep = Annotated[IdempotencyRequest, Depends(idempotency_params)]
