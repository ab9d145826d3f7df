"""Helpers and pytest fixtures for tests that use the real PostgreSQL and Redis (any test package may import
them).

``service_problem("postgres")`` says why a service is unusable (None when it is up); ``require(...)`` skips
the calling test with that reason, or fails it when ``CI=true``. ``temp_schema()`` gives a PostgreSQL URL
whose ``search_path`` is a fresh schema, dropped afterwards, so parallel test sessions never collide.
Fixtures (``from tests.services import pg_url, pg_engine, db_connection  # noqa: F401`` in a conftest):
``pg_url`` a migrated schema for the session, ``pg_engine`` an engine on it, ``db_connection`` a connection in
a transaction rolled back after each test.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from urllib.parse import quote

import pytest
from sqlalchemy import Connection, Engine

from twofold.store.db import make_engine
from twofold.store.migrate import upgrade

PG_URL = os.environ.get("TWOFOLD_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TWOFOLD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def service_problem(name: str) -> str | None:
    """Why ``postgres`` or ``redis`` cannot be used right now, or None when it answers."""
    if name == "postgres":
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(PG_URL)
        try:
            with closing(
                psycopg.connect(
                    host=url.host,
                    port=url.port or 5432,
                    user=url.username,
                    dbname=url.database,
                    connect_timeout=3,
                )
            ):
                return None
        except psycopg.Error as exc:
            return f"PostgreSQL at {url.host}:{url.port or 5432}/{url.database} is unavailable: {exc}".strip()
    if name == "redis":
        import redis

        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
            return None
        except redis.RedisError as exc:
            return f"Redis at {REDIS_URL} is unavailable: {exc}"
    raise ValueError(f"unknown service {name!r}; use postgres or redis")


def require(*names: str) -> None:
    """Skip the calling test when a service is down (with the reason), or fail it when ``CI=true``."""
    for name in names:
        problem = service_problem(name)
        if problem is None:
            continue
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and a required service is missing: {problem}")
        pytest.skip(problem)


def with_search_path(url: str, schema: str) -> str:
    """``url`` with the connection option ``-c search_path=<schema>``."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def temp_schema(base_url: str = PG_URL, prefix: str = "tf_test") -> Iterator[str]:
    """A URL whose tables live in a new schema ``<prefix>_<random>``; the schema is dropped on exit."""
    from sqlalchemy import create_engine, text

    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield with_search_path(base_url, schema)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL on a fresh schema migrated to head (dropped at the end of the session)."""
    require("postgres")
    with temp_schema() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """An engine on that schema."""
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_connection(pg_engine: Engine) -> Iterator[Connection]:
    """A connection inside a transaction that is rolled back after the test; bind sessions to it with
    ``join_transaction_mode="create_savepoint"`` so that their commits become savepoints."""
    with pg_engine.connect() as conn:
        outer = conn.begin()
        try:
            yield conn
        finally:
            outer.rollback()
