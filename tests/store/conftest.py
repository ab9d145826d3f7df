"""Store fixtures: a migrated PostgreSQL schema for the session and a rolled-back transaction per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from tests.services import db_connection, pg_engine, pg_url  # noqa: F401  (fixtures)


@pytest.fixture
def session(db_connection: Connection) -> Iterator[Session]:  # noqa: F811
    """A session whose commits are savepoints inside the test's rolled-back transaction."""
    s = Session(bind=db_connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield s
    finally:
        s.close()
