"""API fixtures: the real app on a PostgreSQL schema, each test inside a transaction rolled back at the end,
with two tenants' keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

from tests.services import db_connection, pg_engine, pg_url  # noqa: F401  (fixtures)
from twofold.api.main import create_app
from twofold.store.dispatch import Dispatcher, NullDispatcher
from twofold.store.keys import create_api_key
from twofold.store.settings import Settings


@dataclass
class Api:
    """A running app and what tests need around it."""

    client: TestClient
    a: dict[str, str]  # tenant A's auth header
    b: dict[str, str]  # tenant B's auth header
    factory: sessionmaker[Session]
    settings: Settings

    def db(self) -> Session:
        """A session on the test's transaction."""
        return self.factory()

    @staticmethod
    def spec(**sections: Any) -> dict[str, Any]:
        """A small valid job spec (with a teacher API key), with ``sections`` merged in."""
        spec: dict[str, Any] = {
            "teacher": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key": "sk-very-secret"},
            "student": {"preset": "micro"},
            "data": {"task": "arithmetic", "train_size": 8, "test_size": 8},
            "rl": {"steps": 1, "batch_size": 4, "mini_batch_size": 2},
        }
        for name, value in sections.items():
            spec[name] = {**spec.get(name, {}), **value}
        return spec

    def create_job(self, headers: dict[str, str], **body: Any) -> dict[str, Any]:
        """POST /v1/jobs (default body: ``spec()``) and return the created job, asserting 201."""
        r = self.client.post("/v1/jobs", headers=headers, json=body or {"spec": self.spec()})
        assert r.status_code == 201, r.text
        return dict(r.json())

    def upload(self, headers: dict[str, str], content: bytes, name: str = "d.jsonl") -> Any:
        """POST /v1/datasets with ``content`` as the file."""
        return self.client.post("/v1/datasets", headers=headers, files={"file": (name, content)})


def _build(
    conn: Connection, tmp_path: Path, dispatcher: Dispatcher | None = None, **overrides: Any
) -> Iterator[Api]:
    factory = sessionmaker(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    with factory() as s:
        _, key_a = create_api_key(s, tenant_name="tenant-a")
        _, key_b = create_api_key(s, tenant_name="tenant-b")
        s.commit()
    values: dict[str, Any] = {
        "database_url": "postgresql+psycopg://unused",  # sessions come from the test's connection
        "artifacts_url": str(tmp_path / "artifacts"),
        "data_dir": str(tmp_path / "data"),
        "models_dir": str(tmp_path / "models"),
        "max_upload_bytes": 4096,
        "rate_limit_per_minute": 0,
    }
    settings = Settings(**{**values, **overrides})
    app = create_app(settings, session_factory=factory, dispatcher=dispatcher or NullDispatcher())
    with TestClient(app) as client:
        yield Api(
            client=client,
            a={"Authorization": f"Bearer {key_a}"},
            b={"Authorization": f"Bearer {key_b}"},
            factory=factory,
            settings=settings,
        )


@pytest.fixture
def api(db_connection: Connection, tmp_path: Path) -> Iterator[Api]:  # noqa: F811
    """The app with default test settings (4 KiB upload limit, no rate limit, nothing runs jobs)."""
    yield from _build(db_connection, tmp_path)


@pytest.fixture
def make_api(db_connection: Connection, tmp_path: Path) -> Iterator[Callable[..., Api]]:  # noqa: F811
    """Build the app with other settings or another dispatcher: ``make_api(rate_limit_per_minute=3)``."""
    gens: list[Iterator[Api]] = []

    def make(dispatcher: Dispatcher | None = None, **overrides: Any) -> Api:
        gen = _build(db_connection, tmp_path, dispatcher, **overrides)
        gens.append(gen)
        return next(gen)

    yield make
    for gen in gens:
        gen.close()
