"""Liveness, readiness (database and broker) and Prometheus metrics."""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from twofold.api.errors import Unauthenticated, Unavailable
from twofold.api.events.hub import EventHub
from twofold.store.dispatch import Dispatcher
from twofold.store.models import Job, StageRun


def readiness(*, factory: sessionmaker[Session], dispatcher: Dispatcher) -> dict[str, str]:
    """``{"database": "ok", "broker": "ok"|"embedded"|"disabled"}``; raises ``Unavailable`` naming what is
    down."""
    problems = []
    try:
        with factory() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means not ready
        problems.append(f"database: {type(exc).__name__}")
    broker = "down"
    try:
        broker = dispatcher.ping()
    except Exception as exc:  # kombu/redis/socket errors
        problems.append(f"broker: {type(exc).__name__}")
    if problems:
        raise Unavailable("not ready: " + "; ".join(problems))
    return {"database": "ok", "broker": broker}


class JobsCollector(Collector):
    """Jobs and stage runs by status, read from the database at scrape time."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Any]:
        """Yield the gauges (nothing when the database is unreachable)."""
        jobs = GaugeMetricFamily("twofold_jobs", "jobs by status", labels=["status"])
        stages = GaugeMetricFamily(
            "twofold_stage_runs", "stage runs by stage and status", labels=["stage", "status"]
        )
        try:
            with self.factory() as session:
                for status, n in session.execute(select(Job.status, func.count()).group_by(Job.status)):
                    jobs.add_metric([status], n)
                rows = session.execute(
                    select(StageRun.name, StageRun.status, func.count()).group_by(
                        StageRun.name, StageRun.status
                    )
                )
                for name, status, n in rows:
                    stages.add_metric([name, status], n)
        except Exception:  # a scrape must not fail because the database is down; readyz reports that
            return
        yield jobs
        yield stages


class StreamsCollector(Collector):
    """The process's open event streams and the database rounds of its event hub."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Any]:
        """Yield the gauge and the counter."""
        streams = GaugeMetricFamily("twofold_event_streams", "event streams (SSE) open in this process")
        streams.add_metric([], self.hub.open_streams)
        polls = CounterMetricFamily(
            "twofold_event_polls", "database rounds of the event hub (one serves every open stream)"
        )
        polls.add_metric([], self.hub.polls)
        yield streams
        yield polls


def check_metrics_token(expected: str | None, authorization: str | None) -> bool:
    """Whether a /metrics request may see the operator's figures: True with the right ``Bearer`` token,
    False when no token is configured; raises ``Unauthenticated`` for a missing or wrong one."""
    if expected is None:
        return False
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise Unauthenticated("GET /metrics needs the operator's token: `Authorization: Bearer <token>`")
    return True


def route_template(scope: Scope) -> str:
    """The matched route as a template (``/v1/jobs/{job_id}``), to keep metric labels few; ``unmatched``
    for paths no route took."""
    if scope.get("route") is None:
        return "unmatched"
    names = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    return "/".join(f"{{{names[p]}}}" if p in names else p for p in scope["path"].split("/"))


class PrometheusMiddleware:
    """Counts requests and times them by method, route template and status."""

    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "twofold_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "twofold_http_request_seconds", "HTTP request latency", ["method", "route"], registry=registry
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = route_template(scope)
            self.requests.labels(scope["method"], route, str(status)).inc()
            self.latency.labels(scope["method"], route).observe(time.perf_counter() - start)
