"""Store fixtures: a migrated PostgreSQL schema for the session and a rolled-back transaction per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from store.db import make_engine
from store.migrate import upgrade
from store.testing import require, temp_schema


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL on a fresh schema migrated to head (dropped at the end of the session)."""
    require("postgres")
    with temp_schema(prefix="tf_store") as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """An engine on that schema."""
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(pg_engine: Engine) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test (commits become savepoints)."""
    with pg_engine.connect() as conn:
        outer = conn.begin()
        s = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield s
        finally:
            s.close()
            outer.rollback()
