"""Dashboard fixtures: a real ``twofold serve`` (embedded mode, temp SQLite and artifacts) whose presets use the
tiny arithmetic teacher server, a ``smoke`` job run there to the end, and headless Chromium (Debian's package)
driven by Playwright.

``dash_server`` (session): the API with two tenants' keys. ``smoke_job`` (session): the finished smoke job.
``browser`` (session): Chromium. ``page``: a fresh 1280x900 browser context and page, not signed in;
``signed_in`` signs a page in through the form. ``dash_app``: the app in-process on a PostgreSQL schema, each
test in a rolled-back transaction, for the pages' HTML without a browser.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection
from sqlalchemy.orm import sessionmaker

from tests.sdk.servers import ApiServer, start_server, stop_server
from tests.services import db_connection, pg_engine, pg_url  # noqa: F401  (fixtures)
from twofold.api.main import create_app
from twofold.store.dispatch import NullDispatcher
from twofold.store.keys import create_api_key
from twofold.store.settings import Settings

CHROMIUM = os.environ.get("TWOFOLD_TEST_CHROMIUM", "/usr/bin/chromium")
# Never `playwright install`: Debian's chromium is the browser, launched with flags that keep it offline.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = {"width": 1280, "height": 900}
WIDE = {"width": 1920, "height": 1080}
IMG_DIR = Path(__file__).resolve().parents[2] / "docs" / "img"


def bearer(server: ApiServer, key: str | None = None) -> dict[str, str]:
    """The Authorization header of a key (default: the main tenant's)."""
    return {"Authorization": f"Bearer {key or server.api_key}"}


def wait_for_job(
    server: ApiServer, job_id: str, done: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    """Poll the job until ``done(job)``; fail with the server log after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        job: dict[str, Any] = httpx.get(f"{server.url}/v1/jobs/{job_id}", headers=bearer(server)).json()
        if done(job):
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {job['status']} after {timeout_s:.0f} s:\n{server.log()}")
        time.sleep(0.5)


@pytest.fixture
def dash_app(db_connection: Connection, tmp_path: Path) -> Iterator[tuple[TestClient, str]]:  # noqa: F811
    """The app in this process and the API key of a tenant whose name is markup: ``(client, key)``."""
    factory = sessionmaker(bind=db_connection, join_transaction_mode="create_savepoint")
    with factory() as session:
        _, key = create_api_key(session, tenant_name='<b id="x">acme & co</b>')
        session.commit()
    settings = Settings(
        database_url="postgresql+psycopg://unused",  # sessions come from the test's connection
        artifacts_url=str(tmp_path / "artifacts"),
        data_dir=str(tmp_path / "data"),
        models_dir=str(tmp_path / "models"),
        rate_limit_per_minute=0,
    )
    app = create_app(settings, session_factory=factory, dispatcher=NullDispatcher())
    with TestClient(app) as client:
        yield client, key


@pytest.fixture(scope="session")
def dash_server(tmp_path_factory: pytest.TempPathFactory, arith_teacher_url: str) -> Iterator[ApiServer]:
    """``twofold serve`` in embedded mode with the presets pointed at the arithmetic teacher."""
    server = start_server(
        tmp_path_factory.mktemp("dashboard-api"),
        teacher_base_url=arith_teacher_url,
        teacher_model="arith-teacher",
        max_upload_bytes="65536",
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def smoke_job(dash_server: ApiServer) -> dict[str, Any]:
    """The ``smoke`` preset, submitted over the API and run to the end (about 3 minutes here)."""
    r = httpx.post(
        f"{dash_server.url}/v1/jobs",
        headers=bearer(dash_server),
        json={"preset": "smoke", "metadata": {"suite": "dashboard"}},
    )
    assert r.status_code == 201, r.text
    job = wait_for_job(dash_server, r.json()["id"], lambda j: j["finished_at"] is not None, 900)
    assert job["status"] == "succeeded", f"{job['error']}\n{dash_server.log()}"
    return job


@pytest.fixture(scope="module")  # the sync API runs an event loop: close it before other modules
def browser() -> Iterator[Any]:
    """Headless Chromium; skipped where Debian's chromium or Playwright is missing (``make browser``
    installs them), except in CI, where that is a failure."""
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        message = f"{CHROMIUM} not found: run `make browser` (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a fresh context (no cookies) at laptop width; JavaScript errors fail the test."""
    context = browser.new_context(viewport=LAPTOP)
    context.set_default_timeout(20_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def signed_in(dash_server: ApiServer) -> Callable[[Any], Any]:
    """Sign ``page`` in with the main tenant's key through the sign-in form; returns the page."""

    def sign_in(pg: Any, key: str | None = None) -> Any:
        pg.goto(f"{dash_server.url}/dashboard/login")
        pg.fill("#api_key", key or dash_server.api_key)
        pg.click("#login-form button[type=submit]")
        pg.wait_for_selector("#jobs-table")
        return pg

    return sign_in
